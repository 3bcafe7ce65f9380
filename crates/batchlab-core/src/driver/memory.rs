//! N ranks of a run in one process, over the in-memory collective, with scripted faults.
//!
//! [`Cluster`] plays every part the network plays for the workers' drivers: it runs their
//! reductions with [`batchlab_collective::run_in_memory`] (the reference executor of the same
//! plans), takes rank 0's rows once each by member and step as the coordinator does (a row
//! sent again after a resync is dropped; a gap is an error), confirms them back, keeps the
//! checkpoints, and plays the faults of a script at the step they name:
//!
//! - [`Fault::Lose`]: a rank vanishes during a step's all-reduce; the survivors that had
//!   finished it apply the step, the others do not, and all of them form a new generation
//!   (survivors in their old order) and agree on the freshest state;
//! - [`Fault::Join`]: a new worker joins (fresh, at step 0): the step in flight is abandoned
//!   and the new generation agrees on the state, which the joiner takes;
//! - [`Fault::Restart`]: the coordinator restarts from its latest checkpoint: the rows after
//!   it are dropped, and a new set of ranks (any number) resumes from its state.
//!
//! Each scenario's rows and summary can then be compared with the uninterrupted run's.

use batchlab_collective::run_in_memory;

use super::{Action, Buf, Event, Output, RunDriver, RunState, Synced};
use crate::train::{RunSummary, StepMetrics};

/// A scripted fault, played when the ranks are about to reduce step `at` of the member in turn
/// (the first time they get there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Rank `rank` vanishes while the step is all-reduced; of the others, those in `finished`
    /// (ranks of the generation before) had received the whole sum and apply the step.
    Lose {
        /// The step.
        at: u64,
        /// The rank lost.
        rank: usize,
        /// The ranks that finished the all-reduce before the loss was noticed.
        finished: Vec<usize>,
    },
    /// A fresh worker joins before the step is reduced.
    Join {
        /// The step.
        at: u64,
    },
    /// The coordinator restarts from its latest checkpoint with `world` ranks.
    Restart {
        /// The step.
        at: u64,
        /// Ranks of the resumed run.
        world: usize,
    },
}

impl Fault {
    fn at(&self) -> u64 {
        match self {
            Fault::Lose { at, .. } | Fault::Join { at } | Fault::Restart { at, .. } => *at,
        }
    }
}

/// Makes a rank's driver: fresh (`None`) or resumed from a checkpoint's state, as `rank` of
/// `world`.
pub type Make = dyn Fn(Option<RunState>, usize, usize) -> RunDriver;

/// What a run on a [`Cluster`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Every member's rows as the coordinator holds them, each step once.
    pub rows: Vec<Vec<StepMetrics>>,
    /// The summary every rank of the final generation agreed on.
    pub summary: RunSummary,
    /// Every member's final parameters (rank 0's).
    pub params: Vec<Vec<f64>>,
    /// Resynchronisations, as `(generation, rank, report)`.
    pub syncs: Vec<(u64, usize, Synced)>,
    /// Generations formed (1: no fault changed the ranks).
    pub generations: u64,
    /// Checkpoints received.
    pub checkpoints: usize,
}

/// N drivers over the in-memory collective (see the [module docs](self)).
pub struct Cluster {
    make: Box<Make>,
    ranks: Vec<RunDriver>,
    rows: Vec<Vec<StepMetrics>>,
    checkpoint: Option<RunState>,
    checkpoints: usize,
    syncs: Vec<(u64, usize, Synced)>,
    generation: u64,
    script: Vec<Fault>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("world", &self.ranks.len())
            .field("generation", &self.generation)
            .field("script", &self.script)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// `world` fresh ranks made by `make`, and a script of faults.
    pub fn new(
        make: impl Fn(Option<RunState>, usize, usize) -> RunDriver + 'static,
        world: usize,
        script: Vec<Fault>,
    ) -> Self {
        let ranks: Vec<RunDriver> = (0..world).map(|r| make(None, r, world)).collect();
        let members = ranks[0].members();
        Self {
            make: Box::new(make),
            ranks,
            rows: vec![Vec::new(); members],
            checkpoint: None,
            checkpoints: 0,
            syncs: Vec::new(),
            generation: 1,
            script,
        }
    }

    /// Runs to the end; an error says which rule of the protocol broke.
    pub fn run(mut self) -> Result<Outcome, String> {
        loop {
            // Every rank up to its next reduction (or its end).
            for r in 0..self.ranks.len() {
                self.advance(r)?;
            }
            let done = self.ranks.iter().filter(|d| d.is_done()).count();
            if done == self.ranks.len() {
                return self.finish();
            }
            if done > 0 {
                return Err(format!(
                    "{done} of {} ranks ended while the others reduce",
                    self.ranks.len()
                ));
            }
            let syncing = self.ranks[0].syncing();
            if self.ranks.iter().any(|d| d.syncing() != syncing) {
                return Err("some ranks resynchronise while others reduce a step".into());
            }
            let step = self.ranks[0].position().1;
            if !syncing && let Some(d) = self.ranks.iter().find(|d| d.position().1 != step) {
                return Err(format!(
                    "ranks reduce different steps: {step} and {}",
                    d.position().1
                ));
            }
            let fault = (!syncing)
                .then(|| self.script.iter().position(|f| f.at() == step))
                .flatten()
                .map(|k| self.script.remove(k));
            match fault {
                None => {
                    self.all_reduce();
                    for d in &mut self.ranks {
                        d.handle(Event::Reduced).map_err(|e| e.to_string())?;
                    }
                }
                Some(Fault::Lose { rank, finished, .. }) => {
                    if rank >= self.ranks.len() {
                        return Err(format!("no rank {rank} to lose"));
                    }
                    self.all_reduce();
                    for &r in &finished {
                        if r != rank && r < self.ranks.len() {
                            self.ranks[r]
                                .handle(Event::Reduced)
                                .map_err(|e| e.to_string())?;
                            self.advance_outputs(r)?;
                        }
                    }
                    self.ranks.remove(rank);
                    self.regroup()?;
                }
                Some(Fault::Join { .. }) => {
                    let world = self.ranks.len() + 1;
                    let joiner = (self.make)(None, world - 1, world);
                    self.ranks.push(joiner);
                    self.regroup()?;
                }
                Some(Fault::Restart { world, .. }) => {
                    let state = self
                        .checkpoint
                        .clone()
                        .ok_or("a restart before any checkpoint")?;
                    for (rows, &next) in self.rows.iter_mut().zip(&state.rows) {
                        rows.truncate(next as usize);
                    }
                    self.ranks = (0..world)
                        .map(|r| (self.make)(Some(state.clone()), r, world))
                        .collect();
                    self.generation += 1;
                }
            }
            let confirmed: Vec<u64> = self.rows.iter().map(|r| r.len() as u64).collect();
            for d in &mut self.ranks {
                d.handle(Event::Confirmed(&confirmed))
                    .map_err(|e| e.to_string())?;
            }
        }
    }

    /// A new generation of the ranks there are now, in their order.
    fn regroup(&mut self) -> Result<(), String> {
        self.generation += 1;
        let world = self.ranks.len();
        for (r, d) in self.ranks.iter_mut().enumerate() {
            d.handle(Event::Joined { rank: r, world })
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Runs rank `r` up to its next reduction or its end.
    fn advance(&mut self, r: usize) -> Result<(), String> {
        loop {
            match self.ranks[r].poll() {
                Action::Begin => self.ranks[r].begin(),
                Action::Compute => self.ranks[r].compute(),
                Action::Emit(out) => self.take(r, out)?,
                Action::Reduce | Action::Done(_) => return Ok(()),
            }
        }
    }

    /// Takes rank `r`'s pending outputs (after a step applied out of turn).
    fn advance_outputs(&mut self, r: usize) -> Result<(), String> {
        while let Action::Emit(out) = self.ranks[r].poll() {
            self.take(r, out)?;
        }
        Ok(())
    }

    /// The coordinator's part: rows once each, checkpoints when they cover the rows held.
    fn take(&mut self, r: usize, out: Output) -> Result<(), String> {
        match out {
            Output::Row { member, row } => {
                let held = self
                    .rows
                    .get_mut(member)
                    .ok_or_else(|| format!("a row of member {member}"))?;
                let next = held.len() as u64;
                if row.step > next {
                    return Err(format!(
                        "rows of member {member} skip from step {next} to {}: rows were lost",
                        row.step
                    ));
                }
                if row.step == next {
                    held.push(*row);
                }
            }
            Output::Checkpoint(state) => {
                let held: Vec<u64> = self.rows.iter().map(|r| r.len() as u64).collect();
                if state.rows == held {
                    self.checkpoint = Some(*state);
                    self.checkpoints += 1;
                }
            }
            Output::Synced(s) => self.syncs.push((self.generation, r, s)),
        }
        Ok(())
    }

    /// Every rank's buffers summed by the in-memory executor of their plans.
    fn all_reduce(&mut self) {
        let n = self.ranks[0].reduction().len();
        for b in 0..n {
            let mut plans = Vec::new();
            let (mut ints, mut floats) = (Vec::new(), Vec::new());
            for d in &mut self.ranks {
                let mut bufs = d.reduction();
                let (buf, plan) = bufs.swap_remove(b);
                plans.push(plan.clone());
                match buf {
                    Buf::I64(x) => ints.push(x.to_vec()),
                    Buf::F32(x) => floats.push(x.to_vec()),
                }
            }
            if !ints.is_empty() {
                run_in_memory(&plans, &mut ints, |a, x| *a = a.wrapping_add(x));
            }
            if !floats.is_empty() {
                run_in_memory(&plans, &mut floats, |a, x| *a += x);
            }
            for (r, d) in self.ranks.iter_mut().enumerate() {
                let mut bufs = d.reduction();
                match bufs.swap_remove(b).0 {
                    Buf::I64(x) => x.copy_from_slice(&ints[r]),
                    Buf::F32(x) => x.copy_from_slice(&floats[r]),
                }
            }
        }
    }

    fn finish(self) -> Result<Outcome, String> {
        let summary = self.ranks[0].summary().cloned().ok_or("no summary")?;
        for (r, d) in self.ranks.iter().enumerate() {
            if d.summary() != Some(&summary) {
                return Err(format!(
                    "rank {r} ended with {:?}; rank 0 with {summary:?}",
                    d.summary()
                ));
            }
        }
        if !self.script.is_empty() {
            return Err(format!(
                "the run ended before these faults: {:?}",
                self.script
            ));
        }
        Ok(Outcome {
            rows: self.rows,
            summary,
            params: self.ranks[0].params().map(<[f64]>::to_vec).collect(),
            syncs: self.syncs,
            generations: self.generation,
            checkpoints: self.checkpoints,
        })
    }
}
