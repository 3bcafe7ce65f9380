//! The records of an experiment's trials.

use batchlab_core::train::Status;
use serde::{Deserialize, Serialize};

/// One training run of an experiment and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Global batch size `B`.
    pub batch: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Sampler seed (the replicate); with `seeds > 1`, the first of the averaged seeds.
    pub seed: u64,
    /// Number of seeds whose mean loss was checked against the target (1: a single run).
    #[serde(default = "one")]
    pub seeds: u64,
    /// COMPLETE (target reached), INCOMPLETE (budget spent), INFEASIBLE (diverged).
    pub status: Status,
    /// Updates applied: the steps to target `S` when COMPLETE.
    pub steps: u64,
    /// Samples consumed, `E = B·S` when COMPLETE.
    pub samples: u64,
    /// Measured `B_simple` at the end of the run, i.e. near the target: the noise probe at the
    /// final parameters when one ran (see `b_simple_se`), else the training-time EMA.
    pub b_simple: Option<f64>,
    /// Standard error of the probe's `B_simple`.
    #[serde(default)]
    pub b_simple_se: Option<f64>,
    /// `B_simple` at the end from the same probe's nested prefixes (every size `m … 64m` at
    /// once, docs/science.md#nested-prefixes).
    #[serde(default)]
    pub b_simple_nested: Option<f64>,
    /// Standard error of `b_simple_nested` (over the probe's independent batches).
    #[serde(default)]
    pub b_simple_nested_se: Option<f64>,
    /// The training-time `B_simple` (ratio of EMAs) at the end of the run.
    #[serde(default)]
    pub b_simple_ema: Option<f64>,
    /// Exact `B_simple` at the end, where the task has a closed form.
    pub b_simple_exact: Option<f64>,
    /// Exact `B_noise` at the end, where the task has a closed form.
    pub b_noise_exact: Option<f64>,
    /// The loss the target is checked on, at the end.
    pub final_loss: Option<f64>,
}

fn one() -> u64 {
    1
}
