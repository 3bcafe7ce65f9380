//! The coordinator's part of one run, as a plain state machine.
//!
//! ```text
//!   worker reports ──► Report ──► RunCollection::handle ──► Collected::Row (each step once,
//!   (rows from rank 0,                                       in order), Checkpoint (covering
//!    summaries, params,                                      exactly the rows held), Nothing
//!    errors)                                  └──► Failed (malformed, rows lost, a rank failed)
//!   every member of the current generation reported ──► RunCollection::outcome
//! ```
//!
//! It holds no lock and awaits nothing: the coordinator's async shell feeds it what arrives and
//! the membership it sees, and carries out what it returns (hand rows on, save checkpoints,
//! abort the cluster on a failure).

use std::collections::BTreeMap;

use batchlab_core::driver::RunState;
use batchlab_core::train::StepMetrics;

use crate::protocol::RunOrder;
use crate::protocol::pb;
use crate::worker::{RankResult, RankTiming};

/// A finished run: the summary every replica agreed on, and each rank's timing.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The summary (identical on every rank).
    pub summary: batchlab_core::train::RunSummary,
    /// Where each rank's time went, by rank.
    pub timings: Vec<RankTiming>,
    /// The final parameters (of every member of a seed-mean group, in member order), when the
    /// spec asked for them.
    pub params: Option<Vec<f64>>,
}

/// A run's state at the end of a round of steps, as a coordinator saves it: the run it is of,
/// the rows it covers (per seed-mean member) and the workers' state (CBOR).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The run's name ([`RunOrder::run_id`]), which a resumed run must have.
    pub run: String,
    /// Rows produced before it, per member.
    pub rows: Vec<u64>,
    /// The workers' run state.
    pub state: Vec<u8>,
}

impl Checkpoint {
    /// The checkpoint as bytes (CBOR).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::encode(self)
    }

    /// A checkpoint read back.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        crate::decode(bytes)
    }

    /// The step the run resumes at (of its first member).
    pub fn step(&self) -> u64 {
        self.rows.first().copied().unwrap_or(0)
    }
}

/// What workers tell the coordinator about a task.
#[derive(Debug)]
pub(crate) enum Report {
    /// A metrics row of `member` (rank 0's).
    Row {
        task: u64,
        member: usize,
        bytes: Vec<u8>,
    },
    /// The final parameters (rank 0's).
    Params { task: u64, bytes: Vec<u8> },
    /// A rank's summary and timing.
    Summary {
        worker: usize,
        rank: usize,
        task: u64,
        bytes: Vec<u8>,
    },
    /// A rank's benchmark result.
    Bench {
        rank: usize,
        task: u64,
        bytes: Vec<u8>,
    },
    /// The run's state after the rows it covers (rank 0's).
    Checkpoint { task: u64, bytes: Vec<u8> },
    /// A rank failed.
    Error {
        worker: usize,
        rank: usize,
        task: u64,
        message: String,
    },
    /// The heartbeat monitor lost a worker of a run that cannot go on without it.
    Lost { message: String },
}

impl Report {
    /// What a worker's report says, for the coordinator's run collection; a report with no
    /// content is refused with the reason.
    pub(crate) fn from_wire(m: pb::RunReport) -> Result<Report, String> {
        use pb::run_report::Kind;
        let (worker, rank, task) = (m.worker_id as usize, m.rank as usize, m.task);
        Ok(match m.kind.ok_or("a report with no content")? {
            Kind::Step(bytes) => Report::Row {
                task,
                member: m.member as usize,
                bytes,
            },
            Kind::Params(bytes) => Report::Params { task, bytes },
            Kind::Summary(bytes) => Report::Summary {
                worker,
                rank,
                task,
                bytes,
            },
            Kind::Checkpoint(bytes) => Report::Checkpoint { task, bytes },
            Kind::Bench(bytes) => Report::Bench { rank, task, bytes },
            Kind::Error(message) => Report::Error {
                worker,
                rank,
                task,
                message,
            },
        })
    }
}

/// What [`RunCollection::handle`] decided.
#[derive(Debug, PartialEq)]
pub(crate) enum Collected {
    /// Nothing to hand on (a row sent again, a summary, an earlier task's straggler).
    Nothing,
    /// The next row of a member.
    Row(usize, StepMetrics),
    /// A checkpoint covering exactly the rows handed on so far.
    Checkpoint(Checkpoint),
}

/// Why a run cannot end well.
#[derive(Debug, PartialEq)]
pub(crate) enum Failed {
    /// A worker sent bytes that do not decode: a refusal to count, from `from`.
    Malformed { from: String, message: String },
    /// The run is broken (rows lost, a rank failed, a worker lost): the cluster aborts.
    Abort(String),
    /// The replicas' results disagree or are incomplete.
    Peer(String),
}

/// One run's collection (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct RunCollection {
    task: u64,
    run_id: String,
    members: usize,
    want_params: bool,
    elastic: bool,
    /// Summaries by worker id.
    summaries: BTreeMap<usize, RankResult>,
    params: Option<Vec<f64>>,
}

impl RunCollection {
    /// The collection of task `task`, a run of `order`.
    pub(crate) fn new(task: u64, order: &RunOrder, elastic: bool) -> Self {
        Self {
            task,
            run_id: order.run_id(),
            members: order.seeds.len().max(1),
            want_params: order.return_params,
            elastic,
            summaries: BTreeMap::new(),
            params: None,
        }
    }

    /// Takes one report. `rows` holds the next step expected of each member (what the
    /// heartbeats tell the workers); `lost` says whether a worker was declared lost.
    pub(crate) fn handle(
        &mut self,
        report: Report,
        rows: &mut [u64],
        lost: impl Fn(usize) -> bool,
    ) -> Result<Collected, Failed> {
        let task = self.task;
        match report {
            Report::Row {
                task: t,
                member,
                bytes,
            } if t == task => {
                let row: StepMetrics = crate::decode(&bytes).map_err(|e| Failed::Malformed {
                    from: "rank 0".into(),
                    message: format!("rank 0 sent a malformed metrics row: {e}"),
                })?;
                let Some(next) = rows.get_mut(member) else {
                    return Err(Failed::Abort(format!(
                        "rank 0 sent a row of member {member}; the run has {}",
                        self.members
                    )));
                };
                if row.step < *next {
                    return Ok(Collected::Nothing); // sent again by a new rank 0
                }
                if row.step > *next {
                    return Err(Failed::Abort(format!(
                        "rows of member {member} skip from step {next} to {}: rows were lost",
                        row.step
                    )));
                }
                *next += 1;
                Ok(Collected::Row(member, row))
            }
            Report::Checkpoint { task: t, bytes } if t == task => {
                let state = RunState::from_bytes(&bytes).map_err(|e| Failed::Malformed {
                    from: "rank 0".into(),
                    message: format!("rank 0 sent a malformed checkpoint: {e}"),
                })?;
                if state.rows != rows {
                    tracing::warn!(
                        "a checkpoint after rows {:?} skipped: the coordinator holds rows {rows:?}",
                        state.rows
                    );
                    return Ok(Collected::Nothing);
                }
                Ok(Collected::Checkpoint(Checkpoint {
                    run: self.run_id.clone(),
                    rows: state.rows,
                    state: bytes,
                }))
            }
            Report::Params { task: t, bytes } if t == task => {
                if bytes.len() % 8 != 0 {
                    return Err(Failed::Abort(format!(
                        "rank 0 sent {} bytes of parameters: expected a multiple of 8",
                        bytes.len()
                    )));
                }
                self.params = Some(
                    bytes
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                );
                Ok(Collected::Nothing)
            }
            Report::Summary {
                worker,
                rank,
                task: t,
                bytes,
            } if t == task => {
                let s: RankResult = crate::decode(&bytes).map_err(|e| Failed::Malformed {
                    from: format!("rank {rank}"),
                    message: format!("rank {rank} sent a malformed summary: {e}"),
                })?;
                self.summaries.insert(worker, s);
                Ok(Collected::Nothing)
            }
            Report::Error {
                worker,
                rank,
                task: t,
                message,
            } if t == task => {
                if self.elastic && lost(worker) {
                    // It was declared lost and the others went on without it.
                    tracing::warn!("worker {worker}, lost earlier, reported: {message}");
                    return Ok(Collected::Nothing);
                }
                Err(Failed::Abort(format!("rank {rank} failed: {message}")))
            }
            Report::Lost { message } => Err(Failed::Abort(message)),
            _ => Ok(Collected::Nothing), // an earlier task's stragglers
        }
    }

    /// The run's outcome once every member of the current generation (`current`, worker ids by
    /// rank; `None` while one forms) reported; `rows` as in [`RunCollection::handle`].
    pub(crate) fn outcome(
        &self,
        current: Option<&[usize]>,
        rows: &[u64],
    ) -> Option<Result<RunOutcome, Failed>> {
        let current = current.filter(|c| !c.is_empty())?;
        if !current.iter().all(|id| self.summaries.contains_key(id)) {
            return None;
        }
        Some(self.finish(current, rows))
    }

    fn finish(&self, current: &[usize], rows: &[u64]) -> Result<RunOutcome, Failed> {
        let summaries = &self.summaries;
        let first = summaries[&current[0]].summary.clone();
        if let Some((id, r)) = summaries
            .iter()
            .find(|(_, r)| r.summary.params_digest != first.params_digest)
        {
            return Err(Failed::Peer(format!(
                "replicas disagree: rank 0 ended with parameters {}, worker {id} (rank {}) with {}",
                first.params_digest, r.timing.rank, r.summary.params_digest
            )));
        }
        let expected = &summaries[&current[0]].rows;
        if !expected.is_empty() && expected.as_slice() != rows {
            return Err(Failed::Abort(format!(
                "the run ended with rows {rows:?} of each member received; its replicas produced {expected:?}"
            )));
        }
        if self.want_params && self.params.is_none() {
            return Err(Failed::Peer(
                "rank 0 finished without sending the final parameters the run asked for".into(),
            ));
        }
        // Timings of the final members by rank, then of the workers that left.
        let mut timings: Vec<RankTiming> = current
            .iter()
            .map(|id| summaries[id].timing.clone())
            .collect();
        timings.extend(
            summaries
                .iter()
                .filter(|(id, _)| !current.contains(id))
                .map(|(_, r)| r.timing.clone()),
        );
        Ok(RunOutcome {
            summary: first,
            timings,
            params: self.params.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchlab_core::driver::Reduction;
    use batchlab_core::train::{RunSummary, Status, TrainConfig};

    fn order(seeds: Vec<u64>, params: bool) -> RunOrder {
        let mut o = RunOrder::new(TrainConfig::default(), seeds, Reduction::default());
        o.return_params = params;
        o
    }

    fn row(task: u64, member: usize, step: u64) -> Report {
        let r = StepMetrics {
            step,
            ..StepMetrics::default()
        };
        Report::Row {
            task,
            member,
            bytes: crate::encode(&r),
        }
    }

    fn summary(worker: usize, task: u64, digest: &str, rows: Vec<u64>) -> Report {
        let s = RankResult {
            summary: RunSummary {
                status: Status::Incomplete,
                steps: rows[0],
                samples: 0,
                message: String::new(),
                batch: 1,
                micro: 1,
                peak_lr: 0.1,
                final_eval_loss: None,
                final_eval_accuracy: None,
                final_train_loss: None,
                final_b_simple: None,
                last_sharpness: None,
                final_b_simple_exact: None,
                final_b_noise_exact: None,
                params_digest: digest.into(),
            },
            timing: RankTiming {
                rank: worker,
                ..RankTiming::default()
            },
            rows,
        };
        Report::Summary {
            worker,
            rank: worker,
            task,
            bytes: crate::encode(&s),
        }
    }

    #[test]
    fn rows_are_taken_once_in_order_and_a_gap_fails_the_run() {
        let mut c = RunCollection::new(7, &order(vec![1, 2], false), true);
        let mut rows = vec![0, 0];
        let none = |_| false;
        assert!(matches!(
            c.handle(row(7, 0, 0), &mut rows, none),
            Ok(Collected::Row(0, _))
        ));
        assert!(matches!(
            c.handle(row(7, 1, 0), &mut rows, none),
            Ok(Collected::Row(1, _))
        ));
        // Sent again by a new rank 0, and an earlier task's straggler: nothing.
        assert_eq!(
            c.handle(row(7, 0, 0), &mut rows, none),
            Ok(Collected::Nothing)
        );
        assert_eq!(
            c.handle(row(6, 0, 5), &mut rows, none),
            Ok(Collected::Nothing)
        );
        assert_eq!(rows, vec![1, 1]);
        let gap = c.handle(row(7, 0, 2), &mut rows, none).unwrap_err();
        assert_eq!(
            gap,
            Failed::Abort("rows of member 0 skip from step 1 to 2: rows were lost".into())
        );
        let other = c.handle(row(7, 2, 0), &mut rows, none).unwrap_err();
        assert!(matches!(other, Failed::Abort(m) if m.contains("member 2; the run has 2")));
        let bad = Report::Row {
            task: 7,
            member: 0,
            bytes: vec![0xff, 0x00],
        };
        assert!(matches!(
            c.handle(bad, &mut rows, none),
            Err(Failed::Malformed { from, .. }) if from == "rank 0"
        ));
    }

    #[test]
    fn a_checkpoint_counts_only_when_it_covers_the_rows_held() {
        let o = order(vec![], false);
        let mut c = RunCollection::new(1, &o, false);
        // A run's state claiming `rows` rows.
        let driver = |rows: u64| {
            let cfg = TrainConfig::default();
            let d = batchlab_core::driver::RunDriver::new(&cfg, &[], Default::default(), 0, 1);
            let mut state = d.unwrap().state();
            state.rows = vec![rows];
            state.to_bytes()
        };
        let mut rows = vec![3];
        let ahead = Report::Checkpoint {
            task: 1,
            bytes: driver(4),
        };
        assert_eq!(
            c.handle(ahead, &mut rows, |_| false),
            Ok(Collected::Nothing)
        );
        let bytes = driver(3);
        let exact = Report::Checkpoint {
            task: 1,
            bytes: bytes.clone(),
        };
        assert_eq!(
            c.handle(exact, &mut rows, |_| false),
            Ok(Collected::Checkpoint(Checkpoint {
                run: o.run_id(),
                rows: vec![3],
                state: bytes,
            }))
        );
    }

    #[test]
    fn the_run_ends_once_every_current_member_reported_and_they_agree() {
        let mut c = RunCollection::new(2, &order(vec![], true), true);
        let mut rows = vec![4];
        let none = |_| false;
        c.handle(summary(0, 2, "aa", vec![4]), &mut rows, none)
            .unwrap();
        assert!(
            c.outcome(Some(&[0, 1]), &rows).is_none(),
            "worker 1 has not reported"
        );
        assert!(c.outcome(None, &rows).is_none(), "a generation forms");
        // A worker lost earlier reports an error: ignored in an elastic run.
        let late = Report::Error {
            worker: 5,
            rank: 1,
            task: 2,
            message: "broken pipe".into(),
        };
        assert_eq!(
            c.handle(late, &mut rows, |w| w == 5),
            Ok(Collected::Nothing)
        );
        c.handle(summary(1, 2, "aa", vec![4]), &mut rows, none)
            .unwrap();
        let missing = c.outcome(Some(&[0, 1]), &rows).unwrap().unwrap_err();
        assert!(matches!(missing, Failed::Peer(m) if m.contains("final parameters")));
        let params = Report::Params {
            task: 2,
            bytes: 1.5f64.to_le_bytes().to_vec(),
        };
        c.handle(params, &mut rows, none).unwrap();
        let out = c.outcome(Some(&[1, 0]), &rows).unwrap().unwrap();
        assert_eq!(out.params, Some(vec![1.5]));
        assert_eq!(
            out.timings.iter().map(|t| t.rank).collect::<Vec<_>>(),
            vec![1, 0],
            "by rank of the final generation"
        );
        // A replica that ended elsewhere, and rows that do not match what the replicas made.
        c.handle(summary(2, 2, "bb", vec![4]), &mut rows, none)
            .unwrap();
        let disagree = c.outcome(Some(&[0, 1, 2]), &rows).unwrap().unwrap_err();
        assert!(matches!(disagree, Failed::Peer(m) if m.contains("replicas disagree")));
        let mut c = RunCollection::new(3, &order(vec![], false), false);
        c.handle(summary(0, 3, "aa", vec![5]), &mut rows, none)
            .unwrap();
        let short = c.outcome(Some(&[0]), &[4]).unwrap().unwrap_err();
        assert!(matches!(short, Failed::Abort(m) if m.contains("rows [4]")));
        let failed = Report::Error {
            worker: 0,
            rank: 0,
            task: 3,
            message: "disk full".into(),
        };
        assert_eq!(
            c.handle(failed, &mut rows, |_| true),
            Err(Failed::Abort("rank 0 failed: disk full".into()))
        );
    }
}
