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
    /// This trial measured the rate a tuned search chose, on held-out seeds (with the full
    /// budget and an evaluation every step): its steps are the ones reported for its batch
    /// size (docs/science.md#selection-bias). False for selection trials and for studies
    /// written before held-out measurement existed.
    #[serde(default)]
    pub held_out: bool,
    /// For a held-out trial, the steps the chosen rate took on the selection seeds (the
    /// best of the search, biased low).
    #[serde(default)]
    pub selection_steps: Option<u64>,
    /// For a held-out seed-mean trial, the steps to the target as a real number: the
    /// crossing of the mean loss over its seeds (`fit::crossing_step`; `steps` is its
    /// ceiling). The fits use it.
    #[serde(default)]
    pub crossing: Option<f64>,
    /// The crossing of each group of 2 held-out seeds' mean loss (NaN where a group's did not
    /// cross), the replicates of the interval; written as numbers separated by spaces.
    #[serde(default, with = "spaced")]
    pub group_crossings: Vec<f64>,
}

/// A list of numbers as one string of numbers separated by spaces (a CSV cell holds one
/// value; `str.split()` in pandas reads it back).
mod spaced {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let words: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
        s.serialize_str(&words.join(" "))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let text = String::deserialize(d)?;
        text.split_whitespace()
            .map(|w| w.parse::<f64>().map_err(serde::de::Error::custom))
            .collect()
    }
}

fn one() -> u64 {
    1
}
