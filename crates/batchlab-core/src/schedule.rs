//! Learning-rate schedules, warmup, and batch-size scaling rules. (STUB: to be implemented.)

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Learning-rate scaling from a base `(B₀, η₀)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// `η = η₀`.
    #[default]
    None,
    /// `η = η₀ B/B₀`.
    Linear,
    /// `η = η₀ √(B/B₀)`.
    Sqrt,
}

impl Scaling {
    /// The rate for batch `batch` from base rate `base_lr` at batch `base_batch`.
    pub fn apply(self, base_lr: f64, base_batch: u64, batch: u64) -> f64 {
        let _ = (base_lr, base_batch, batch);
        unimplemented!()
    }
}

/// Schedule settings, as in a config file's `[schedule]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    _stub: (),
}

impl ScheduleConfig {
    /// Validates and builds the schedule; `total_steps` is the run's step budget (the horizon
    /// of decays that need one).
    pub fn build(&self, total_steps: u64) -> Result<Schedule, ConfigError> {
        let _ = total_steps;
        unimplemented!()
    }
}

/// A built schedule: `lr(t)` for a peak rate.
#[derive(Debug, Clone)]
pub struct Schedule {
    _private: (),
}

impl Schedule {
    /// The rate at step `t` (0-based) for peak rate `peak`.
    pub fn lr(&self, peak: f64, t: u64) -> f64 {
        let _ = (peak, t);
        unimplemented!()
    }
}
