//! Learning-rate schedules, warmup, and batch-size scaling rules.
//!
//! A [`Schedule`] is a factor `f(t)` on the peak rate: `lr(peak, t) = peak · f(t)`, with `t` the
//! 0-based step. A warmup of `T_w` steps comes first, then the decay, which starts afresh
//! (at its own step 0, factor 1) when warmup ends and spans the remaining `T − T_w` steps:
//!
//! ```text
//!   f(t) = w(t)            for t < T_w     warmup
//!   f(t) = d(t − T_w)      for t ≥ T_w     decay, horizon D = T − T_w
//!
//!   f
//!   1 ┤      ____
//!     │    /'    ''--..                       cosine decay, linear warmup
//!     │   /            ''-.
//!     │  /                 '-.
//!     │ /                     ''-..
//! min ┤/                           ''--____
//!   0 ┼──────┬─────────────────────────────┬──► t
//!     0     T_w                            T
//! ```
//!
//! `T` is [`ScheduleConfig::horizon`] when given, else the run's `total_steps` handed to
//! [`ScheduleConfig::build`]. Only `polynomial`, `cosine` and `exponential_ramp` use it;
//! `polynomial` and `cosine` need `T > T_w` and hold their final value (0, resp. `min_factor`)
//! from `t = T` on; `exponential_ramp` needs `T ≥ T_w + 2` and holds 1 from `t = T − 1` on.
//!
//! Warmup shapes (`u = t/T_w`):
//! - linear `w(t) = min(1, (t+1)/T_w)`: reaches 1 at its last step `t = T_w − 1`;
//! - cubic `w(t) = 3u² − 2u³`: starts at 0, has zero slope at both ends, and meets the decay at
//!   `t = T_w` with value 1.
//!
//! Decays (`τ = t − T_w`, `m` = `min_factor`):
//! - constant `1`; step `γ^⌊τ/s⌋`; exponential `e^{−kτ}`;
//! - polynomial `(1 − τ/D)^p`, 0 from `τ = D` on;
//! - cosine `m + ½(1 − m)(1 + cos(πτ/D))`, `m` from `τ = D` on;
//! - cosine with warm restarts (SGDR, Loshchilov & Hutter 2017; `CosineAnnealingWarmRestarts`):
//!   cycle `i` lasts `T_i = T₀·T_multⁱ` steps, restarts (factor back to 1) at
//!   `τ = T₀, T₀(1 + T_mult), …`, and within a cycle `m + ½(1 − m)(1 + cos(π τ_cur/T_i))`.
//!
//! One "decay" rises instead: the learning-rate finder's range test (`batchlab lr-find`),
//! - exponential ramp `m^{1 − τ/(D−1)}`, `0 < m ≤ 1`: from `m` at `τ = 0` up to 1 at
//!   `τ = D − 1`, times `m^{−1/(D−1)}` every step, 1 from `τ = D − 1` on. With peak `η_hi` and
//!   `m = η_lo/η_hi` the rates are `η_τ = η_lo·(η_hi/η_lo)^{τ/(D−1)}`.
//!
//! In a config file:
//!
//! ```toml
//! [schedule]
//! decay = "cosine"          # constant | step | exponential | polynomial | cosine | cosine_restarts (alias sgdr)
//!                           # | exponential_ramp (rises from min_factor to 1)
//! warmup_steps = 100
//! warmup_shape = "cubic"    # linear | cubic
//! min_factor = 0.1          # cosine, cosine_restarts, exponential_ramp: η_min = min_factor · peak
//! horizon = 10000           # optional: T, else the run's total steps
//! unit = "steps"            # steps | samples: what t and every length above count
//! ```
//!
//! With `unit = "samples"` the schedule's argument is `s_t`, the samples consumed before step
//! `t`, and every length (`warmup_steps`, `horizon`, `step_size`, `t0`) counts samples; the
//! default horizon is then the run's steps × its first batch. This keeps a schedule right when
//! the batch changes during the run (`crate::batching`).

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::error::ensure;

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
    /// The rate for batch `batch` from base rate `base_lr` at batch `base_batch`
    /// (`base_batch > 0`; validating it is the job of the config that holds it).
    pub fn apply(self, base_lr: f64, base_batch: u64, batch: u64) -> f64 {
        debug_assert!(base_batch > 0, "base batch must be positive");
        let ratio = batch as f64 / base_batch as f64;
        match self {
            Self::None => base_lr,
            Self::Linear => base_lr * ratio,
            Self::Sqrt => base_lr * ratio.sqrt(),
        }
    }
}

/// What a schedule's positions count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Steps (updates applied).
    #[default]
    Steps,
    /// Samples consumed.
    Samples,
}

/// The decay after warmup (see the [module docs](self) for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecayKind {
    /// Factor 1 throughout.
    #[default]
    Constant,
    /// `γ^⌊τ/s⌋`: times `gamma` every `step_size` steps.
    Step,
    /// `e^{−kτ}` with `k` = `rate`.
    Exponential,
    /// `(1 − τ/D)^p` with `p` = `power`, 0 beyond the horizon.
    Polynomial,
    /// Cosine from 1 down to `min_factor` over the horizon.
    Cosine,
    /// Cosine with warm restarts (SGDR): periods `t0`, `t0·t_mult`, `t0·t_mult²`, …
    #[serde(alias = "sgdr")]
    CosineRestarts,
    /// A rise, not a decay: exponential from `min_factor` (> 0) up to 1 over the horizon, the
    /// learning-rate finder's ramp.
    ExponentialRamp,
}

impl DecayKind {
    /// The name as written in a config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Step => "step",
            Self::Exponential => "exponential",
            Self::Polynomial => "polynomial",
            Self::Cosine => "cosine",
            Self::CosineRestarts => "cosine_restarts",
            Self::ExponentialRamp => "exponential_ramp",
        }
    }
}

/// The shape of the warmup ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WarmupShape {
    /// `min(1, (t+1)/T_w)`.
    #[default]
    Linear,
    /// `3u² − 2u³`, `u = t/T_w`: zero slope at both ends.
    Cubic,
}

/// Schedule settings, as in a config file's `[schedule]` table (see the [module docs](self)).
///
/// Every field has a default, so `[schedule]` may be empty (a constant rate). Fields a decay
/// does not read are still range-checked but otherwise ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The decay after warmup. Default `constant`.
    pub decay: DecayKind,
    /// Warmup length `T_w` in steps; 0 for none. Default 0.
    pub warmup_steps: u64,
    /// Warmup shape. Default `linear`.
    pub warmup_shape: WarmupShape,
    /// `T`, the step at which `polynomial` and `cosine` reach their end value (and one step
    /// after `exponential_ramp` reaches 1), counted from step 0 (warmup included); absent: the
    /// run's total steps.
    pub horizon: Option<u64>,
    /// `η_min / peak` for `cosine` and `cosine_restarts`, in `[0, 1]`; the starting factor of
    /// `exponential_ramp`, in `(0, 1]`. Default 0.
    pub min_factor: f64,
    /// `s`, steps between two drops of `step`; required (> 0) for `step`. Default 0 (unset).
    pub step_size: u64,
    /// `γ`, the factor of each drop of `step`, in `(0, 1]`. Default 0.1 (as PyTorch's `StepLR`).
    pub gamma: f64,
    /// `k`, the rate per step of `exponential`, finite and ≥ 0. Default 0.
    pub rate: f64,
    /// `p`, the power of `polynomial`, finite and > 0. Default 1 (linear decay).
    pub power: f64,
    /// `T₀`, the first period of `cosine_restarts`; required (> 0) for it. Default 0 (unset).
    pub t0: u64,
    /// `T_mult ≥ 1`, the growth of each next period of `cosine_restarts`. Default 1.
    pub t_mult: u64,
    /// What `t` and every length above count: `steps` or `samples`. Default `steps`.
    #[serde(skip_serializing_if = "is_steps")]
    pub unit: Unit,
}

fn is_steps(u: &Unit) -> bool {
    *u == Unit::Steps
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            decay: DecayKind::Constant,
            warmup_steps: 0,
            warmup_shape: WarmupShape::Linear,
            horizon: None,
            min_factor: 0.0,
            step_size: 0,
            gamma: 0.1,
            rate: 0.0,
            power: 1.0,
            t0: 0,
            t_mult: 1,
            unit: Unit::Steps,
        }
    }
}

impl ScheduleConfig {
    /// Validates and builds the schedule; `total_steps` is the run's step budget (the horizon
    /// of decays that need one).
    pub fn build(&self, total_steps: u64) -> Result<Schedule, ConfigError> {
        if let Some(h) = self.horizon {
            ensure(h > 0, "schedule.horizon", h, "a positive number of steps")?;
        }
        ensure(
            (0.0..=1.0).contains(&self.min_factor),
            "schedule.min_factor",
            self.min_factor,
            "a fraction of the peak rate in [0, 1]",
        )?;
        ensure(
            self.gamma > 0.0 && self.gamma <= 1.0,
            "schedule.gamma",
            self.gamma,
            "a factor in (0, 1]",
        )?;
        ensure(
            self.rate >= 0.0 && self.rate.is_finite(),
            "schedule.rate",
            self.rate,
            "a finite decay rate per step ≥ 0",
        )?;
        ensure(
            self.power > 0.0 && self.power.is_finite(),
            "schedule.power",
            self.power,
            "a finite power > 0",
        )?;
        ensure(
            self.t_mult >= 1,
            "schedule.t_mult",
            self.t_mult,
            "an integer ≥ 1",
        )?;

        let horizon = self.horizon.unwrap_or(total_steps);
        let decay = match self.decay {
            DecayKind::Constant => Decay::Constant,
            DecayKind::Step => {
                ensure(
                    self.step_size > 0,
                    "schedule.step_size",
                    self.step_size,
                    "a positive number of steps for decay = \"step\"",
                )?;
                Decay::Step {
                    every: self.step_size,
                    gamma: self.gamma,
                }
            }
            DecayKind::Exponential => Decay::Exponential { rate: self.rate },
            DecayKind::Polynomial | DecayKind::Cosine => {
                ensure(
                    horizon > self.warmup_steps,
                    "schedule.warmup_steps",
                    self.warmup_steps,
                    &format!(
                        "fewer than the horizon T = {horizon} steps for decay = \"{}\" \
                         (T is schedule.horizon, else the run's total steps)",
                        self.decay.name()
                    ),
                )?;
                let span = horizon - self.warmup_steps;
                if self.decay == DecayKind::Polynomial {
                    Decay::Polynomial {
                        power: self.power,
                        span,
                    }
                } else {
                    Decay::Cosine {
                        min: self.min_factor,
                        span,
                    }
                }
            }
            DecayKind::CosineRestarts => {
                ensure(
                    self.t0 > 0,
                    "schedule.t0",
                    self.t0,
                    "a positive first period for decay = \"cosine_restarts\"",
                )?;
                Decay::CosineRestarts {
                    min: self.min_factor,
                    t0: self.t0,
                    t_mult: self.t_mult,
                }
            }
            DecayKind::ExponentialRamp => {
                ensure(
                    self.min_factor > 0.0,
                    "schedule.min_factor",
                    self.min_factor,
                    "a starting factor in (0, 1] for decay = \"exponential_ramp\"",
                )?;
                ensure(
                    horizon >= self.warmup_steps.saturating_add(2),
                    "schedule.horizon",
                    horizon,
                    &format!(
                        "at least warmup_steps + 2 = {} steps for decay = \"exponential_ramp\" \
                         (T is schedule.horizon, else the run's total steps)",
                        self.warmup_steps.saturating_add(2)
                    ),
                )?;
                Decay::ExponentialRamp {
                    start: self.min_factor,
                    span: horizon - self.warmup_steps,
                }
            }
        };
        Ok(Schedule {
            warmup_steps: self.warmup_steps,
            warmup_shape: self.warmup_shape,
            horizon,
            decay,
            unit: self.unit,
        })
    }
}

/// A built decay, parameters validated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decay {
    Constant,
    Step { every: u64, gamma: f64 },
    Exponential { rate: f64 },
    Polynomial { power: f64, span: u64 },
    Cosine { min: f64, span: u64 },
    CosineRestarts { min: f64, t0: u64, t_mult: u64 },
    ExponentialRamp { start: f64, span: u64 },
}

impl Decay {
    /// `d(τ)`, `τ` steps after warmup.
    fn factor(self, tau: u64) -> f64 {
        match self {
            Self::Constant => 1.0,
            Self::Step { every, gamma } => gamma.powf((tau / every) as f64),
            Self::Exponential { rate } => (-rate * tau as f64).exp(),
            Self::Polynomial { power, span } => {
                if tau >= span {
                    0.0
                } else {
                    ((span - tau) as f64 / span as f64).powf(power)
                }
            }
            Self::Cosine { min, span } => {
                if tau >= span {
                    min
                } else {
                    cosine(min, tau, span)
                }
            }
            Self::CosineRestarts { min, t0, t_mult } => {
                let (cur, period) = sgdr_position(tau, t0, t_mult);
                cosine(min, cur, period)
            }
            Self::ExponentialRamp { start, span } => {
                let last = span - 1;
                if tau >= last {
                    1.0
                } else {
                    start.powf(1.0 - tau as f64 / last as f64)
                }
            }
        }
    }
}

/// `m + ½(1 − m)(1 + cos(π τ/D))`.
fn cosine(min: f64, tau: u64, span: u64) -> f64 {
    let c = (std::f64::consts::PI * tau as f64 / span as f64).cos();
    min + 0.5 * (1.0 - min) * (1.0 + c)
}

/// `(τ_cur, T_i)`: the position in, and the length of, the SGDR cycle holding step `τ`.
fn sgdr_position(tau: u64, t0: u64, t_mult: u64) -> (u64, u64) {
    if t_mult == 1 {
        return (tau % t0, t0);
    }
    // Periods grow geometrically: at most 64 turns.
    let (mut start, mut period) = (0u64, t0);
    while tau - start >= period {
        start += period;
        period = period.saturating_mul(t_mult);
    }
    (tau - start, period)
}

/// A built schedule: `lr(t)` for a peak rate.
#[derive(Debug, Clone)]
pub struct Schedule {
    warmup_steps: u64,
    warmup_shape: WarmupShape,
    horizon: u64,
    decay: Decay,
    unit: Unit,
}

impl Schedule {
    /// What the schedule's `t` counts.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The rate at step `t` (0-based) for peak rate `peak`.
    pub fn lr(&self, peak: f64, t: u64) -> f64 {
        peak * self.factor(t)
    }

    /// `lr(1, t)`: the warmup factor during warmup, the decay factor after.
    pub fn factor(&self, t: u64) -> f64 {
        if t < self.warmup_steps {
            self.warmup_factor(t)
        } else {
            self.decay.factor(t - self.warmup_steps)
        }
    }

    /// The warmup factor `w(t)` at step `t`: in `[0, 1]` during warmup, 1 from `T_w` on.
    pub fn warmup_factor(&self, t: u64) -> f64 {
        if t >= self.warmup_steps {
            return 1.0;
        }
        let tw = self.warmup_steps as f64;
        match self.warmup_shape {
            WarmupShape::Linear => (t + 1) as f64 / tw,
            WarmupShape::Cubic => {
                let u = t as f64 / tw;
                u * u * (3.0 - 2.0 * u)
            }
        }
    }

    /// The decay factor `d(t − T_w)` at step `t`: 1 during warmup.
    pub fn decay_factor(&self, t: u64) -> f64 {
        if t < self.warmup_steps {
            1.0
        } else {
            self.decay.factor(t - self.warmup_steps)
        }
    }

    /// Warmup length `T_w`.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }

    /// `T`: `schedule.horizon` if given, else the `total_steps` it was built with.
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Cumulative variation `Σ_{t=1}^{steps−1} |η_t − η_{t−1}|` of the first `steps` rates
    /// (a measure of how smooth the schedule is; 0 for fewer than two steps).
    pub fn cumulative_variation(&self, peak: f64, steps: u64) -> f64 {
        let mut total = 0.0;
        let mut prev = self.lr(peak, 0);
        for t in 1..steps {
            let cur = self.lr(peak, t);
            total += (cur - prev).abs();
            prev = cur;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use approx::assert_relative_eq;
    use serde::de::value::{Error as DeError, MapDeserializer, StrDeserializer};

    use super::*;

    /// Tolerance for the closed forms below (a few roundings of `cos`, `exp`, `powf`).
    const TOL: f64 = 1e-14;

    fn build(config: ScheduleConfig, total_steps: u64) -> Schedule {
        config.build(total_steps).unwrap()
    }

    fn decay(decay: DecayKind) -> ScheduleConfig {
        ScheduleConfig {
            decay,
            ..ScheduleConfig::default()
        }
    }

    #[test]
    fn default_is_a_constant_rate() {
        let s = build(ScheduleConfig::default(), 0);
        for t in [0, 1, 1000, u64::MAX] {
            assert_eq!(s.lr(0.3, t), 0.3);
        }
    }

    #[test]
    fn linear_warmup_reaches_the_peak_on_its_last_step() {
        // w(t) = (t+1)/T_w: 1/4, 2/4, 3/4, 1, then the constant decay.
        let s = build(
            ScheduleConfig {
                warmup_steps: 4,
                ..ScheduleConfig::default()
            },
            100,
        );
        let got: Vec<f64> = (0..6).map(|t| s.lr(2.0, t)).collect();
        assert_eq!(got, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]);
        assert_eq!(s.warmup_factor(1), 0.5);
        assert_eq!(s.decay_factor(1), 1.0);
    }

    #[test]
    fn cubic_warmup_is_half_way_at_half_time_and_symmetric() {
        let s = build(
            ScheduleConfig {
                warmup_steps: 10,
                warmup_shape: WarmupShape::Cubic,
                ..ScheduleConfig::default()
            },
            100,
        );
        assert_eq!(s.warmup_factor(0), 0.0);
        assert_eq!(s.warmup_factor(5), 0.5);
        // u = 0.2: 3·0.04 − 2·0.008 = 0.104.
        assert_relative_eq!(s.warmup_factor(2), 0.104, max_relative = TOL);
        // 3u² − 2u³ + 3(1−u)² − 2(1−u)³ = 1.
        for t in 1..10 {
            assert_relative_eq!(
                s.warmup_factor(t) + s.warmup_factor(10 - t),
                1.0,
                max_relative = TOL
            );
        }
        assert_eq!(s.factor(10), 1.0);
    }

    #[test]
    fn cosine_passes_the_midpoint_at_half_horizon_and_holds_its_floor() {
        // η_min = 0.1·peak; no warmup, T = 100.
        let s = build(
            ScheduleConfig {
                min_factor: 0.1,
                ..decay(DecayKind::Cosine)
            },
            100,
        );
        let peak = 2.0;
        assert_eq!(s.lr(peak, 0), peak);
        assert_relative_eq!(s.lr(peak, 50), (peak + 0.2) / 2.0, max_relative = TOL);
        // cos(π/4) = √2/2.
        let quarter = 0.2 + 0.5 * 1.8 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert_relative_eq!(s.lr(peak, 25), quarter, max_relative = TOL);
        assert_relative_eq!(s.lr(peak, 100), 0.2, max_relative = TOL);
        assert_relative_eq!(s.lr(peak, 1000), 0.2, max_relative = TOL);
    }

    #[test]
    fn decay_starts_when_warmup_ends_and_spans_the_rest_of_the_horizon() {
        // T_w = 10, T = 110: the cosine runs over 100 steps from t = 10.
        let s = build(
            ScheduleConfig {
                warmup_steps: 10,
                ..decay(DecayKind::Cosine)
            },
            110,
        );
        assert_eq!(s.factor(9), 1.0);
        assert_eq!(s.factor(10), 1.0);
        assert_relative_eq!(s.factor(60), 0.5, max_relative = TOL);
        assert_eq!(s.factor(110), 0.0);
        assert_eq!(s.horizon(), 110);
        assert_eq!(s.warmup_steps(), 10);
    }

    #[test]
    fn horizon_field_overrides_the_run_length() {
        let config = ScheduleConfig {
            horizon: Some(100),
            ..decay(DecayKind::Cosine)
        };
        let s = build(config, 5000);
        assert_eq!(s.horizon(), 100);
        assert_relative_eq!(s.factor(50), 0.5, max_relative = TOL);
        assert_eq!(build(decay(DecayKind::Cosine), 5000).horizon(), 5000);
    }

    #[test]
    fn step_decay_drops_by_gamma_every_step_size_after_warmup() {
        let s = build(
            ScheduleConfig {
                step_size: 3,
                gamma: 0.5,
                warmup_steps: 2,
                ..decay(DecayKind::Step)
            },
            0,
        );
        let got: Vec<f64> = (2..12).map(|t| s.factor(t)).collect();
        assert_eq!(got, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]);
    }

    #[test]
    fn exponential_decay_is_e_to_the_minus_kt() {
        let s = build(
            ScheduleConfig {
                rate: 0.01,
                ..decay(DecayKind::Exponential)
            },
            0,
        );
        assert_relative_eq!(s.lr(3.0, 100), 3.0 * (-1.0f64).exp(), max_relative = TOL);
        assert_relative_eq!(s.factor(250), (-2.5f64).exp(), max_relative = TOL);
    }

    #[test]
    fn polynomial_decay_reaches_zero_at_the_horizon_and_stays() {
        let s = build(
            ScheduleConfig {
                power: 2.0,
                ..decay(DecayKind::Polynomial)
            },
            10,
        );
        assert_eq!(s.factor(5), 0.25);
        assert_eq!(s.factor(8), (0.2f64).powi(2));
        assert_eq!(s.factor(10), 0.0);
        assert_eq!(s.factor(20), 0.0);
        // p = 1 after a warmup of 4 with T = 14: linear over 10 steps from t = 4.
        let s = build(
            ScheduleConfig {
                warmup_steps: 4,
                ..decay(DecayKind::Polynomial)
            },
            14,
        );
        assert_eq!(s.factor(9), 0.5);
    }

    #[test]
    fn sgdr_restarts_at_t0_and_t0_times_one_plus_t_mult() {
        // T₀ = 10, T_mult = 2: cycles [0, 10), [10, 30), [30, 70), ...
        let s = build(
            ScheduleConfig {
                t0: 10,
                t_mult: 2,
                ..decay(DecayKind::CosineRestarts)
            },
            0,
        );
        for restart in [0, 10, 30, 70] {
            assert_eq!(s.factor(restart), 1.0, "restart at {restart}");
        }
        assert_relative_eq!(s.factor(5), 0.5, max_relative = TOL);
        assert_relative_eq!(s.factor(20), 0.5, max_relative = TOL); // half of the 20-step cycle
        assert_relative_eq!(s.factor(50), 0.5, max_relative = TOL); // half of the 40-step cycle
        let end_of_first = 0.5 * (1.0 + (0.9 * std::f64::consts::PI).cos());
        assert_relative_eq!(s.factor(9), end_of_first, max_relative = TOL);

        // T_mult = 1, with a floor and after a warmup of 3: period 10 from t = 3.
        let s = build(
            ScheduleConfig {
                t0: 10,
                min_factor: 0.2,
                warmup_steps: 3,
                ..decay(DecayKind::CosineRestarts)
            },
            0,
        );
        assert_eq!(s.factor(3 + 20), 1.0);
        assert_relative_eq!(s.factor(3 + 25), 0.6, max_relative = TOL);
    }

    #[test]
    fn exponential_ramp_multiplies_by_a_constant_ratio_from_min_factor_to_one() {
        // m = 0.01 over T = 5 steps: m^{1 − τ/4} = 10^{−2}, 10^{−1.5}, 10^{−1}, 10^{−0.5}, 1,
        // each step × 10^{0.5}; then 1. numpy: 2 * 0.01 ** (1 - np.arange(5) / 4)
        //   = [0.02, 0.06324555320336758, 0.2, 0.6324555320336759, 2.0]
        let s = build(
            ScheduleConfig {
                min_factor: 0.01,
                ..decay(DecayKind::ExponentialRamp)
            },
            5,
        );
        let want = [
            0.02,
            0.063_245_553_203_367_58,
            0.2,
            0.632_455_532_033_675_9,
            2.0,
        ];
        for (t, w) in want.iter().enumerate() {
            assert_relative_eq!(s.lr(2.0, t as u64), w, max_relative = TOL);
        }
        assert_eq!(
            s.lr(2.0, 0),
            2.0 * 0.01,
            "starts exactly at min_factor · peak"
        );
        assert_eq!(
            s.factor(4),
            1.0,
            "reaches the peak on the horizon's last step"
        );
        assert_eq!(s.factor(5), 1.0);
        assert_eq!(s.factor(1000), 1.0);
        for t in 0..4 {
            assert_relative_eq!(
                s.factor(t + 1) / s.factor(t),
                10f64.sqrt(),
                max_relative = TOL
            );
        }
        // After a warmup of 2 with T = 7: the ramp spans the last 5 steps.
        let s = build(
            ScheduleConfig {
                min_factor: 0.01,
                warmup_steps: 2,
                horizon: Some(7),
                ..decay(DecayKind::ExponentialRamp)
            },
            1000,
        );
        assert_eq!(s.factor(1), 1.0, "linear warmup's last step");
        assert_eq!(s.factor(2), 0.01);
        assert_relative_eq!(s.factor(4), 0.1, max_relative = TOL);
        assert_eq!(s.factor(6), 1.0);
        // A monotone rise: its cumulative variation is peak · (1 − m).
        let s = build(
            ScheduleConfig {
                min_factor: 0.25,
                ..decay(DecayKind::ExponentialRamp)
            },
            40,
        );
        assert_relative_eq!(s.cumulative_variation(2.0, 60), 1.5, max_relative = TOL);
        let kind = DecayKind::deserialize(StrDeserializer::<DeError>::new("exponential_ramp"));
        assert_eq!(kind.unwrap(), DecayKind::ExponentialRamp);
        assert_eq!(DecayKind::ExponentialRamp.name(), "exponential_ramp");
    }

    #[test]
    fn sgdr_parses_under_both_names() {
        for name in ["sgdr", "cosine_restarts"] {
            let kind = DecayKind::deserialize(StrDeserializer::<DeError>::new(name)).unwrap();
            assert_eq!(kind, DecayKind::CosineRestarts);
        }
    }

    #[test]
    fn config_fields_parse_by_name_and_unknown_ones_are_refused() {
        let map = |pairs: Vec<(&'static str, &'static str)>| {
            ScheduleConfig::deserialize(MapDeserializer::<_, DeError>::new(pairs.into_iter()))
        };
        let config = map(vec![("decay", "cosine"), ("warmup_shape", "cubic")]).unwrap();
        assert_eq!(
            config,
            ScheduleConfig {
                decay: DecayKind::Cosine,
                warmup_shape: WarmupShape::Cubic,
                ..ScheduleConfig::default()
            }
        );
        let err = map(vec![("decay", "cosine"), ("warmup", "cubic")]).unwrap_err();
        assert!(err.to_string().contains("unknown field `warmup`"), "{err}");
    }

    #[test]
    fn cumulative_variation_of_linear_warmup_then_constant() {
        // η/T_w, 2η/T_w, ..., η, η, ...: the rise from η/T_w to η is η(1 − 1/T_w).
        let s = build(
            ScheduleConfig {
                warmup_steps: 8,
                ..ScheduleConfig::default()
            },
            100,
        );
        assert_relative_eq!(
            s.cumulative_variation(0.4, 100),
            0.4 * (1.0 - 1.0 / 8.0),
            max_relative = TOL
        );
        // Cubic warmup starts at 0: the whole peak.
        let s = build(
            ScheduleConfig {
                warmup_steps: 8,
                warmup_shape: WarmupShape::Cubic,
                ..ScheduleConfig::default()
            },
            100,
        );
        assert_relative_eq!(s.cumulative_variation(0.4, 100), 0.4, max_relative = TOL);
    }

    #[test]
    fn cumulative_variation_of_a_monotone_decay_is_its_drop() {
        // Steps 0..=T: η₀ − η_T.
        let s = build(
            ScheduleConfig {
                min_factor: 0.25,
                ..decay(DecayKind::Cosine)
            },
            50,
        );
        assert_relative_eq!(
            s.cumulative_variation(2.0, 51),
            2.0 - 0.5,
            max_relative = TOL
        );
        let s = build(
            ScheduleConfig {
                rate: 0.1,
                ..decay(DecayKind::Exponential)
            },
            0,
        );
        assert_relative_eq!(
            s.cumulative_variation(1.0, 31),
            1.0 - (-3.0f64).exp(),
            max_relative = TOL
        );
        assert_eq!(s.cumulative_variation(1.0, 1), 0.0);
        assert_eq!(s.cumulative_variation(1.0, 0), 0.0);
    }

    #[test]
    fn cumulative_variation_counts_each_restart_jump() {
        // Two 10-step SGDR cycles (T_mult = 1, floor 0): fall 1 − d₉, jump back up 1 − d₉,
        // fall again 1 − d₉, with d₉ = ½(1 + cos(0.9π)).
        let s = build(
            ScheduleConfig {
                t0: 10,
                ..decay(DecayKind::CosineRestarts)
            },
            0,
        );
        let d9 = 0.5 * (1.0 + (0.9 * std::f64::consts::PI).cos());
        assert_relative_eq!(
            s.cumulative_variation(1.0, 20),
            3.0 * (1.0 - d9),
            max_relative = 1e-13
        );
    }

    #[test]
    fn scaling_rules_from_a_base_batch() {
        assert_eq!(Scaling::None.apply(0.1, 128, 512), 0.1);
        assert_relative_eq!(
            Scaling::Linear.apply(0.1, 128, 512),
            0.4,
            max_relative = TOL
        );
        assert_relative_eq!(Scaling::Sqrt.apply(0.1, 128, 512), 0.2, max_relative = TOL);
        assert_relative_eq!(
            Scaling::Sqrt.apply(0.1, 128, 64),
            0.1 * 0.5f64.sqrt(),
            max_relative = TOL
        );
    }

    #[test]
    fn bad_configs_name_the_field_value_and_range() {
        let cases = [
            (
                ScheduleConfig {
                    gamma: 0.0,
                    ..decay(DecayKind::Step)
                },
                "schedule.gamma = 0: expected a factor in (0, 1]",
            ),
            (
                ScheduleConfig {
                    gamma: 1.5,
                    ..ScheduleConfig::default()
                },
                "schedule.gamma = 1.5: expected a factor in (0, 1]",
            ),
            (
                ScheduleConfig {
                    min_factor: 1.5,
                    ..decay(DecayKind::Cosine)
                },
                "schedule.min_factor = 1.5: expected a fraction of the peak rate in [0, 1]",
            ),
            (
                ScheduleConfig {
                    rate: -0.1,
                    ..decay(DecayKind::Exponential)
                },
                "schedule.rate = -0.1: expected a finite decay rate per step ≥ 0",
            ),
            (
                ScheduleConfig {
                    power: 0.0,
                    ..decay(DecayKind::Polynomial)
                },
                "schedule.power = 0: expected a finite power > 0",
            ),
            (
                ScheduleConfig {
                    t_mult: 0,
                    t0: 10,
                    ..decay(DecayKind::CosineRestarts)
                },
                "schedule.t_mult = 0: expected an integer ≥ 1",
            ),
            (
                ScheduleConfig {
                    horizon: Some(0),
                    ..ScheduleConfig::default()
                },
                "schedule.horizon = 0: expected a positive number of steps",
            ),
            (
                decay(DecayKind::Step),
                "schedule.step_size = 0: expected a positive number of steps for decay = \"step\"",
            ),
            (
                decay(DecayKind::CosineRestarts),
                "schedule.t0 = 0: expected a positive first period for decay = \"cosine_restarts\"",
            ),
            (
                decay(DecayKind::ExponentialRamp),
                "schedule.min_factor = 0: expected a starting factor in (0, 1] for decay = \
                 \"exponential_ramp\"",
            ),
            (
                ScheduleConfig {
                    min_factor: 0.1,
                    horizon: Some(1),
                    ..decay(DecayKind::ExponentialRamp)
                },
                "schedule.horizon = 1: expected at least warmup_steps + 2 = 2 steps for decay = \
                 \"exponential_ramp\" (T is schedule.horizon, else the run's total steps)",
            ),
            (
                ScheduleConfig {
                    warmup_steps: 100,
                    ..decay(DecayKind::Cosine)
                },
                "schedule.warmup_steps = 100: expected fewer than the horizon T = 100 steps for \
                 decay = \"cosine\" (T is schedule.horizon, else the run's total steps)",
            ),
        ];
        for (config, message) in cases {
            assert_eq!(config.build(100).unwrap_err().to_string(), message);
        }
        // A warmup longer than the run is fine for decays without a horizon.
        assert!(
            ScheduleConfig {
                warmup_steps: 500,
                ..ScheduleConfig::default()
            }
            .build(100)
            .is_ok()
        );
    }
}
