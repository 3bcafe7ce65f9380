//! The learning-rate finder (range test): one run whose rate rises exponentially every step;
//! `α*`, the largest rate before the loss blows up; and the sharpness it implies,
//! `λ_max ≈ 2/α*` (docs/science.md#learning-rate-finder).
//!
//! ```text
//!   η_t = η_lo·(η_hi/η_lo)^{t/(T−1)},  t = 0..T−1      schedule decay "exponential_ramp"
//!
//!   loss after the step at η (log)
//!     │ ''--..__                                 ,
//!     │         ''--..__                        /   blow-up: k× the smallest smoothed loss
//!     │                 ''--..___       ___,,-''        among the rates in [η/span, η)
//!     │                          ''---''
//!     └───────────────────────────────────────┬─┬──► η (log)
//!                                             α* └ first blown-up point
//! ```
//!
//! # The points
//!
//! A metrics row describes `θ_t` and the step computed from it, so the loss that answers the
//! step at rate `η_t` is the one measured at row `t + 1`. [`points`] pairs them: point `t` is
//! `(η_t, ℓ(θ_{t+1}))`, "the loss after a step at `η_t`".
//!
//! # The rule ([`find`])
//!
//! 1. Smooth: the centered running median of the losses over `2w + 1` points (`w` =
//!    [`Rule::half_width`], the window shrunk symmetrically at both ends). Where the loss is
//!    monotone over a window the median is the loss itself, so smoothing moves neither the
//!    descent nor the blow-up; it removes excursions shorter than `w + 1` points. By default
//!    ([`Rule::for_ramp`]) `w` is 1% of the ramp, plus 4 times the optimizer's memory beyond
//!    SGD's one step, `4(1/(1 − μ) − 1)` ([`optimizer_memory`]). With SGD the window stays
//!    short, so that a catapult (a spike of a few steps after which a network settles, often
//!    at chance level, as the 784-256-256-10 MLP does) still counts as the blow-up; with
//!    momentum the noise-driven loss swings several-fold over about a memory time near the
//!    edge (on the noisy quadratic with `μ = 0.9` a 5-step window fires at half the edge or
//!    earlier), and a median over a few memory times reads its level instead.
//! 2. Blow-up: the first point whose smoothed loss exceeds `k` ([`Rule::factor`], 4) times the
//!    smallest smoothed loss among the earlier points whose rate lies within a factor `span`
//!    ([`Rule::span`], 2) below its own; or the first non-finite loss; or, when the run itself
//!    stopped on its divergence bound, its last point. A loss that creeps up with the rate (a
//!    noise floor grows like `η`) never rises `k = 4`-fold while the rate doubles; an unstable
//!    mode grows geometrically and does.
//! 3. `α*` is the rate of the point before the blow-up; the suggested rate is
//!    `α* / 10` ([`SUGGESTION_DIVISOR`]), an order of magnitude below the edge, as fastai
//!    suggests a tenth of its reference rate. (The steepest descent of the smoothed loss was
//!    tried: on the noisy quadratic it lands wherever noise makes the curve steepest, anywhere
//!    between `α*/2` and `α*`.)
//!
//! # How far `α*` lies above `2/λ_max`: the ramp's lag
//!
//! On `L = ½hθ²` with full-batch GD, `ℓ_{t+1} = ℓ_t (1 − η_t h)²`: the loss falls while
//! `η_t h < 2` and rises from the first step `m` with `η_m h > 2`. Write `η_m h = 2 r^δ`,
//! `δ ∈ (0, 1]`, `r` = [`Ramp::ratio`]. The smallest loss is point `m − 1`; point `m − 1 + n`
//! has `ℓ_{m+n} = ℓ_m Π_{i<n} (2r^{i+δ} − 1)²`, so the raw rule (`w = 0`) fires at
//! `n* = min{n : Σ_{i<n} 2 ln(2r^{i+δ} − 1) > ln k}` and
//!
//! ```text
//!   α* = η_{m+n*−2} = (2/h)·r^{n*−2+δ}        (needs r^{n*} ≤ span, true for ramps of r < 1.1)
//! ```
//!
//! For small `ln r` and `δ = ½`, `Σ ≈ 2n² ln r`, so `n* ≈ √(ln k / (2 ln r))` and
//! `α*·h/2 ≈ r^{−3/2}·e^{√(ln k·ln r / 2)}` (within a factor `r`: `n*` is an integer).
//! [`quadratic_lag`] computes the exact factor (at `δ = ½`): ×1.07 at `r = 1.0093` (4 decades
//! in 1000 steps, `lr-find`'s default), ×1.08 at `r = 1.0116`, ×1.13 at `r = 1.05`; `2/α*`
//! reads `λ_max` low by as much. A median window (`w ≥ 1`) can only
//! raise the smallest smoothed loss (a median is at least its window's minimum) and equals the
//! loss on the monotone rise, so it can only delay the blow-up; for `w = 1` by at most one step
//! (the smoothed minimum is `min(ℓ_{m−1}, ℓ_{m+1}) ≤ ℓ_m (2r^δ − 1)²`, less than the factor the
//! loss gains in any step after the crossing).
//!
//! On many coordinates two more effects appear. Without noise, the ramp passes `ηh ≈ 1`
//! slowly and all but annihilates the top mode (by `e^{−π²/(4 ln r)}` in amplitude), which then
//! has to regrow from nothing: deterministic GD blows up only near `ηh ≈ 13`. Gradient noise
//! re-injects the mode every step (its stationary variance `ηc/(Bh(2 − ηh))` diverges at the
//! edge), so with SGD noise the blow-up comes within the lag above, and sometimes a little
//! before `2/h` where the top mode's noise dominates the loss. On the noisy quadratic
//! (`d = 100`, `h_i = c_i = 1/i`, `B ≥ 256`, `r ≈ 1.01`) `2/α*` reads `h_max = 1` within 15%.

pub mod study;

use batchlab_core::ConfigError;
use batchlab_core::error::ensure;
use batchlab_core::optim::{OptimizerConfig, OptimizerKind};
use batchlab_core::schedule::{DecayKind, Scaling, ScheduleConfig};
use batchlab_core::train::{RunSummary, Status, StepMetrics, TrainConfig};
use serde::{Deserialize, Serialize};

/// `k`: the rise of the smoothed loss that counts as a blow-up.
pub const BLOWUP_FACTOR: f64 = 4.0;
/// `span`: the rise must happen while the rate grows by less than this factor.
pub const BLOWUP_SPAN: f64 = 2.0;
/// The suggested rate is `α*` divided by this.
pub const SUGGESTION_DIVISOR: f64 = 10.0;
/// The run's own divergence bound during the ramp ([`TrainConfig::divergence_factor`]): far
/// above the finder's `k`, so the run never stops before the rule could fire (the loss the
/// rule compares with is at most the initial one unless the loss rose 25-fold slowly), and an
/// exploding loss passes it within a few steps of the blow-up.
pub const RUN_DIVERGENCE_FACTOR: f64 = 100.0;

/// The ramp as asked for: `T` rates from `lr_min` to `lr_max`, log-spaced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RampConfig {
    /// `η_lo`, the first rate.
    pub lr_min: f64,
    /// `η_hi`, the last rate.
    pub lr_max: f64,
    /// `T`, the number of steps (and rates).
    pub steps: u64,
}

impl RampConfig {
    /// Validates the ramp: `0 < lr_min < lr_max < ∞`, `steps ≥ 2`.
    pub fn build(&self) -> Result<Ramp, ConfigError> {
        ensure(
            self.lr_min.is_finite() && self.lr_min > 0.0,
            "lr_min",
            self.lr_min,
            "a finite rate > 0",
        )?;
        ensure(
            self.lr_max.is_finite() && self.lr_max > self.lr_min,
            "lr_max",
            self.lr_max,
            &format!("a finite rate above lr_min = {}", self.lr_min),
        )?;
        ensure(
            self.steps >= 2,
            "ramp_steps",
            self.steps,
            "at least 2 steps",
        )?;
        Ok(Ramp(*self))
    }
}

/// A validated ramp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp(RampConfig);

impl Ramp {
    /// Its settings.
    pub fn config(&self) -> RampConfig {
        self.0
    }

    /// `r = (η_hi/η_lo)^{1/(T−1)}`: the factor between consecutive rates.
    pub fn ratio(&self) -> f64 {
        (self.0.lr_max / self.0.lr_min).powf(1.0 / (self.0.steps - 1) as f64)
    }

    /// The schedule that makes these rates from the peak `η_hi`: `exponential_ramp` from
    /// `min_factor = η_lo/η_hi` over a horizon of `T` steps, no warmup.
    pub fn schedule(&self) -> ScheduleConfig {
        ScheduleConfig {
            decay: DecayKind::ExponentialRamp,
            min_factor: self.0.lr_min / self.0.lr_max,
            horizon: Some(self.0.steps),
            ..ScheduleConfig::default()
        }
    }

    /// Turns a run's configuration into the range test: peak rate `η_hi` without scaling, this
    /// ramp as the whole schedule (the configured one is replaced), `T` steps, no target, no
    /// stall stop, and the divergence bound [`RUN_DIVERGENCE_FACTOR`] (the finder's own rule
    /// decides where the loss blew up).
    pub fn configure(&self, cfg: &mut TrainConfig) {
        cfg.lr = self.0.lr_max;
        cfg.lr_scaling = Scaling::None;
        cfg.base_batch = None;
        cfg.schedule = self.schedule();
        cfg.steps = self.0.steps;
        cfg.target_loss = None;
        cfg.stop_stalled = false;
        cfg.divergence_factor = RUN_DIVERGENCE_FACTOR;
    }
}

/// The loss after the step taken at `lr`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrPoint {
    /// The step `t` (0-based).
    pub step: u64,
    /// `η_t`, the rate of that step.
    pub lr: f64,
    /// The loss at `θ_{t+1}`, the parameters that step produced.
    pub loss: f64,
}

/// Which loss of a metrics row the finder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossSource {
    /// The held-out loss: use it when every row has one and it is exact (a closed-form
    /// population loss), as the noisy quadratic's training loss can even be negative.
    Eval,
    /// The training minibatch loss.
    Train,
}

/// The finder's points from a run's metrics rows and summary: point `t` is `η_t` of row `t`
/// with the loss of row `t + 1`; the last step's answer is the final evaluation when the run
/// spent its budget (a run that diverged did not apply its last step). Rows without the chosen
/// loss give no point.
pub fn points(rows: &[StepMetrics], source: LossSource, summary: &RunSummary) -> Vec<LrPoint> {
    let loss = |r: &StepMetrics| match source {
        LossSource::Eval => r.eval_loss,
        LossSource::Train => Some(r.train_loss),
    };
    let completed = summary.status != Status::Infeasible && summary.steps == rows.len() as u64;
    let after_last = match source {
        LossSource::Eval if completed => summary.final_eval_loss,
        _ => None,
    };
    let answers = rows.iter().skip(1).map(loss).chain([after_last]);
    rows.iter()
        .zip(answers)
        .filter_map(|(r, l)| {
            l.map(|loss| LrPoint {
                step: r.step,
                lr: r.lr,
                loss,
            })
        })
        .collect()
}

/// The settings of the blow-up rule (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    factor: f64,
    span: f64,
    half_width: usize,
}

impl Rule {
    /// A rule: blow-up at a rise above `factor` while the rate grows less than `span`-fold,
    /// on the running median over `2·half_width + 1` points (0: the raw losses).
    pub fn new(factor: f64, span: f64, half_width: usize) -> Result<Self, ConfigError> {
        ensure(
            factor.is_finite() && factor > 1.0,
            "factor",
            factor,
            "a finite loss ratio > 1",
        )?;
        ensure(span > 1.0, "span", span, "a rate ratio > 1")?;
        Ok(Self {
            factor,
            span,
            half_width,
        })
    }

    /// The default rule for a ramp of `steps` steps and an optimizer that remembers `memory`
    /// steps ([`optimizer_memory`]): `k` = 4, `span` = 2, and a median over `2w + 1` points
    /// with `w = max(1, steps/200) + 4(memory − 1)` (1% of the ramp, and 4 memory times
    /// beyond SGD's one step, rounded).
    pub fn for_ramp(steps: u64, memory: f64) -> Self {
        let by_memory = (4.0 * (memory - 1.0).max(0.0)).round().min(1e9) as u64;
        let half_width = (steps / 200).max(1).saturating_add(by_memory);
        let half_width = usize::try_from(half_width).unwrap_or(usize::MAX);
        Self {
            factor: BLOWUP_FACTOR,
            span: BLOWUP_SPAN,
            half_width,
        }
    }

    /// `k`.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// `span`.
    pub fn span(&self) -> f64 {
        self.span
    }

    /// `w`: the running median spans `2w + 1` points.
    pub fn half_width(&self) -> usize {
        self.half_width
    }
}

/// Why the finder stopped reading the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The smoothed loss rose `k`-fold.
    Rise,
    /// A loss was not finite.
    NonFinite,
    /// The run stopped on its own divergence bound (the last point).
    RunDiverged,
}

/// Where the loss blew up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blowup {
    /// Index of the first blown-up point.
    pub index: usize,
    /// Why it counts as blown up.
    pub cause: Cause,
}

/// What the finder read from a curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The smoothed loss of every point (NaN from the first non-finite loss on).
    pub smoothed: Vec<f64>,
    /// The first blown-up point, if the loss blew up.
    pub blowup: Option<Blowup>,
    /// `α*`: the rate of the point before the blow-up (none if the loss never blew up, or
    /// blew up at the first point).
    pub alpha_star: Option<f64>,
    /// The point with the smallest smoothed loss before the blow-up.
    pub min_index: Option<usize>,
    /// The suggested rate, `α*/10`.
    pub suggestion: Option<f64>,
}

/// A curve the finder cannot read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FindError {
    /// The rule compares loss ratios: losses must be positive.
    #[error(
        "the loss after step {step} is {loss}: expected positive losses (the finder compares \
         ratios; read the held-out loss where the training loss can be ≤ 0)"
    )]
    NonPositiveLoss {
        /// The step.
        step: u64,
        /// Its loss.
        loss: f64,
    },
    /// The rates must not decrease.
    #[error("the rate of step {step} is {lr}, below the one before: expected a rising ramp")]
    Decreasing {
        /// The step.
        step: u64,
        /// Its rate.
        lr: f64,
    },
}

/// The centered running median of `values` over `2w + 1` points, the window shrunk
/// symmetrically near both ends (the first and last values stand alone).
pub fn running_median(values: &[f64], half_width: usize) -> Vec<f64> {
    let n = values.len();
    let mut window = Vec::with_capacity(2 * half_width + 1);
    (0..n)
        .map(|i| {
            let w = half_width.min(i).min(n - 1 - i);
            window.clear();
            window.extend_from_slice(&values[i - w..=i + w]);
            let (_, median, _) = window.select_nth_unstable_by(w, f64::total_cmp);
            *median
        })
        .collect()
}

/// Reads `α*` from a ramp's points (see the [module docs](self) for the rule);
/// `run_diverged`: the run stopped on its own divergence bound after the last point.
pub fn find(points: &[LrPoint], run_diverged: bool, rule: &Rule) -> Result<Finding, FindError> {
    for w in points.windows(2) {
        if w[1].lr < w[0].lr {
            return Err(FindError::Decreasing {
                step: w[1].step,
                lr: w[1].lr,
            });
        }
    }
    let finite = points
        .iter()
        .position(|p| !p.loss.is_finite())
        .unwrap_or(points.len());
    if let Some(p) = points[..finite].iter().find(|p| p.loss <= 0.0) {
        return Err(FindError::NonPositiveLoss {
            step: p.step,
            loss: p.loss,
        });
    }
    let losses: Vec<f64> = points[..finite].iter().map(|p| p.loss).collect();
    let mut smoothed = running_median(&losses, rule.half_width);
    smoothed.resize(points.len(), f64::NAN);

    // The smallest smoothed loss among the points in [η_i/span, η_i), by a sliding-window
    // minimum: `window` holds indices of increasing smoothed loss.
    let mut window = std::collections::VecDeque::new();
    let mut blowup = None;
    for i in 0..finite {
        while window
            .front()
            .is_some_and(|&j: &usize| points[j].lr * rule.span < points[i].lr)
        {
            window.pop_front();
        }
        if let Some(&j) = window.front()
            && smoothed[i] > rule.factor * smoothed[j]
        {
            blowup = Some(Blowup {
                index: i,
                cause: Cause::Rise,
            });
            break;
        }
        while window.back().is_some_and(|&j| smoothed[j] >= smoothed[i]) {
            window.pop_back();
        }
        window.push_back(i);
    }
    if blowup.is_none() {
        blowup = if finite < points.len() {
            Some(Blowup {
                index: finite,
                cause: Cause::NonFinite,
            })
        } else if run_diverged && !points.is_empty() {
            Some(Blowup {
                index: points.len() - 1,
                cause: Cause::RunDiverged,
            })
        } else {
            None
        };
    }
    let end = blowup.map_or(finite, |b| b.index);
    let min_index = (0..end).min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]));
    let alpha_star = blowup
        .and_then(|b| b.index.checked_sub(1))
        .map(|i| points[i].lr);
    Ok(Finding {
        smoothed,
        blowup,
        alpha_star,
        min_index,
        suggestion: alpha_star.map(|a| a / SUGGESTION_DIVISOR),
    })
}

/// `α*·h/2` for full-batch GD on `½hθ²` read by the raw rule (`w = 0`) with rise `factor`:
/// the ramp's lag, `r^{n*−2+δ}` with `n* = min{n : Σ_{i<n} 2 ln(2r^{i+δ} − 1) > ln factor}`
/// (module docs), for a ramp of ratio `ratio > 1` whose first rate above `2/h` is `(2/h)·r^δ`,
/// `δ = offset ∈ (0, 1]`. With `δ = ½`, the middle of the range, it is the factor by which
/// `2/α*` is expected to read `λ_max` low.
pub fn quadratic_lag(ratio: f64, factor: f64, offset: f64) -> f64 {
    debug_assert!(ratio > 1.0 && factor > 1.0 && offset > 0.0 && offset <= 1.0);
    let target = factor.ln();
    let mut sum = 0.0;
    let mut n = 0;
    while sum <= target {
        sum += 2.0 * (2.0 * ratio.powf(n as f64 + offset) - 1.0).ln();
        n += 1;
    }
    ratio.powf(n as f64 - 2.0 + offset)
}

/// The sharpness that `α*` implies for the optimizer, from its stability edge on a quadratic
/// (`docs/science.md#stability`): its name and value.
///
/// - SGD (and Adam, whose edge depends on its preconditioner: the plain-GD formula as a
///   reference): `2/α*`;
/// - heavy ball, PyTorch's `b = μb + (1 − τ)g`, `θ −= ηb` (a heavy ball of rate `η(1 − τ)`):
///   `2(1+μ)/((1−τ)α*)`;
/// - Nesterov: `(2+2μ)/((1+2μ)α*)`.
///
/// Coupled weight decay `wd` (SGD, heavy ball, Nesterov) adds `wd` to every curvature the
/// optimizer descends, so the edge reads `λ_max + wd`: the loss's `λ_max` is the edge's value
/// minus `wd` (the name then ends in ` − wd`). Adam's L2 term is preconditioned and AdamW's
/// decay is decoupled: neither is subtracted.
pub fn edge_sharpness(alpha_star: f64, optimizer: &OptimizerConfig) -> (&'static str, f64) {
    let mu = optimizer.momentum;
    let wd = match optimizer.kind {
        OptimizerKind::Adam | OptimizerKind::Adamw => 0.0,
        _ => optimizer.weight_decay,
    };
    let (names, edge) = match optimizer.kind {
        OptimizerKind::Momentum if mu > 0.0 => (
            ["2(1+μ)/((1−τ)α*)", "2(1+μ)/((1−τ)α*) − wd"],
            2.0 * (1.0 + mu) / ((1.0 - optimizer.dampening) * alpha_star),
        ),
        OptimizerKind::Nesterov => (
            ["(2+2μ)/((1+2μ)α*)", "(2+2μ)/((1+2μ)α*) − wd"],
            (2.0 + 2.0 * mu) / ((1.0 + 2.0 * mu) * alpha_star),
        ),
        _ => (["2/α*", "2/α* − wd"], 2.0 / alpha_star),
    };
    if wd > 0.0 {
        (names[1], edge - wd)
    } else {
        (names[0], edge)
    }
}

/// How many steps the optimizer's update remembers: `1/(1 − μ)` for heavy ball and Nesterov,
/// `1/(1 − β₁)` for Adam(W), 1 for SGD.
pub fn optimizer_memory(optimizer: &OptimizerConfig) -> f64 {
    let decay = match optimizer.kind {
        OptimizerKind::Sgd => 0.0,
        OptimizerKind::Momentum | OptimizerKind::Nesterov => optimizer.momentum,
        OptimizerKind::Adam | OptimizerKind::Adamw => optimizer.beta1,
    };
    1.0 / (1.0 - decay)
}

/// The median of positive rates, in log space: the middle rate itself for an odd count, the
/// geometric mean of the middle two for an even one; `None` for none.
pub fn median_rate(rates: &[f64]) -> Option<f64> {
    batchlab_core::stats::log_median(&batchlab_core::stats::sorted(rates.iter().copied()))
}

#[cfg(test)]
mod tests {
    use approx::assert_relative_eq;
    use batchlab_core::driver::Trainer;
    use batchlab_core::tasks::TaskConfig;
    use batchlab_core::tasks::nqm::NqmConfig;

    use super::*;

    /// Points at rates `r^t` (t = 0..) with the given losses.
    fn curve(ratio: f64, losses: &[f64]) -> Vec<LrPoint> {
        losses
            .iter()
            .enumerate()
            .map(|(t, &loss)| LrPoint {
                step: t as u64,
                lr: ratio.powi(t as i32),
                loss,
            })
            .collect()
    }

    fn raw() -> Rule {
        Rule::new(4.0, 2.0, 0).unwrap()
    }

    #[test]
    fn the_rate_before_a_fourfold_rise_is_alpha_star() {
        // Falls to 1 at point 3, then 2, 3.9 (not yet 4×), 4.1: blow-up at point 6.
        let p = curve(1.1, &[8.0, 4.0, 2.0, 1.0, 2.0, 3.9, 4.1, 100.0]);
        let f = find(&p, false, &raw()).unwrap();
        assert_eq!(
            f.blowup,
            Some(Blowup {
                index: 6,
                cause: Cause::Rise
            })
        );
        assert_eq!(f.alpha_star, Some(p[5].lr));
        assert_eq!(f.min_index, Some(3));
        assert_relative_eq!(f.suggestion.unwrap(), p[5].lr / 10.0);
    }

    #[test]
    fn a_single_spike_is_smoothed_away_and_a_sustained_rise_is_not() {
        let mut losses = vec![1.0; 40];
        losses[10] = 50.0; // one noisy batch
        for (k, l) in losses[30..].iter_mut().enumerate() {
            *l = 2f64.powi(k as i32 + 1); // 2, 4, 8, …: unstable
        }
        let p = curve(1.01, &losses);
        assert_eq!(find(&p, false, &raw()).unwrap().blowup.unwrap().index, 10);
        let f = find(&p, false, &Rule::new(4.0, 2.0, 1).unwrap()).unwrap();
        // Point 31 is 4 (not above 4×1), point 32 is 8.
        assert_eq!(f.blowup.unwrap().index, 32);
        assert_eq!(f.smoothed[10], 1.0);
        assert_eq!(f.alpha_star, Some(p[31].lr));
    }

    #[test]
    fn a_slow_rise_with_the_rate_is_not_a_blowup() {
        // A noise floor ∝ η: 1.4-fold per doubling of the rate (η^0.5) never rises 4-fold
        // within a factor 2 of rates, even across 6 decades; the best-so-far rule would fire.
        let ratio = 1.05f64;
        let losses: Vec<f64> = (0..300).map(|t| ratio.powf(0.5 * t as f64)).collect();
        let p = curve(ratio, &losses);
        assert_eq!(find(&p, false, &raw()).unwrap().blowup, None);
        let wide = Rule::new(4.0, 1e12, 0).unwrap();
        assert!(find(&p, false, &wide).unwrap().blowup.is_some());
    }

    #[test]
    fn non_finite_losses_and_a_diverged_run_end_the_curve() {
        let p = curve(1.1, &[3.0, 2.0, 1.5, f64::NAN, 1.0]);
        let f = find(&p, false, &raw()).unwrap();
        assert_eq!(
            f.blowup,
            Some(Blowup {
                index: 3,
                cause: Cause::NonFinite
            })
        );
        assert_eq!(f.alpha_star, Some(p[2].lr));
        assert!(f.smoothed[3].is_nan() && f.smoothed[4].is_nan());

        let p = curve(1.1, &[3.0, 2.0, 2.5]);
        assert_eq!(find(&p, false, &raw()).unwrap().blowup, None);
        let f = find(&p, true, &raw()).unwrap();
        assert_eq!(f.blowup.unwrap().cause, Cause::RunDiverged);
        assert_eq!(f.alpha_star, Some(p[1].lr));

        // Blown up at the first point: no rate before it.
        let p = curve(1.1, &[f64::INFINITY]);
        let f = find(&p, false, &raw()).unwrap();
        assert_eq!((f.blowup.unwrap().index, f.alpha_star), (0, None));
        assert_eq!(find(&[], true, &raw()).unwrap().blowup, None);
    }

    #[test]
    fn curves_the_rule_cannot_read_are_refused() {
        let p = curve(1.1, &[1.0, 0.5, -0.1]);
        assert_eq!(
            find(&p, false, &raw()).unwrap_err().to_string(),
            "the loss after step 2 is -0.1: expected positive losses (the finder compares \
             ratios; read the held-out loss where the training loss can be ≤ 0)"
        );
        let mut p = curve(1.1, &[1.0, 0.5, 0.3]);
        p[2].lr = 0.5;
        assert_eq!(
            find(&p, false, &raw()).unwrap_err(),
            FindError::Decreasing { step: 2, lr: 0.5 }
        );
        assert_eq!(
            Rule::new(1.0, 2.0, 0).unwrap_err().to_string(),
            "factor = 1: expected a finite loss ratio > 1"
        );
    }

    #[test]
    fn bad_ramps_name_the_value_and_what_is_accepted() {
        let ramp = |lr_min, lr_max, steps| {
            RampConfig {
                lr_min,
                lr_max,
                steps,
            }
            .build()
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            ramp(0.0, 1.0, 10),
            Err("lr_min = 0: expected a finite rate > 0".into())
        );
        assert_eq!(
            ramp(1.0, 0.5, 10),
            Err("lr_max = 0.5: expected a finite rate above lr_min = 1".into())
        );
        assert_eq!(
            ramp(0.1, 1.0, 1),
            Err("ramp_steps = 1: expected at least 2 steps".into())
        );
        assert_eq!(ramp(0.1, 1.0, 2), Ok(()));
    }

    #[test]
    fn the_running_median_keeps_monotone_stretches_and_shrinks_at_the_ends() {
        let v = [5.0, 4.0, 9.0, 3.0, 2.0, 1.0, 2.0, 4.0];
        assert_eq!(
            running_median(&v, 1),
            [5.0, 5.0, 4.0, 3.0, 2.0, 2.0, 2.0, 4.0]
        );
        assert_eq!(running_median(&v, 0), v);
        // w = 2: windows of 1, 3, 5, 5, 5, 5, 3, 1 points.
        assert_eq!(
            running_median(&v, 2),
            [5.0, 5.0, 4.0, 3.0, 2.0, 2.0, 2.0, 4.0]
        );
        assert_eq!(running_median(&[], 3), Vec::<f64>::new());
    }

    #[test]
    fn points_pair_each_rate_with_the_loss_its_step_produced() {
        let row = |step: u64, lr: f64, train: f64, eval: Option<f64>| StepMetrics {
            step,
            lr,
            train_loss: train,
            eval_loss: eval,
            ..StepMetrics::default()
        };
        let rows = [
            row(0, 0.1, 10.0, Some(9.0)),
            row(1, 0.2, 8.0, Some(7.0)),
            row(2, 0.4, 6.0, Some(5.0)),
        ];
        let mut summary = RunSummary {
            status: Status::Incomplete,
            steps: 3,
            samples: 0,
            message: String::new(),
            batch: 1,
            micro: 1,
            peak_lr: 0.4,
            final_eval_loss: Some(3.0),
            final_eval_accuracy: None,
            final_train_loss: None,
            final_b_simple: None,
            last_sharpness: None,
            final_b_simple_exact: None,
            final_b_noise_exact: None,
            params_digest: String::new(),
        };
        let pairs = |source, summary: &RunSummary| -> Vec<(f64, f64)> {
            points(&rows, source, summary)
                .iter()
                .map(|p| (p.lr, p.loss))
                .collect()
        };
        // The budget was spent: the last step's answer is the final evaluation.
        assert_eq!(
            pairs(LossSource::Eval, &summary),
            [(0.1, 7.0), (0.2, 5.0), (0.4, 3.0)]
        );
        assert_eq!(pairs(LossSource::Train, &summary), [(0.1, 8.0), (0.2, 6.0)]);
        // Diverged at row 2: its update was not applied, and nothing answers it.
        summary.status = Status::Infeasible;
        summary.steps = 2;
        assert_eq!(pairs(LossSource::Eval, &summary), [(0.1, 7.0), (0.2, 5.0)]);
    }

    /// The closed form of the module docs: `n*` by its definition, then `α*·h/2`.
    fn lag_by_hand(ratio: f64, k: f64, delta: f64) -> f64 {
        let mut growth = 1.0;
        let mut n = 0;
        while growth <= k {
            growth *= (2.0 * ratio.powf(n as f64 + delta) - 1.0).powi(2);
            n += 1;
        }
        ratio.powf(n as f64 - 2.0 + delta)
    }

    #[test]
    fn the_lag_on_a_quadratic_matches_the_hand_computation() {
        // r = 1.05, δ = ½, k = 4: the loss gains (2·1.05^{i+½} − 1)² per step,
        // 1.10122, 1.32678, 1.58622, 1.88356; cumulative 1.10, 1.46, 2.32, 4.37 > 4: n* = 4,
        // α*·h/2 = 1.05^{2.5} = 1.129726.
        assert_relative_eq!(quadratic_lag(1.05, 4.0, 0.5), 1.05f64.powf(2.5));
        assert_relative_eq!(1.05f64.powf(2.5), 1.129_726, max_relative = 1e-6);
        for delta in [0.05, 0.3, 0.5, 0.8, 1.0] {
            for ratio in [1.003, 1.0116, 1.05] {
                assert_relative_eq!(
                    quadratic_lag(ratio, 4.0, delta),
                    lag_by_hand(ratio, 4.0, delta),
                    max_relative = 1e-12
                );
            }
        }
        // ≈ r^{−3/2}·e^{√(ln k · ln r / 2)} for small ln r (within the discreteness, one ratio).
        let r = 1.0116f64;
        let approx = (4f64.ln() * r.ln() / 2.0).sqrt().exp() / r.powf(1.5);
        let lag = quadratic_lag(r, 4.0, 0.5);
        assert!(lag / approx < r && approx / lag < r, "{lag} vs {approx}");
    }

    /// Full-batch GD on `½θ²` (the noisy quadratic with one coordinate and no noise, h = 1)
    /// through the real training loop, with the ramp placed so that `η_m = 2·r^δ`.
    fn gd_on_a_quadratic(ratio: f64, delta: f64) -> (Vec<LrPoint>, RunSummary) {
        // 2 = η_lo·r^{m−δ} with m = 100: the crossing lies δ of a ratio before point 100. The
        // ramp goes on to r^{200}·2 so that the annihilated mode regrows past the run's bound.
        let steps = 300;
        let lr_min = 2.0 / ratio.powf(100.0 - delta);
        let ramp = RampConfig {
            lr_min,
            lr_max: lr_min * ratio.powi(steps as i32 - 1),
            steps,
        }
        .build()
        .unwrap();
        assert_relative_eq!(ramp.ratio(), ratio, max_relative = 1e-12);
        let mut cfg = TrainConfig {
            task: TaskConfig::Nqm(NqmConfig {
                dim: 1,
                noise_scale: 0.0,
                ..NqmConfig::default()
            }),
            batch: 1,
            eval_every: 1,
            ..TrainConfig::default()
        };
        ramp.configure(&mut cfg);
        let plan = cfg.build().unwrap();
        let mut rows = Vec::new();
        let summary = Trainer::new(&plan).run(|r| rows.push(r.clone()));
        (points(&rows, LossSource::Eval, &summary), summary)
    }

    #[test]
    fn on_a_quadratic_alpha_star_is_the_closed_form_lag_above_two_over_h() {
        for ratio in [1.02, 1.05] {
            for delta in [0.1, 0.5, 0.9] {
                let (p, summary) = gd_on_a_quadratic(ratio, delta);
                let f = find(&p, summary.status == Status::Infeasible, &raw()).unwrap();
                let alpha = f.alpha_star.expect("blew up");
                assert_eq!(f.blowup.unwrap().cause, Cause::Rise);
                // Exact up to the rounding of the rates: α* = (2/h)·r^{n*−2+δ}, h = 1.
                assert_relative_eq!(
                    alpha / 2.0,
                    lag_by_hand(ratio, 4.0, delta),
                    max_relative = 1e-9
                );
                // The minimum is the step before the first rate above 2/h.
                assert_relative_eq!(
                    p[f.min_index.unwrap()].lr,
                    2.0 / ratio.powf(1.0 - delta),
                    max_relative = 1e-9
                );
                // The run went on to its own bound, well after the rule fired.
                assert_eq!(summary.status, Status::Infeasible);
                assert!(f.blowup.unwrap().index + 2 < p.len());
                // The default median (w = 1) delays it by at most one step.
                let smoothed = find(&p, true, &Rule::new(4.0, 2.0, 1).unwrap()).unwrap();
                let ratio_found = smoothed.alpha_star.unwrap() / alpha;
                assert!(
                    (ratio_found - 1.0).abs() < 1e-12 || (ratio_found / ratio - 1.0).abs() < 1e-9,
                    "r = {ratio}, δ = {delta}: smoothed α* / raw α* = {ratio_found}"
                );
            }
        }
    }

    #[test]
    fn the_ramp_configures_the_run_and_its_schedule_makes_the_rates() {
        let ramp = RampConfig {
            lr_min: 1e-3,
            lr_max: 10.0,
            steps: 5,
        }
        .build()
        .unwrap();
        assert_relative_eq!(ramp.ratio(), 10.0, max_relative = 1e-14);
        let mut cfg = TrainConfig {
            target_loss: Some(0.1),
            lr_scaling: Scaling::Linear,
            base_batch: Some(8),
            divergence_factor: 2.0,
            ..TrainConfig::default()
        };
        ramp.configure(&mut cfg);
        let plan = cfg.build().unwrap();
        assert_eq!(plan.peak_lr, 10.0);
        let mut rates = Vec::new();
        Trainer::new(&plan).run(|r| rates.push(r.lr));
        // numpy: 1e-3 * 10.0 ** np.arange(5)
        let want = [1e-3, 1e-2, 1e-1, 1.0, 10.0];
        assert_eq!(rates.len(), 5);
        for (got, want) in rates.iter().zip(want) {
            assert_relative_eq!(*got, want, max_relative = 1e-14);
        }
        assert_eq!(cfg.target_loss, None);
        assert_eq!(cfg.divergence_factor, RUN_DIVERGENCE_FACTOR);
    }

    #[test]
    fn edges_per_optimizer_follow_science_md() {
        let opt = |kind, momentum, dampening| OptimizerConfig {
            kind,
            momentum,
            dampening,
            ..OptimizerConfig::default()
        };
        let sgd = edge_sharpness(0.5, &opt(OptimizerKind::Sgd, 0.9, 0.0));
        assert_eq!(sgd, ("2/α*", 4.0));
        let hb = edge_sharpness(0.5, &opt(OptimizerKind::Momentum, 0.9, 0.0));
        assert_relative_eq!(hb.1, 2.0 * 1.9 / 0.5);
        let damped = edge_sharpness(0.5, &opt(OptimizerKind::Momentum, 0.5, 0.5));
        assert_relative_eq!(damped.1, 2.0 * 1.5 / (0.5 * 0.5));
        let nesterov = edge_sharpness(0.5, &opt(OptimizerKind::Nesterov, 0.5, 0.0));
        assert_relative_eq!(nesterov.1, 3.0 / (2.0 * 0.5));
        assert_eq!(
            edge_sharpness(0.5, &opt(OptimizerKind::Momentum, 0.0, 0.0)).0,
            "2/α*"
        );
    }

    /// GD with coupled weight decay on `½λθ²` iterates `θ ← (1 − η(λ + wd))θ`: it diverges from
    /// `η = 2/(λ + wd)`, so an `α*` at that edge must give back the loss's `λ`, not `λ + wd`.
    #[test]
    fn coupled_weight_decay_is_taken_out_of_the_edge_sharpness() {
        let opt = |kind, momentum, dampening| OptimizerConfig {
            kind,
            momentum,
            dampening,
            ..OptimizerConfig::default()
        };
        let (lambda, wd) = (3.0, 0.5);
        let mut sgd = opt(OptimizerKind::Sgd, 0.0, 0.0);
        sgd.weight_decay = wd;
        let (name, value) = edge_sharpness(2.0 / (lambda + wd), &sgd);
        assert_eq!(name, "2/α* − wd");
        assert_relative_eq!(value, lambda, max_relative = 1e-12);
        let mut hb = opt(OptimizerKind::Momentum, 0.9, 0.0);
        hb.weight_decay = wd;
        let (_, value) = edge_sharpness(2.0 * 1.9 / (lambda + wd), &hb);
        assert_relative_eq!(value, lambda, max_relative = 1e-12);
        // AdamW's decoupled decay is not subtracted.
        let mut adamw = opt(OptimizerKind::Adamw, 0.0, 0.0);
        adamw.weight_decay = wd;
        assert_eq!(edge_sharpness(0.5, &adamw), ("2/α*", 4.0));
    }

    #[test]
    fn the_default_window_spans_one_percent_of_the_ramp_and_four_extra_memory_times() {
        let sgd = OptimizerConfig::default();
        assert_eq!(optimizer_memory(&sgd), 1.0);
        let hb = OptimizerConfig {
            kind: OptimizerKind::Momentum,
            momentum: 0.9,
            ..OptimizerConfig::default()
        };
        assert_relative_eq!(optimizer_memory(&hb), 10.0, max_relative = 1e-12);
        let adam = OptimizerConfig {
            kind: OptimizerKind::Adam,
            beta1: 0.5,
            ..OptimizerConfig::default()
        };
        assert_eq!(optimizer_memory(&adam), 2.0);
        assert_eq!(Rule::for_ramp(1000, 1.0).half_width(), 5);
        assert_eq!(Rule::for_ramp(400, 1.0).half_width(), 2);
        assert_eq!(Rule::for_ramp(100, 1.0).half_width(), 1);
        assert_eq!(
            Rule::for_ramp(1000, optimizer_memory(&hb)).half_width(),
            5 + 36
        );
        assert_eq!(Rule::for_ramp(100_000, 2.0).half_width(), 504);
        let r = Rule::for_ramp(10, 1.0);
        assert_eq!((r.factor(), r.span()), (BLOWUP_FACTOR, BLOWUP_SPAN));
    }

    #[test]
    fn the_median_rate_is_taken_in_log_space() {
        assert_eq!(median_rate(&[]), None);
        assert_eq!(median_rate(&[3.0, 1.0, 100.0]), Some(3.0));
        assert_relative_eq!(median_rate(&[1.0, 4.0]).unwrap(), 2.0);
    }
}
