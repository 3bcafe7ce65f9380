//! The run driver: one rank's part of a training run as a state machine with no I/O.
//!
//! Every way batchlab trains (one process, N workers over the network, N simulated ranks in
//! memory) runs the same [`RunDriver`]. Its executor asks it what to do next and tells it what
//! happened:
//!
//! ```text
//!   loop match driver.poll():
//!     Begin     ─► driver.begin()       evaluation and sharpness when due; the run may end here
//!     Compute   ─► driver.compute()     this rank's microbatches ─► its buffers
//!                  (or driver.stream(): all but the last micro, then the last one's buckets
//!                   as the backward pass finishes them, while the executor reduces each)
//!     Reduce    ─► all-reduce each of driver.reduction()'s (buffer, plan), in order,
//!                  then driver.handle(Event::Reduced)     (applies the step, or asks a redo)
//!     Emit(out) ─► hand a row / checkpoint / sync report on
//!     Done(sum) ─► the run is over (the same summary on every rank)
//!   on a lost peer: new mesh ─► driver.handle(Event::Joined { rank, world })
//! ```
//!
//! The driver owns everything that decides numbers: the step's redo at a wider fixed-point
//! scale, the seed-mean group's members in lock step and its stopping rule, which rows the
//! coordinator has confirmed, the order of an overlapped step's gradient buckets, the exact or
//! fast reduction and its plans, and an elastic run's resynchronisation (the ranks all-reduce
//! their apply counts and the freshest hands its [`RunState`] to the others by an all-reduce
//! to which only it contributes). The executor owns sockets, threads, clocks and logs.
//!
//! [`Trainer`] executes a lone rank (its reductions are no-ops); [`memory::Cluster`] executes
//! N ranks in one process over the in-memory collective, with scripted faults.

pub mod memory;

use std::collections::VecDeque;
use std::ops::Range;

use batchlab_collective::{Algorithm, Plan, PlanConfig};
use serde::{Deserialize, Serialize};

use crate::error::ensure;
use crate::exact::{MicroStats, Packet};
use crate::group::{GroupEnd, SeedMean};
use crate::sampler::{Sampler, balanced_range};
use crate::train::{
    Applied, Begin, Replica, ReplicaState, RunPlan, RunSummary, StepInput, StepMetrics,
    TrainConfig, WorkerScratch, compute_last_micro_streamed, compute_micros,
    compute_micros_but_last, compute_micros_fast,
};
use crate::{ConfigError, Scratch};

/// How the ranks' gradient sums are added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ReduceMode {
    /// Fixed-point words, wrapping integer addition: bit-identical on any number of workers.
    #[default]
    Exact,
    /// `f32` gradient sums (half the bytes), within a documented bound of the exact sum; the
    /// result depends on the number of workers.
    Fast,
}

impl ReduceMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [ReduceMode; 2] = [ReduceMode::Exact, ReduceMode::Fast];

    /// The mode's name in configs and flags.
    pub const fn name(self) -> &'static str {
        match self {
            ReduceMode::Exact => "exact",
            ReduceMode::Fast => "fast",
        }
    }
}

impl std::fmt::Display for ReduceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ReduceMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ConfigError::invalid("reduce", format!("{s:?}"), "exact or fast"))
    }
}

/// How a run's steps are reduced across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reduction {
    /// Exact or fast.
    pub mode: ReduceMode,
    /// The all-reduce algorithm.
    pub algorithm: Algorithm,
    /// The largest message piece, in bytes (pipelining granularity).
    pub chunk_bytes: u64,
    /// Exact mode on a task with several buckets: all-reduce each bucket of the last micro's
    /// gradient as the backward pass finishes it ([`RunDriver::stream`]).
    pub overlap: bool,
}

impl Default for Reduction {
    fn default() -> Self {
        Self {
            mode: ReduceMode::Exact,
            algorithm: Algorithm::Ring,
            chunk_bytes: 1 << 20,
            overlap: false,
        }
    }
}

impl Reduction {
    /// Refuses the settings that cannot hold: `fast` in an elastic cluster (its sums depend on
    /// the number of workers, so a run that loses or gains one would change), a chunk outside
    /// `1 B ..= 64 MiB`.
    pub fn check(&self, elastic: bool) -> Result<(), ConfigError> {
        ensure(
            !(elastic && self.mode == ReduceMode::Fast),
            "reduce",
            "fast, in an elastic cluster",
            "exact (f32 sums depend on the number of workers, so a run that loses or gains one \
             would change)",
        )?;
        ensure(
            (1..=64 << 20).contains(&self.chunk_bytes),
            "chunk_bytes",
            self.chunk_bytes,
            "1 to 67108864 bytes",
        )
    }

    fn plan(&self, rank: usize, world: usize, len: usize, elem_bytes: usize) -> Plan {
        let chunk_elems = (self.chunk_bytes as usize / elem_bytes).max(1);
        batchlab_collective::plan(
            &PlanConfig {
                algorithm: self.algorithm,
                chunk_elems,
            },
            rank,
            world,
            len,
        )
    }
}

/// What a driver needs besides the run's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Settings {
    /// How steps are reduced.
    pub reduction: Reduction,
    /// The ranks may change during the run: keep unconfirmed rows, and agree on the freshest
    /// state whenever a mesh forms.
    pub elastic: bool,
    /// Rank 0 emits the run's state every this many steps of member 0 (0: never).
    pub checkpoint_every: u64,
}

/// The largest run state a rank accepts from a peer (1 GiB).
pub const MAX_STATE_BYTES: usize = 1 << 30;

/// A run as every rank holds it, as plain data: what the freshest rank hands the others, and
/// what a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    members: Vec<ReplicaState>,
    group: Option<SeedMean>,
    next: usize,
    version: u64,
    unconfirmed: Vec<(usize, StepMetrics)>,
    /// Rows produced, per member (the next step of each).
    pub rows: Vec<u64>,
    ended: Option<RunSummary>,
}

impl RunState {
    /// The state as CBOR (non-finite numbers kept).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// A state written by [`RunState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| e.to_string())
    }

    /// The step of the member whose step comes next.
    pub fn step(&self) -> u64 {
        self.members.get(self.next).map_or(0, |m| m.t)
    }
}

/// Why a driver cannot go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// A peer offered a run state that does not fit this run (malformed, too large, another
    /// shape). The executor may regroup and try again.
    #[error("{0}")]
    PeerState(String),
}

/// What the executor does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Call [`RunDriver::begin`].
    Begin,
    /// Call [`RunDriver::compute`] (or, where [`RunDriver::overlaps`], [`RunDriver::stream`]).
    Compute,
    /// All-reduce every buffer of [`RunDriver::reduction`] with its plan, in order; then
    /// `handle(Event::Reduced)`.
    Reduce,
    /// Hand this on.
    Emit(Output),
    /// The run is over.
    Done(Box<RunSummary>),
}

/// What a driver hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A metrics row of `member` (rank 0 only; again, after a resync, the rows not yet
    /// confirmed).
    Row {
        /// The member (0 unless a seed-mean group).
        member: usize,
        /// The row.
        row: Box<StepMetrics>,
    },
    /// The run's state after the rows it covers (rank 0, every `checkpoint_every` steps).
    Checkpoint(Box<RunState>),
    /// The ranks agreed on a state.
    Synced(Synced),
}

/// How a resynchronisation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Where this rank took the state from, `(rank, applies it was behind, bytes)`, if it did.
    pub took: Option<(usize, u64, usize)>,
    /// The member and step the run goes on at, and its apply count.
    pub member: usize,
    /// The step of that member.
    pub step: u64,
    /// Applies so far (steps and redos).
    pub version: u64,
}

/// What happened, for [`RunDriver::handle`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// Every buffer of the last [`Action::Reduce`] holds the sum over all ranks.
    Reduced,
    /// A new mesh formed: this rank is `rank` of `world`. The step in flight is redone; an
    /// elastic run first agrees on the freshest state.
    Joined {
        /// This rank.
        rank: usize,
        /// Number of ranks.
        world: usize,
    },
    /// The coordinator holds the rows before these steps, per member: the rows kept for a
    /// resend can go.
    Confirmed(&'a [u64]),
}

/// One buffer of a reduction.
#[derive(Debug)]
pub enum Buf<'a> {
    /// Words added with wrapping integer addition.
    I64(&'a mut [i64]),
    /// `f32` sums.
    F32(&'a mut [f32]),
}

/// Counts since the driver was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Steps applied (rows produced).
    pub steps: u64,
    /// Steps redone at a wider fixed-point scale.
    pub redos: u64,
}

struct Member {
    replica: Replica,
    sampler: Sampler,
}

enum Buffers {
    Exact(Packet),
    Fast { grad: Vec<f32>, stats: Packet },
}

impl Buffers {
    /// The buffers of a step of `num_micro` micros, `dim` parameters.
    fn new(mode: ReduceMode, dim: usize, num_micro: usize) -> Self {
        match mode {
            ReduceMode::Exact => Self::Exact(Packet::zeroed(dim, num_micro)),
            ReduceMode::Fast => Self::Fast {
                grad: vec![0.0; dim],
                stats: Packet::zeroed(0, num_micro),
            },
        }
    }

    /// Whether they hold a step of `num_micro` micros.
    fn fit(&self, num_micro: usize) -> bool {
        let stats = match self {
            Self::Exact(p) | Self::Fast { stats: p, .. } => p,
        };
        stats.len() - stats.dim() == num_micro * crate::exact::MICRO_FIELDS
    }
}

/// The plans of one mesh: the step's buffers, and an overlapped step's buckets.
struct Plans {
    /// Exact: the packet. Fast: the gradient, then the stats.
    step: Vec<Plan>,
    overlap: Option<OverlapPlans>,
}

struct OverlapPlans {
    buckets: Vec<Range<usize>>,
    plans: Vec<Plan>,
    stats: Plan,
}

enum SyncStage {
    Offers,
    Len {
        offers: Vec<i64>,
        src: usize,
        blob: Vec<u8>,
    },
    Words {
        offers: Vec<i64>,
        src: usize,
        bytes: usize,
    },
}

enum Phase {
    Begin,
    Compute,
    /// The step's buffers (`stats_only`: an overlapped step whose buckets were reduced).
    Reduce {
        stats_only: bool,
    },
    Sync {
        buf: Vec<i64>,
        plan: Plan,
        stage: SyncStage,
    },
    Done,
}

/// One rank's part of a training run (see the [module docs](self)).
pub struct RunDriver {
    plans: Vec<RunPlan>,
    members: Vec<Member>,
    group: Option<SeedMean>,
    next: usize,
    version: u64,
    unconfirmed: VecDeque<(usize, StepMetrics)>,
    rows: Vec<u64>,
    ended: Option<RunSummary>,
    settings: Settings,
    rank: usize,
    world: usize,
    micros: Range<usize>,
    buffers: Buffers,
    mesh_plans: Plans,
    scratch: WorkerScratch,
    eval_scratch: Scratch,
    phase: Phase,
    outbox: VecDeque<Output>,
    counts: Counts,
}

impl std::fmt::Debug for RunDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunDriver")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("members", &self.members.len())
            .field("next", &self.next)
            .field("version", &self.version)
            .field("ended", &self.ended.is_some())
            .finish_non_exhaustive()
    }
}

/// The member plans of `config`: itself, or one per seed of a seed-mean group.
fn member_plans(config: &TrainConfig, seeds: &[u64]) -> Result<Vec<RunPlan>, ConfigError> {
    if seeds.is_empty() {
        return Ok(vec![config.build()?]);
    }
    seeds
        .iter()
        .map(|&seed| SeedMean::member_config(config, seed).build())
        .collect()
}

impl RunDriver {
    /// The run of `config` (one replica, or a seed-mean group of one per seed) at its start, as
    /// rank `rank` of `world`.
    pub fn new(
        config: &TrainConfig,
        seeds: &[u64],
        settings: Settings,
        rank: usize,
        world: usize,
    ) -> Result<Self, ConfigError> {
        let plans = member_plans(config, seeds)?;
        let group = (!seeds.is_empty()).then(|| SeedMean::new(config, plans[0].micro, seeds.len()));
        Self::from_plans(plans, group, settings, rank, world)
    }

    /// The run of these member plans at its start: one plan alone, or the members of `group`.
    pub fn from_plans(
        plans: Vec<RunPlan>,
        group: Option<SeedMean>,
        settings: Settings,
        rank: usize,
        world: usize,
    ) -> Result<Self, ConfigError> {
        ensure(
            !plans.is_empty(),
            "seeds",
            "an empty group",
            "at least one member",
        )?;
        settings.reduction.check(settings.elastic)?;
        let members = plans
            .iter()
            .map(|p| Member {
                replica: p.replica(),
                sampler: p.sampler(),
            })
            .collect();
        let (dim, num_micro) = (plans[0].task.num_params(), plans[0].num_micro());
        let buffers = Buffers::new(settings.reduction.mode, dim, num_micro);
        let n = plans.len();
        let mut driver = Self {
            plans,
            members,
            group,
            next: 0,
            version: 0,
            unconfirmed: VecDeque::new(),
            rows: vec![0; n],
            ended: None,
            settings,
            rank,
            world,
            micros: 0..0,
            buffers,
            mesh_plans: Plans {
                step: Vec::new(),
                overlap: None,
            },
            scratch: WorkerScratch::default(),
            eval_scratch: Scratch::new(),
            phase: Phase::Begin,
            outbox: VecDeque::new(),
            counts: Counts::default(),
        };
        driver.join(rank, world);
        Ok(driver)
    }

    /// The run `state` describes (a checkpoint's), on these settings' plans.
    pub fn resume(
        config: &TrainConfig,
        seeds: &[u64],
        settings: Settings,
        state: RunState,
        (rank, world): (usize, usize),
    ) -> Result<Self, ConfigError> {
        let mut driver = Self::new(config, seeds, settings, rank, world)?;
        driver.outbox.clear();
        driver.restore(state).map_err(|e| {
            ConfigError::invalid("resume", "the checkpoint's run state", e.to_string())
        })?;
        driver.join(rank, world);
        Ok(driver)
    }

    /// The run as plain data.
    pub fn state(&self) -> RunState {
        RunState {
            members: self.members.iter().map(|m| m.replica.state()).collect(),
            group: self.group.clone(),
            next: self.next,
            version: self.version,
            unconfirmed: self.unconfirmed.iter().cloned().collect(),
            rows: self.rows.clone(),
            ended: self.ended.clone(),
        }
    }

    /// Replaces the run with `state`, on this driver's plans.
    fn restore(&mut self, state: RunState) -> Result<(), DriverError> {
        if state.members.len() != self.plans.len() || state.next >= self.plans.len() {
            return Err(DriverError::PeerState(format!(
                "a run state of {} members (next {}); this run has {}",
                state.members.len(),
                state.next,
                self.plans.len()
            )));
        }
        if state.rows.len() != self.plans.len() || state.group.is_some() != self.group.is_some() {
            return Err(DriverError::PeerState(format!(
                "a run state with rows of {} members{}; this run has {}{}",
                state.rows.len(),
                if state.group.is_some() {
                    " in a group"
                } else {
                    ""
                },
                self.plans.len(),
                if self.group.is_some() {
                    " in a group"
                } else {
                    ""
                },
            )));
        }
        let members = self
            .plans
            .iter()
            .zip(state.members)
            .map(|(p, s)| {
                Ok(Member {
                    replica: p
                        .restore(s)
                        .map_err(|e| DriverError::PeerState(format!("a run state: {e}")))?,
                    sampler: p.sampler(),
                })
            })
            .collect::<Result<Vec<_>, DriverError>>()?;
        self.members = members;
        self.group = state.group;
        self.next = state.next;
        self.version = state.version;
        self.unconfirmed = state.unconfirmed.into();
        self.rows = state.rows;
        self.ended = state.ended;
        Ok(())
    }

    /// This rank and the number of ranks.
    pub fn rank(&self) -> (usize, usize) {
        (self.rank, self.world)
    }

    /// The replica of member `i`.
    pub fn replica(&self, i: usize) -> &Replica {
        &self.members[i].replica
    }

    /// Number of members (1 unless a seed-mean group).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The member whose step comes next, and its step.
    pub fn position(&self) -> (usize, u64) {
        (self.next, self.members[self.next].replica.t)
    }

    /// Applies so far (steps and redos): two ranks at the same count hold the same state.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Rows produced, per member.
    pub fn rows(&self) -> &[u64] {
        &self.rows
    }

    /// Steps and redos since the driver was made.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The run's summary, once it ended.
    pub fn summary(&self) -> Option<&RunSummary> {
        self.ended.as_ref()
    }

    /// Whether the run ended and everything was handed out.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done) && self.outbox.is_empty()
    }

    /// Whether the ranks are agreeing on the freshest state (the reductions are not a step's).
    pub fn syncing(&self) -> bool {
        matches!(self.phase, Phase::Sync { .. })
    }

    /// Whether the current step is computed by [`RunDriver::stream`].
    pub fn overlaps(&self) -> bool {
        self.mesh_plans.overlap.is_some()
    }

    /// What to do next.
    pub fn poll(&mut self) -> Action {
        if let Some(out) = self.outbox.pop_front() {
            return Action::Emit(out);
        }
        match &self.phase {
            Phase::Begin => Action::Begin,
            Phase::Compute => Action::Compute,
            Phase::Reduce { .. } | Phase::Sync { .. } => Action::Reduce,
            Phase::Done => Action::Done(Box::new(
                self.ended.clone().expect("a run is done once it ended"),
            )),
        }
    }

    /// Starts the next member's step: evaluates and measures sharpness when due, and ends the
    /// run when its target, stall or budget says so. Idempotent per step.
    pub fn begin(&mut self) {
        assert!(matches!(self.phase, Phase::Begin), "begin() out of turn");
        let i = self.next;
        match self.members[i].replica.begin(&mut self.eval_scratch) {
            Begin::Compute => {
                if !self.buffers.fit(self.members[i].replica.num_micro()) {
                    // The batch changed (a batch schedule): new buffers, shares and plans.
                    self.shape();
                }
                self.phase = Phase::Compute;
            }
            Begin::Finished(summary) => self.end(Ended::Member(i, summary)),
        }
    }

    /// Computes this rank's share of the current step into its buffers.
    pub fn compute(&mut self) {
        assert!(
            matches!(self.phase, Phase::Compute),
            "compute() out of turn"
        );
        let m = &mut self.members[self.next];
        let input = m.replica.input();
        let micros = self.micros.clone();
        match &mut self.buffers {
            Buffers::Exact(packet) => {
                compute_micros(input, &mut m.sampler, micros, packet, &mut self.scratch)
            }
            Buffers::Fast { grad, stats } => compute_micros_fast(
                input,
                &mut m.sampler,
                micros,
                grad,
                stats,
                &mut self.scratch,
            ),
        }
        self.phase = Phase::Reduce { stats_only: false };
    }

    /// An overlapped step: computes every micro of this rank's share but the last, and returns
    /// the rest: the last micro's backward pass, which hands each gradient bucket over as it
    /// finishes ([`LastMicro::run`], on a thread of the executor's), and each bucket's plan in
    /// the order to reduce them. Hand the pass's result to [`RunDriver::streamed`]; the stats
    /// are then reduced by an [`Action::Reduce`]. The words are those of
    /// [`RunDriver::compute`], so the step is bit-identical.
    pub fn stream(&mut self) -> Streamed<'_> {
        assert!(matches!(self.phase, Phase::Compute), "stream() out of turn");
        let (Buffers::Exact(packet), Some(o)) = (&mut self.buffers, &self.mesh_plans.overlap)
        else {
            panic!("stream() on a driver that does not overlap");
        };
        let m = &mut self.members[self.next];
        let input = m.replica.input();
        let last = compute_micros_but_last(
            input,
            &mut m.sampler,
            self.micros.clone(),
            packet,
            &mut self.scratch,
        );
        let (grad, _) = packet.grad_and_stats_mut();
        let slices = split_buckets(grad, &o.buckets);
        self.phase = Phase::Reduce { stats_only: true };
        Streamed {
            last: LastMicro {
                input,
                sampler: &mut m.sampler,
                micro: last,
                slices,
                scratch: &mut self.scratch,
            },
            plans: &o.plans,
        }
    }

    /// The last micro's stats from an overlapped step's backward pass.
    pub fn streamed(&mut self, stats: Option<(usize, MicroStats)>) {
        assert!(
            matches!(self.phase, Phase::Reduce { stats_only: true }),
            "streamed() out of turn"
        );
        if let (Some((j, stats)), Buffers::Exact(packet)) = (stats, &mut self.buffers) {
            packet.add_stats(j, &stats);
        }
    }

    /// The buffers to all-reduce now, each with this rank's plan, in order.
    pub fn reduction(&mut self) -> Vec<(Buf<'_>, &Plan)> {
        let plans = &self.mesh_plans;
        match (&mut self.phase, &mut self.buffers) {
            (Phase::Sync { buf, plan, .. }, _) => vec![(Buf::I64(buf), &*plan)],
            (Phase::Reduce { stats_only: true }, Buffers::Exact(packet)) => {
                let (_, stats) = packet.grad_and_stats_mut();
                let o = plans.overlap.as_ref().expect("an overlapped step");
                vec![(Buf::I64(stats), &o.stats)]
            }
            (Phase::Reduce { .. }, Buffers::Exact(packet)) => {
                vec![(Buf::I64(packet.words_mut()), &plans.step[0])]
            }
            (Phase::Reduce { .. }, Buffers::Fast { grad, stats }) => vec![
                (Buf::F32(grad), &plans.step[0]),
                (Buf::I64(stats.words_mut()), &plans.step[1]),
            ],
            _ => panic!("reduction() outside Action::Reduce"),
        }
    }

    /// Takes what happened.
    pub fn handle(&mut self, event: Event<'_>) -> Result<(), DriverError> {
        match event {
            Event::Reduced => match self.phase {
                Phase::Reduce { .. } => {
                    self.apply();
                    Ok(())
                }
                Phase::Sync { .. } => self.sync_reduced(),
                _ => panic!("Event::Reduced outside Action::Reduce"),
            },
            Event::Joined { rank, world } => {
                self.join(rank, world);
                Ok(())
            }
            Event::Confirmed(next) => {
                self.confirmed(next);
                Ok(())
            }
        }
    }

    fn join(&mut self, rank: usize, world: usize) {
        assert!(world >= 1 && rank < world, "rank {rank} of world {world}");
        self.rank = rank;
        self.world = world;
        self.shape();
        self.phase = if self.settings.elastic && world > 1 {
            let mut offers = vec![0i64; world];
            offers[rank] = self.version as i64 + 1;
            Phase::Sync {
                plan: sync_plan(rank, world, offers.len()),
                buf: offers,
                stage: SyncStage::Offers,
            }
        } else {
            if self.settings.elastic {
                self.synced(None);
            }
            self.resting_phase()
        };
    }

    /// Sizes the buffers, this rank's share of the micros and the reductions' plans for the
    /// current step's batch on the current mesh.
    fn shape(&mut self) {
        let (rank, world) = (self.rank, self.world);
        let plan = &self.plans[0];
        let num_micro = self.members[self.next].replica.num_micro();
        if !self.buffers.fit(num_micro) {
            self.buffers = Buffers::new(
                self.settings.reduction.mode,
                plan.task.num_params(),
                num_micro,
            );
        }
        self.micros = balanced_range(num_micro, rank, world);
        let r = self.settings.reduction;
        self.mesh_plans = match &self.buffers {
            Buffers::Exact(packet) => {
                let buckets = plan.task.buckets();
                // One rank has nothing to overlap: its all-reduce is a no-op.
                let overlap = (r.overlap && buckets.len() > 1 && world > 1).then(|| OverlapPlans {
                    plans: buckets
                        .iter()
                        .map(|b| r.plan(rank, world, b.len(), 8))
                        .collect(),
                    stats: r.plan(rank, world, packet.len() - packet.dim(), 8),
                    buckets,
                });
                Plans {
                    step: vec![r.plan(rank, world, packet.len(), 8)],
                    overlap,
                }
            }
            Buffers::Fast { grad, stats } => Plans {
                step: vec![
                    r.plan(rank, world, grad.len(), 4),
                    r.plan(rank, world, stats.len(), 8),
                ],
                overlap: None,
            },
        };
    }

    /// Where a run goes on from between steps.
    fn resting_phase(&self) -> Phase {
        if self.ended.is_some() {
            Phase::Done
        } else {
            Phase::Begin
        }
    }

    fn confirmed(&mut self, next: &[u64]) {
        while let Some((m, row)) = self.unconfirmed.front() {
            if next.get(*m).is_some_and(|&n| row.step < n) {
                self.unconfirmed.pop_front();
            } else {
                break;
            }
        }
    }

    /// Consumes the reduced buffers of the current step.
    fn apply(&mut self) {
        let i = self.next;
        let replica = &mut self.members[i].replica;
        let applied = match &self.buffers {
            Buffers::Exact(packet) => replica.apply(packet),
            Buffers::Fast { grad, stats } => replica.apply_fast(grad, stats),
        };
        self.version += 1;
        let (row, ended) = match applied {
            Applied::Redo => {
                self.counts.redos += 1;
                self.phase = Phase::Compute;
                return;
            }
            Applied::Step(row) => (row, None),
            Applied::Finished(row, summary) => (row, Some(summary)),
        };
        self.counts.steps += 1;
        if let Some(g) = &mut self.group {
            g.record(i, &row);
        }
        self.rows[i] = row.step + 1;
        if self.settings.elastic {
            self.unconfirmed.push_back((i, (*row).clone()));
        }
        if self.rank == 0 {
            self.outbox.push_back(Output::Row { member: i, row });
        }
        if let Some(summary) = ended {
            self.end(Ended::Member(i, summary));
            return;
        }
        self.next = (i + 1) % self.members.len();
        self.phase = Phase::Begin;
        if self.next == 0 {
            if let Some(end) = self.group.as_mut().and_then(SeedMean::check) {
                self.end(Ended::Group(end));
                return;
            }
            let every = self.settings.checkpoint_every;
            if self.rank == 0 && every > 0 && self.rows[0].is_multiple_of(every) {
                // After the rows it covers: whoever receives it holds them.
                let mut state = self.state();
                state.unconfirmed.clear();
                self.outbox.push_back(Output::Checkpoint(Box::new(state)));
            }
        }
    }

    fn end(&mut self, end: Ended) {
        let params = || self.members.iter().map(|m| m.replica.params.as_slice());
        let summary = match (end, &self.group) {
            (Ended::Member(_, s), None) => *s,
            (Ended::Member(i, s), Some(g)) => g.summary(g.member_ended(i, &s), params()),
            (Ended::Group(end), Some(g)) => g.summary(end, params()),
            (Ended::Group(_), None) => unreachable!("only a group ends as a group"),
        };
        self.ended = Some(summary);
        self.phase = Phase::Done;
    }

    /// The next stage of agreeing on the freshest state.
    fn sync_reduced(&mut self) -> Result<(), DriverError> {
        let Phase::Sync { buf, stage, .. } = std::mem::replace(&mut self.phase, Phase::Begin)
        else {
            unreachable!("called in the sync phase");
        };
        let (rank, world) = (self.rank, self.world);
        match stage {
            SyncStage::Offers => {
                let offers = buf;
                let best = offers.iter().copied().max().unwrap_or(0);
                if offers.iter().all(|&o| o == best) {
                    self.synced(None);
                    self.phase = self.resting_phase();
                    return Ok(());
                }
                let src = offers.iter().position(|&o| o == best).expect("a maximum");
                let blob = if rank == src {
                    self.state().to_bytes()
                } else {
                    Vec::new()
                };
                self.phase = Phase::Sync {
                    buf: vec![blob.len() as i64],
                    plan: sync_plan(rank, world, 1),
                    stage: SyncStage::Len { offers, src, blob },
                };
            }
            SyncStage::Len { offers, src, blob } => {
                let bytes = usize::try_from(buf[0])
                    .ok()
                    .filter(|&b| b <= MAX_STATE_BYTES)
                    .ok_or_else(|| {
                        DriverError::PeerState(format!(
                            "rank {src} offered a run state of {} bytes (at most {MAX_STATE_BYTES} accepted)",
                            buf[0]
                        ))
                    })?;
                let mut words = vec![0i64; bytes.div_ceil(8)];
                for (w, c) in words.iter_mut().zip(blob.chunks(8)) {
                    let mut b = [0u8; 8];
                    b[..c.len()].copy_from_slice(c);
                    *w = i64::from_le_bytes(b);
                }
                self.phase = Phase::Sync {
                    plan: sync_plan(rank, world, words.len()),
                    buf: words,
                    stage: SyncStage::Words { offers, src, bytes },
                };
            }
            SyncStage::Words { offers, src, bytes } => {
                let best = offers[src];
                let mut took = None;
                if offers[rank] != best {
                    let raw: Vec<u8> = buf
                        .iter()
                        .flat_map(|w| w.to_le_bytes())
                        .take(bytes)
                        .collect();
                    let state = RunState::from_bytes(&raw).map_err(|e| {
                        DriverError::PeerState(format!("rank {src}'s run state: {e}"))
                    })?;
                    self.restore(state).map_err(|e| {
                        DriverError::PeerState(format!("rank {src}'s run state: {e}"))
                    })?;
                    took = Some((src, (best - offers[rank]) as u64, bytes));
                }
                self.synced(took);
                self.phase = self.resting_phase();
            }
        }
        Ok(())
    }

    /// After the ranks agreed: reports it, and rank 0 hands out again the rows the coordinator
    /// has not confirmed.
    fn synced(&mut self, took: Option<(usize, u64, usize)>) {
        let (member, step) = (self.next, self.members[self.next].replica.t);
        self.outbox.push_back(Output::Synced(Synced {
            took,
            member,
            step,
            version: self.version,
        }));
        if self.rank == 0 {
            for (m, row) in &self.unconfirmed {
                self.outbox.push_back(Output::Row {
                    member: *m,
                    row: Box::new(row.clone()),
                });
            }
        }
    }

    /// Every member's parameters, in member order.
    pub fn params(&self) -> impl Iterator<Item = &[f64]> {
        self.members.iter().map(|m| m.replica.params.as_slice())
    }
}

/// The plan of a resynchronisation's all-reduces (small; the ring is fine at any size).
fn sync_plan(rank: usize, world: usize, len: usize) -> Plan {
    batchlab_collective::plan(
        &PlanConfig {
            algorithm: Algorithm::Ring,
            chunk_elems: 1 << 19,
        },
        rank,
        world,
        len,
    )
}

/// How a run ended.
enum Ended {
    /// A member's own end (the run's, when it is alone).
    Member(usize, Box<RunSummary>),
    /// The seed-mean rule.
    Group(GroupEnd),
}

/// `grad` cut into the words of each bucket, in bucket order (the buckets partition it).
fn split_buckets<'a>(grad: &'a mut [i64], buckets: &[Range<usize>]) -> Vec<&'a mut [i64]> {
    let mut order: Vec<usize> = (0..buckets.len()).collect();
    order.sort_by_key(|&k| buckets[k].start);
    let mut slots: Vec<Option<&'a mut [i64]>> = (0..buckets.len()).map(|_| None).collect();
    let mut rest = grad;
    for k in order {
        let (words, tail) = std::mem::take(&mut rest).split_at_mut(buckets[k].len());
        slots[k] = Some(words);
        rest = tail;
    }
    slots.into_iter().map(|s| s.expect("a partition")).collect()
}

/// The rest of an overlapped step ([`RunDriver::stream`]).
#[derive(Debug)]
pub struct Streamed<'a> {
    /// The last micro's backward pass.
    pub last: LastMicro<'a>,
    /// Bucket `k`'s plan; reduce the buckets in this order (the order the pass finishes them).
    pub plans: &'a [Plan],
}

/// The backward pass of a rank's last micro in an overlapped step.
pub struct LastMicro<'a> {
    input: StepInput<'a>,
    sampler: &'a mut Sampler,
    micro: Option<usize>,
    slices: Vec<&'a mut [i64]>,
    scratch: &'a mut WorkerScratch,
}

impl std::fmt::Debug for LastMicro<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastMicro")
            .field("micro", &self.micro)
            .field("buckets", &self.slices.len())
            .finish_non_exhaustive()
    }
}

impl<'a> LastMicro<'a> {
    /// Runs the pass, handing `ready(k, words)` each bucket's final words as soon as they are
    /// (every bucket at once when this rank has no micro); returns the micro and its stats for
    /// [`RunDriver::streamed`].
    pub fn run(self, ready: &mut dyn FnMut(usize, &'a mut [i64])) -> Option<(usize, MicroStats)> {
        match self.micro {
            Some(j) => Some((
                j,
                compute_last_micro_streamed(
                    self.input,
                    self.sampler,
                    j,
                    self.slices,
                    self.scratch,
                    ready,
                ),
            )),
            None => {
                for (k, words) in self.slices.into_iter().enumerate() {
                    ready(k, words);
                }
                None
            }
        }
    }
}

/// What one call of [`Trainer::step`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A step was applied.
    Step(Box<StepMetrics>),
    /// The run ended; the metrics row of the step that ended it comes with it, if one did.
    Done(Option<Box<StepMetrics>>, Box<RunSummary>),
}

/// One training run in one process: the driver of a lone rank, whose reductions are no-ops.
/// `batchlab train` is this loop.
#[derive(Debug)]
pub struct Trainer {
    driver: RunDriver,
}

impl Trainer {
    /// A trainer at step 0.
    pub fn new(plan: &RunPlan) -> Self {
        let driver = RunDriver::from_plans(vec![plan.clone()], None, Settings::default(), 0, 1)
            .expect("the default settings hold");
        Self { driver }
    }

    /// The replica's state.
    pub fn replica(&self) -> &Replica {
        self.driver.replica(0)
    }

    /// Runs one step (or finishes the run).
    pub fn step(&mut self) -> Progress {
        loop {
            match lone_step(&mut self.driver) {
                Some(Output::Row { row, .. }) => {
                    return match self.driver.is_done() {
                        true => Progress::Done(Some(row), Box::new(self.finished())),
                        false => Progress::Step(row),
                    };
                }
                Some(_) => {}
                None => return Progress::Done(None, Box::new(self.finished())),
            }
        }
    }

    fn finished(&self) -> RunSummary {
        self.driver.summary().expect("ended").clone()
    }

    /// Runs to the end, handing each metrics row to `on_step`.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepMetrics)) -> RunSummary {
        loop {
            match self.step() {
                Progress::Step(row) => on_step(&row),
                Progress::Done(row, summary) => {
                    if let Some(row) = row {
                        on_step(&row);
                    }
                    return *summary;
                }
            }
        }
    }
}

/// Executes a lone rank's driver up to its next output (`None`: the run is over).
pub(crate) fn lone_step(driver: &mut RunDriver) -> Option<Output> {
    loop {
        match driver.poll() {
            Action::Begin => driver.begin(),
            Action::Compute => driver.compute(),
            // One rank: every buffer already holds the sum.
            Action::Reduce => driver
                .handle(Event::Reduced)
                .expect("a lone rank has no peer to take a state from"),
            Action::Emit(out) => return Some(out),
            Action::Done(_) => return None,
        }
    }
}

/// Trains one replica per plan (the members, e.g. [`SeedMean::member_config`] of each seed) in
/// lock step in this process and ends them together under `rule`, handing every row to
/// `on_row(member, row)` first: the group's summary and each member's final parameters. An
/// error from `on_row` stops the run and is returned.
pub fn run_in_process<E>(
    rule: SeedMean,
    plans: &[RunPlan],
    mut on_row: impl FnMut(usize, &StepMetrics) -> Result<(), E>,
) -> Result<(RunSummary, Vec<Vec<f64>>), E> {
    let mut driver = RunDriver::from_plans(plans.to_vec(), Some(rule), Settings::default(), 0, 1)
        .expect("a group of at least one member, exact reduction");
    while let Some(out) = lone_step(&mut driver) {
        if let Output::Row { member, row } = out {
            on_row(member, &row)?;
        }
    }
    let summary = driver.summary().expect("the run ended").clone();
    let params = driver.params().map(<[f64]>::to_vec).collect();
    Ok((summary, params))
}
