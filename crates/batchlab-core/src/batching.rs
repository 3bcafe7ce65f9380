//! Batch size as a schedule: the global batch `B_t` of every step.
//!
//! A run's batch is constant unless its config has a `[batch_schedule]`. The batch of step `t`
//! is decided by every replica alike, from what every replica holds identically (the step, the
//! samples consumed before it, the noise-scale estimate), so a run whose batch changes is as
//! exact and reproducible as one whose batch does not: on any number of workers, the same
//! batches and the same parameters, bit for bit. The samples of a step are the next `B_t` of
//! the run's sequence (`crate::sampler`), so a schedule counted in samples and every epoch stay
//! right when the batch changes. See `docs/science.md#batch-size-schedules`.
//!
//! Kinds (`B` is the config's `batch`, `m` its microbatch; every `B_t` is a multiple of `m`):
//! - `constant`: `B_t = B`;
//! - `step`: `B_t = B · factorᵏ`, `k` the number of `at` positions already reached ("increase
//!   the batch instead of decaying the rate", Smith et al. 2018);
//! - `ramp`: from `start` at position 0 linearly to `B` at position `over`, then `B`, rounded
//!   down to a multiple of `m` (the batch ramp of large language-model training);
//! - `noise`: `B_t = clamp(round_m(scale · B_simple), min, max)`, re-decided every `every`
//!   steps from the run's own `B_simple` estimate (the EMA ratio of `train`), starting from `B`
//!   until there is one (McCandlish et al. 2018; AdaptDL's adaptive batch size).
//!
//! Positions (`at`, `over`) count steps or samples, as `unit` says.
//!
//! ```toml
//! [batch_schedule]
//! kind = "step"          # constant | step | ramp | noise
//! unit = "samples"       # steps | samples: what `at` and `over` count
//! at = [200000, 400000]  # step: the positions where B is multiplied by `factor`
//! factor = 2             # step: an integer ≥ 2
//! # start = 32           # ramp: B at position 0
//! # over = 100000        # ramp: the position where it reaches `batch`
//! # min = 16             # noise: the smallest batch (≥ 2 microbatches, for the estimate)
//! # max = 4096           # noise: the largest batch (required)
//! # every = 10           # noise: steps between decisions
//! # scale = 1.0          # noise: B_t follows scale · B_simple
//! ```

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::error::ensure;
use crate::schedule::Unit;

/// Which rule decides the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BatchKind {
    /// The config's `batch` throughout.
    #[default]
    Constant,
    /// Multiplied by `factor` at each of the `at` positions.
    Step,
    /// Linear from `start` to `batch` over `over`.
    Ramp,
    /// Following the measured noise scale `B_simple`.
    Noise,
}

/// A `[batch_schedule]` table (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSchedule {
    /// The rule. Default `constant`.
    pub kind: BatchKind,
    /// What `at` and `over` count. Default `steps`.
    pub unit: Unit,
    /// `step`: the positions at which the batch is multiplied by `factor`, increasing.
    pub at: Vec<u64>,
    /// `step`: the factor, an integer ≥ 2. Default 2.
    pub factor: u64,
    /// `ramp`: the batch at position 0. Default: the microbatch.
    pub start: Option<u64>,
    /// `ramp`: the position at which the batch reaches `batch`.
    pub over: u64,
    /// `noise`: the smallest batch. Default: two microbatches.
    pub min: Option<u64>,
    /// `noise`: the largest batch (required).
    pub max: Option<u64>,
    /// `noise`: steps between two decisions. Default 10.
    pub every: u64,
    /// `noise`: the batch follows `scale · B_simple`. Default 1.
    pub scale: f64,
}

impl Default for BatchSchedule {
    fn default() -> Self {
        Self {
            kind: BatchKind::Constant,
            unit: Unit::Steps,
            at: Vec::new(),
            factor: 2,
            start: None,
            over: 0,
            min: None,
            max: None,
            every: 10,
            scale: 1.0,
        }
    }
}

impl BatchSchedule {
    /// Whether this is the constant batch (the default; left out of a written config).
    pub fn is_constant(&self) -> bool {
        *self == Self::default()
    }

    /// Validates the schedule for a run of `batch` in microbatches of `micro`, `steps` long.
    pub fn build(&self, batch: u64, micro: u64, steps: u64) -> Result<Batching, ConfigError> {
        let multiple = |what: &str, value: u64| {
            ensure(
                value >= micro && value.is_multiple_of(micro),
                what,
                value,
                &format!("a multiple of the microbatch size {micro}"),
            )
        };
        let rule = match self.kind {
            BatchKind::Constant => Rule::Constant,
            BatchKind::Step => {
                ensure(
                    !self.at.is_empty(),
                    "batch_schedule.at",
                    "[]",
                    "at least one position for kind = \"step\"",
                )?;
                ensure(
                    self.at.windows(2).all(|w| w[0] < w[1]),
                    "batch_schedule.at",
                    format!("{:?}", self.at),
                    "increasing positions",
                )?;
                ensure(
                    self.factor >= 2,
                    "batch_schedule.factor",
                    self.factor,
                    "an integer ≥ 2",
                )?;
                let k = u32::try_from(self.at.len()).unwrap_or(u32::MAX);
                let top = self
                    .factor
                    .checked_pow(k)
                    .and_then(|f| f.checked_mul(batch));
                ensure(
                    top.is_some_and(|b| b <= crate::sampler::MAX_SAMPLES),
                    "batch_schedule.factor",
                    self.factor,
                    &format!("a factor whose {k} steps keep the batch within 2⁴⁰ (from {batch})"),
                )?;
                Rule::Step {
                    at: self.at.clone(),
                    factor: self.factor,
                    unit: self.unit,
                }
            }
            BatchKind::Ramp => {
                let start = self.start.unwrap_or(micro);
                multiple("batch_schedule.start", start)?;
                ensure(
                    self.over >= 1,
                    "batch_schedule.over",
                    self.over,
                    "a positive length for kind = \"ramp\"",
                )?;
                Rule::Ramp {
                    start,
                    over: self.over,
                    unit: self.unit,
                }
            }
            BatchKind::Noise => {
                let min = self.min.unwrap_or(2 * micro);
                multiple("batch_schedule.min", min)?;
                ensure(
                    min >= 2 * micro,
                    "batch_schedule.min",
                    min,
                    &format!(
                        "at least two microbatches ({}): the noise scale is measured between them",
                        2 * micro
                    ),
                )?;
                let Some(max) = self.max else {
                    return Err(ConfigError::invalid(
                        "batch_schedule.max",
                        "nothing",
                        "the largest batch for kind = \"noise\"",
                    ));
                };
                multiple("batch_schedule.max", max)?;
                ensure(
                    max >= min,
                    "batch_schedule.max",
                    max,
                    &format!("at least batch_schedule.min = {min}"),
                )?;
                ensure(
                    (min..=max).contains(&batch),
                    "batch",
                    batch,
                    &format!("the first batch, within batch_schedule's [{min}, {max}]"),
                )?;
                ensure(
                    self.every >= 1,
                    "batch_schedule.every",
                    self.every,
                    "at least 1 step between decisions",
                )?;
                ensure(
                    self.scale.is_finite() && self.scale > 0.0,
                    "batch_schedule.scale",
                    self.scale,
                    "a finite factor > 0",
                )?;
                Rule::Noise {
                    min,
                    max,
                    every: self.every,
                    scale: self.scale,
                }
            }
        };
        let batching = Batching { batch, micro, rule };
        let largest = batching.largest();
        let samples = largest
            .checked_mul(steps)
            .filter(|&n| n <= crate::sampler::MAX_SAMPLES);
        ensure(
            samples.is_some(),
            "batch",
            batch,
            &format!(
                "largest batch × steps ≤ 2⁴⁰ samples (the sampler's stream of one seed); with \
                 steps = {steps}, a batch of at most {} (this run's largest is {largest})",
                crate::sampler::MAX_SAMPLES / steps.max(1)
            ),
        )?;
        Ok(batching)
    }
}

/// A built rule.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    Constant,
    Step {
        at: Vec<u64>,
        factor: u64,
        unit: Unit,
    },
    Ramp {
        start: u64,
        over: u64,
        unit: Unit,
    },
    Noise {
        min: u64,
        max: u64,
        every: u64,
        scale: f64,
    },
}

/// Where a run stands when a step's batch is decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// The step `t` (updates applied before it).
    pub step: u64,
    /// Samples consumed before step `t`.
    pub samples: u64,
    /// The batch of the step before (`B_{t−1}`; the first batch at step 0).
    pub batch: u64,
    /// The run's `B_simple` estimate so far, when it has one.
    pub b_simple: Option<f64>,
}

/// A validated batch-size schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    batch: u64,
    micro: u64,
    rule: Rule,
}

impl Batching {
    /// The batch of step 0.
    pub fn first(&self) -> u64 {
        match &self.rule {
            Rule::Constant | Rule::Noise { .. } => self.batch,
            _ => self.batch_at(Position {
                step: 0,
                samples: 0,
                batch: self.batch,
                b_simple: None,
            }),
        }
    }

    /// The largest batch the schedule can reach.
    pub fn largest(&self) -> u64 {
        match &self.rule {
            Rule::Constant => self.batch,
            Rule::Step { at, factor, .. } => {
                self.batch * factor.pow(u32::try_from(at.len()).unwrap_or(u32::MAX))
            }
            Rule::Ramp { start, .. } => self.batch.max(*start),
            Rule::Noise { max, .. } => *max,
        }
    }

    /// The smallest batch the schedule can reach.
    pub fn smallest(&self) -> u64 {
        match &self.rule {
            Rule::Constant | Rule::Step { .. } => self.batch,
            Rule::Ramp { start, .. } => self.batch.min(*start),
            Rule::Noise { min, .. } => *min,
        }
    }

    /// Whether the batch never changes.
    pub fn is_constant(&self) -> bool {
        self.rule == Rule::Constant
    }

    /// The batch of the step at `at`.
    pub fn batch_at(&self, at: Position) -> u64 {
        let m = self.micro;
        let position = |unit: &Unit| match unit {
            Unit::Steps => at.step,
            Unit::Samples => at.samples,
        };
        match &self.rule {
            Rule::Constant => self.batch,
            Rule::Step {
                at: marks,
                factor,
                unit,
            } => {
                let p = position(unit);
                let k = marks.iter().take_while(|&&a| a <= p).count();
                self.batch * factor.pow(k as u32)
            }
            Rule::Ramp { start, over, unit } => {
                let p = position(unit).min(*over);
                // Exact in integers: start + (batch − start)·p/over, rounded down to m.
                let (s, b) = (i128::from(*start), i128::from(self.batch));
                let v = s + (b - s) * i128::from(p) / i128::from(*over);
                let v = u64::try_from(v).expect("between start and batch");
                (v / m * m).max(m)
            }
            Rule::Noise {
                min,
                max,
                every,
                scale,
            } => {
                if at.step == 0 || !at.step.is_multiple_of(*every) {
                    return at.batch;
                }
                match at.b_simple.filter(|b| b.is_finite() && *b > 0.0) {
                    Some(b) => {
                        let want = (scale * b / m as f64).round().max(1.0);
                        // Saturating: a huge estimate is clamped to `max` below.
                        let v = if want >= (u64::MAX / m) as f64 {
                            u64::MAX
                        } else {
                            want as u64 * m
                        };
                        v.clamp(*min, *max)
                    }
                    None => at.batch,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, samples: u64, batch: u64, b_simple: Option<f64>) -> Position {
        Position {
            step,
            samples,
            batch,
            b_simple,
        }
    }

    #[test]
    fn a_step_schedule_multiplies_at_each_mark() {
        let s = BatchSchedule {
            kind: BatchKind::Step,
            at: vec![10, 20],
            factor: 4,
            ..BatchSchedule::default()
        }
        .build(8, 2, 100)
        .unwrap();
        let b = |t| s.batch_at(at(t, 0, 0, None));
        assert_eq!(
            [b(0), b(9), b(10), b(19), b(20), b(99)],
            [8, 8, 32, 32, 128, 128]
        );
        assert_eq!((s.first(), s.smallest(), s.largest()), (8, 8, 128));
    }

    #[test]
    fn a_ramp_counted_in_samples_is_linear_and_rounded_down_to_the_micro() {
        let s = BatchSchedule {
            kind: BatchKind::Ramp,
            unit: Unit::Samples,
            start: Some(4),
            over: 1000,
            ..BatchSchedule::default()
        }
        .build(64, 4, 100)
        .unwrap();
        let b = |samples| s.batch_at(at(0, samples, 0, None));
        // ⌊4 + 60·p/1000⌋ rounded down to 4: p = 0 → 4, 100 → 10 → 8, 500 → 34 → 32,
        // 999 → 63 → 60, 1000 and beyond → 64.
        assert_eq!(
            [b(0), b(100), b(500), b(999), b(1000), b(5000)],
            [4, 8, 32, 60, 64, 64]
        );
    }

    #[test]
    fn the_noise_rule_follows_b_simple_within_bounds_at_its_decision_steps() {
        let s = BatchSchedule {
            kind: BatchKind::Noise,
            min: Some(8),
            max: Some(256),
            every: 5,
            ..BatchSchedule::default()
        }
        .build(16, 4, 100)
        .unwrap();
        assert_eq!(s.first(), 16);
        // Not a decision step: the batch stays.
        assert_eq!(s.batch_at(at(3, 0, 16, Some(100.0))), 16);
        // Decisions: 101 → 25.25 micros → 25 → 100; below min and above max, clamped.
        assert_eq!(s.batch_at(at(5, 0, 16, Some(101.0))), 100);
        assert_eq!(s.batch_at(at(5, 0, 16, Some(1.0))), 8);
        assert_eq!(s.batch_at(at(10, 0, 16, Some(1e30))), 256);
        // No estimate yet (or a broken one): the batch stays.
        assert_eq!(s.batch_at(at(10, 0, 40, None)), 40);
        assert_eq!(s.batch_at(at(10, 0, 40, Some(f64::NAN))), 40);
    }

    #[test]
    fn bad_schedules_are_refused_naming_the_value() {
        let bad =
            |s: BatchSchedule, batch, micro| s.build(batch, micro, 100).unwrap_err().to_string();
        let e = bad(
            BatchSchedule {
                kind: BatchKind::Step,
                ..BatchSchedule::default()
            },
            8,
            2,
        );
        assert!(
            e.contains("batch_schedule.at") && e.contains("at least one position"),
            "{e}"
        );
        let e = bad(
            BatchSchedule {
                kind: BatchKind::Step,
                at: vec![5, 3],
                ..BatchSchedule::default()
            },
            8,
            2,
        );
        assert!(e.contains("[5, 3]") && e.contains("increasing"), "{e}");
        let e = bad(
            BatchSchedule {
                kind: BatchKind::Ramp,
                start: Some(6),
                over: 10,
                ..BatchSchedule::default()
            },
            16,
            4,
        );
        assert!(
            e.contains("batch_schedule.start = 6") && e.contains("multiple of"),
            "{e}"
        );
        let e = bad(
            BatchSchedule {
                kind: BatchKind::Noise,
                ..BatchSchedule::default()
            },
            16,
            4,
        );
        assert!(e.contains("batch_schedule.max"), "{e}");
        let e = bad(
            BatchSchedule {
                kind: BatchKind::Noise,
                min: Some(4),
                max: Some(64),
                ..BatchSchedule::default()
            },
            16,
            4,
        );
        assert!(
            e.contains("batch_schedule.min = 4") && e.contains("two microbatches"),
            "{e}"
        );
        let e = bad(
            BatchSchedule {
                kind: BatchKind::Step,
                at: vec![1; 1].into_iter().chain(2..70).collect(),
                ..BatchSchedule::default()
            },
            8,
            2,
        );
        assert!(e.contains("batch_schedule.factor = 2"), "{e}");
    }
}
