//! The `nqm` task: the noisy quadratic model of Zhang et al. (2019), docs/science.md#noisy-quadratic-model.
//!
//! ```text
//!   L(θ)   = ½ Σ_i h_i θ_i²              h_i = 1 / i^power,                i = 1..dim
//!   g_s(θ) = Hθ + ξ_s                    ξ_s,i ~ N(0, c_i),  c_i = noise_scale / i^noise_power
//!   ℓ_s(θ) = ½ θᵀHθ + ξ_sᵀθ             E[ℓ_s] = L,  ∇ℓ_s = g_s,  ∇²ℓ_s = H
//! ```
//!
//! Sample `s` is its noise vector `ξ_s`, drawn coordinate by coordinate from
//! `rng(seed, TrainSample, s)`; the stream is infinite. Evaluation is the exact population loss
//! `L(θ)`, the Hessian is `H` whatever the samples, and every population quantity is known in
//! closed form ([`ClosedForm`]).

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::error::ensure;
use crate::rng::{Stream, rng};
use crate::task::{BatchStats, ClosedForm, Evaluation, Scratch, Task};

/// The largest `dim` accepted (one vector of this size is 80 MB).
const MAX_DIM: usize = 10_000_000;
/// The largest exponent accepted: with `dim ≤ MAX_DIM`, `1/i^10 ≥ 1e-70` stays a normal `f64`,
/// and so do its square and cube, which the closed forms use.
const MAX_POWER: f64 = 10.0;

/// Settings of the `nqm` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NqmConfig {
    /// Number of coordinates `d` (the paper uses 10⁴).
    pub dim: usize,
    /// Curvature exponent `p`: the Hessian is `diag(h_i)`, `h_i = 1 / i^p`, `i = 1..dim`.
    pub power: f64,
    /// Noise exponent `q`: the gradient noise is `N(0, diag(c_i))`, `c_i = noise_scale / i^q`.
    /// Absent: the same as `power`, so that `c_i = noise_scale · h_i` (the paper's `C = H`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_power: Option<f64>,
    /// Noise scale: `c_1`, the noise variance of the first coordinate. 0 makes the gradient exact.
    pub noise_scale: f64,
    /// Initial value of every coordinate: `θ₀ = init · (1, …, 1)`.
    pub init: f64,
    /// Seed of the per-sample noise.
    pub seed: u64,
}

impl Default for NqmConfig {
    fn default() -> Self {
        Self {
            dim: 1000,
            power: 1.0,
            noise_power: None,
            noise_scale: 1.0,
            init: 1.0,
            seed: 0,
        }
    }
}

impl NqmConfig {
    /// Validates and builds the task.
    pub fn build(&self) -> Result<Nqm, ConfigError> {
        ensure(
            (1..=MAX_DIM).contains(&self.dim),
            "task.dim",
            self.dim,
            &format!("an integer in 1..={MAX_DIM}"),
        )?;
        let exponent = format!("a number in [0, {MAX_POWER}]");
        ensure(
            (0.0..=MAX_POWER).contains(&self.power),
            "task.power",
            self.power,
            &exponent,
        )?;
        if let Some(q) = self.noise_power {
            ensure(
                (0.0..=MAX_POWER).contains(&q),
                "task.noise_power",
                q,
                &exponent,
            )?;
        }
        ensure(
            self.noise_scale.is_finite() && self.noise_scale >= 0.0,
            "task.noise_scale",
            self.noise_scale,
            "a finite number ≥ 0",
        )?;
        ensure(
            self.init.is_finite(),
            "task.init",
            self.init,
            "a finite number",
        )?;

        let q = self.noise_power.unwrap_or(self.power);
        let index = || (1..=self.dim).map(|i| i as f64);
        let h: Vec<f64> = index().map(|i| i.powf(-self.power)).collect();
        let c: Vec<f64> = index().map(|i| self.noise_scale * i.powf(-q)).collect();
        let sqrt_c = c.iter().map(|c| c.sqrt()).collect();
        Ok(Nqm {
            config: self.clone(),
            h,
            c,
            sqrt_c,
        })
    }
}

/// The `nqm` task. See the [module docs](self).
pub struct Nqm {
    config: NqmConfig,
    /// Hessian diagonal `h_i`.
    h: Vec<f64>,
    /// Noise variances `c_i`.
    c: Vec<f64>,
    /// `√c_i`, the scale of each noise coordinate.
    sqrt_c: Vec<f64>,
}

impl std::fmt::Debug for Nqm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nqm")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Nqm {
    /// The Hessian diagonal `h_i = 1 / i^power`, `i = 1..dim`.
    pub fn h(&self) -> &[f64] {
        &self.h
    }

    /// The per-sample gradient noise variances `c_i = noise_scale / i^noise_power`.
    pub fn c(&self) -> &[f64] {
        &self.c
    }

    /// The configuration the task was built from.
    pub fn config(&self) -> &NqmConfig {
        &self.config
    }

    /// `½ θᵀHθ`.
    fn quadratic(&self, params: &[f64]) -> f64 {
        0.5 * self
            .h
            .iter()
            .zip(params)
            .map(|(h, p)| h * p * p)
            .sum::<f64>()
    }

    /// The shared pass of [`Task::loss_grad`] and [`Task::loss`]: adds each sample's noise `ξ_s`
    /// to `grad` (when given) and returns `Σ_s ξ_sᵀθ`.
    fn noise_pass(&self, params: &[f64], samples: &[u64], mut grad: Option<&mut [f64]>) -> f64 {
        if self.config.noise_scale == 0.0 {
            return 0.0;
        }
        let mut noise_dot = 0.0;
        for &s in samples {
            let mut r = rng(self.config.seed, Stream::TrainSample, s);
            let mut dot = 0.0;
            match grad.as_deref_mut() {
                Some(g) => {
                    for ((g, sc), p) in g.iter_mut().zip(&self.sqrt_c).zip(params) {
                        let xi = sc * r.sample::<f64, _>(StandardNormal);
                        *g += xi;
                        dot += xi * p;
                    }
                }
                None => {
                    for (sc, p) in self.sqrt_c.iter().zip(params) {
                        dot += sc * r.sample::<f64, _>(StandardNormal) * p;
                    }
                }
            }
            noise_dot += dot;
        }
        noise_dot
    }
}

impl Task for Nqm {
    fn name(&self) -> &'static str {
        "nqm"
    }

    fn num_params(&self) -> usize {
        self.config.dim
    }

    fn init_params(&self) -> Vec<f64> {
        vec![self.config.init; self.config.dim]
    }

    fn train_size(&self) -> Option<u64> {
        None
    }

    fn loss_grad(
        &self,
        params: &[f64],
        samples: &[u64],
        grad: &mut [f64],
        _scratch: &mut Scratch,
    ) -> BatchStats {
        assert_eq!(params.len(), self.config.dim, "nqm: params length");
        assert_eq!(grad.len(), self.config.dim, "nqm: grad length");
        let n = samples.len() as f64;
        for ((g, h), p) in grad.iter_mut().zip(&self.h).zip(params) {
            *g = n * h * p;
        }
        let noise_dot = self.noise_pass(params, samples, Some(grad));
        BatchStats {
            loss_sum: n * self.quadratic(params) + noise_dot,
            correct: None,
            dead_relu: None,
        }
    }

    fn loss(&self, params: &[f64], samples: &[u64], _scratch: &mut Scratch) -> BatchStats {
        assert_eq!(params.len(), self.config.dim, "nqm: params length");
        let n = samples.len() as f64;
        let noise_dot = self.noise_pass(params, samples, None);
        BatchStats {
            loss_sum: n * self.quadratic(params) + noise_dot,
            correct: None,
            dead_relu: None,
        }
    }

    /// The exact population loss `½ Σ h_i θ_i²`.
    fn evaluate(&self, params: &[f64], _scratch: &mut Scratch) -> Evaluation {
        Evaluation {
            loss: self.quadratic(params),
            accuracy: None,
        }
    }

    /// Exactly `Hv`: every sample's Hessian is `H`, so `samples` does not matter.
    fn hvp(&self, params: &[f64], _samples: &[u64], v: &[f64], out: &mut [f64], _: &mut Scratch) {
        self.hessian_vec(params, v, out);
    }

    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        Some(self)
    }
}

impl ClosedForm for Nqm {
    /// `G = Hθ`.
    fn true_gradient(&self, params: &[f64]) -> Vec<f64> {
        self.h.iter().zip(params).map(|(h, p)| h * p).collect()
    }

    /// `tr Σ = Σ c_i` (the noise does not depend on θ).
    fn trace_sigma(&self, _params: &[f64]) -> f64 {
        self.c.iter().sum()
    }

    /// `tr(HΣ) = Σ h_i c_i`.
    fn trace_h_sigma(&self, _params: &[f64]) -> f64 {
        self.h.iter().zip(&self.c).map(|(h, c)| h * c).sum()
    }

    fn hessian_vec(&self, _params: &[f64], v: &[f64], out: &mut [f64]) {
        for ((o, h), v) in out.iter_mut().zip(&self.h).zip(v) {
            *o = h * v;
        }
    }

    /// `½ Σ h_i θ_i²`.
    fn population_loss(&self, params: &[f64]) -> f64 {
        self.quadratic(params)
    }

    /// `max h_i` (`h_1 = 1` for the accepted exponents `power ≥ 0`).
    fn lambda_max(&self, _params: &[f64]) -> Option<f64> {
        Some(self.h.iter().copied().fold(f64::NEG_INFINITY, f64::max))
    }
}

/// Checks shared by the tests of every task in this folder.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::task::{Scratch, Task};

    fn grad(task: &dyn Task, params: &[f64], samples: &[u64], scratch: &mut Scratch) -> Vec<f64> {
        // Start from garbage: `loss_grad` must overwrite, not accumulate.
        let mut g = vec![f64::NAN; params.len()];
        task.loss_grad(params, samples, &mut g, scratch);
        g
    }

    /// `|a − b| / max(|a|, |b|, tiny)` in the Euclidean norm.
    pub(crate) fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
        let diff: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt();
        let scale = crate::vec::norm_sq(a)
            .sqrt()
            .max(crate::vec::norm_sq(b).sqrt())
            .max(1e-300);
        diff / scale
    }

    /// Asserts that sums over samples do not depend on grouping or order, and that one sample's
    /// gradient is the same in any batch (to 1e-12 relative: only the summation order differs).
    /// Needs at least four distinct samples.
    pub(crate) fn assert_grouping_invariant(task: &dyn Task, params: &[f64], samples: &[u64]) {
        assert!(samples.len() >= 4);
        let mut scratch = Scratch::new();
        let (ab, cd) = samples.split_at(samples.len() / 2);
        let all = grad(task, params, samples, &mut scratch);
        let mut parts = grad(task, params, ab, &mut scratch);
        crate::vec::axpy(1.0, &grad(task, params, cd, &mut scratch), &mut parts);
        assert!(
            rel_diff(&all, &parts) < 1e-12,
            "sum over halves differs: {}",
            rel_diff(&all, &parts)
        );

        let reversed: Vec<u64> = samples.iter().rev().copied().collect();
        let rev = grad(task, params, &reversed, &mut scratch);
        assert!(
            rel_diff(&all, &rev) < 1e-12,
            "reversed order differs: {}",
            rel_diff(&all, &rev)
        );

        // The last sample alone, in a fresh scratch, twice: bit-identical.
        let last = *samples.last().unwrap();
        let alone = grad(task, params, &[last], &mut Scratch::new());
        assert_eq!(alone, grad(task, params, &[last], &mut scratch));
        // ... and its contribution inside the batch is the same gradient.
        let mut without = grad(task, params, &samples[..samples.len() - 1], &mut scratch);
        crate::vec::scale(-1.0, &mut without);
        crate::vec::axpy(1.0, &all, &mut without);
        // Relative to the batch sum: the subtraction loses what rounding the sum did.
        let diff: f64 = alone
            .iter()
            .zip(&without)
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
        let err = diff.sqrt() / crate::vec::norm_sq(&all).sqrt().max(1.0);
        assert!(
            err < 1e-12,
            "sample {last} in a batch differs from alone: {err}"
        );

        // The loss pass agrees with the gradient pass.
        let lg = task.loss_grad(params, samples, &mut vec![0.0; params.len()], &mut scratch);
        let l = task.loss(params, samples, &mut scratch);
        assert!((lg.loss_sum - l.loss_sum).abs() <= 1e-12 * lg.loss_sum.abs().max(1.0));
        assert_eq!(lg.correct, l.correct);
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::assert_grouping_invariant;
    use super::*;
    use crate::task::gradient_check_error;

    fn small(dim: usize) -> Nqm {
        NqmConfig {
            dim,
            seed: 11,
            ..NqmConfig::default()
        }
        .build()
        .unwrap()
    }

    /// A point with every coordinate different: θ_i = 1 − 0.3 i (crosses zero, has both signs).
    fn point(dim: usize) -> Vec<f64> {
        (0..dim).map(|i| 1.0 - 0.3 * i as f64).collect()
    }

    #[test]
    fn default_is_the_papers_model_with_c_equal_h() {
        let t = NqmConfig::default().build().unwrap();
        assert_eq!(t.num_params(), 1000);
        assert_eq!(t.h()[0], 1.0);
        assert_eq!(t.h()[3], 0.25);
        assert_eq!(t.h(), t.c());
        assert_eq!(t.init_params(), vec![1.0; 1000]);
        assert_eq!(t.train_size(), None);
        // Separate exponent and scale: c_4 = 2 / 4^2.
        let t = NqmConfig {
            noise_power: Some(2.0),
            noise_scale: 2.0,
            ..NqmConfig::default()
        };
        assert_eq!(t.build().unwrap().c()[3], 0.125);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // The loss is quadratic in θ, so the central difference has no truncation error; the
        // rounding error is ~ 1e-16 · |loss| / eps ≈ 1e-10 here. 1e-7 leaves ample room.
        let t = small(30);
        let err = gradient_check_error(&t, &point(30), &[3, 17, 99, 1_000_000], 1e-5, 0..30);
        assert!(err < 1e-7, "gradient check error {err}");
    }

    #[test]
    fn sums_do_not_depend_on_grouping_or_order() {
        assert_grouping_invariant(&small(30), &point(30), &[5, 2, 900, 41, 7, 123_456]);
    }

    #[test]
    fn hvp_and_closed_forms_are_the_exact_diagonal_ones() {
        let t = NqmConfig {
            dim: 4,
            noise_power: Some(0.0),
            noise_scale: 0.5,
            ..NqmConfig::default()
        }
        .build()
        .unwrap();
        let theta = [2.0, -4.0, 3.0, 8.0];
        let h = [1.0, 0.5, 1.0 / 3.0, 0.25];
        let mut out = [0.0; 4];
        t.hvp(
            &theta,
            &[1, 2],
            &[1.0, 1.0, 3.0, -4.0],
            &mut out,
            &mut Scratch::new(),
        );
        assert_eq!(out, [1.0, 0.5, 1.0, -1.0]);
        let cf = t.closed_form().unwrap();
        assert_eq!(cf.true_gradient(&theta), vec![2.0, -2.0, 1.0, 2.0]);
        assert_eq!(cf.trace_sigma(&theta), 2.0); // 4 · 0.5
        approx::assert_relative_eq!(cf.trace_h_sigma(&theta), 0.5 * h.iter().sum::<f64>());
        // ½ (4 + 16/2 + 9/3 + 64/4) = 15.5
        approx::assert_relative_eq!(cf.population_loss(&theta), 15.5);
        assert_eq!(
            t.evaluate(&theta, &mut Scratch::new()).loss,
            cf.population_loss(&theta)
        );
        assert_eq!(cf.lambda_max(&theta), Some(1.0));
        // B_simple = Σc / Σ h²θ² = 2 / (4 + 4 + 1 + 4).
        approx::assert_relative_eq!(cf.b_simple(&theta), 2.0 / 13.0, max_relative = 1e-14);
    }

    /// Per-sample gradients over `n` fresh samples: their mean, and the per-coordinate sample
    /// variances.
    fn moments(t: &Nqm, theta: &[f64], n: u64) -> (Vec<f64>, Vec<f64>, f64, f64) {
        let d = theta.len();
        let (mut mean, mut m2) = (vec![0.0; d], vec![0.0; d]);
        let (mut loss_mean, mut loss_m2) = (0.0, 0.0);
        let mut g = vec![0.0; d];
        let mut scratch = Scratch::new();
        for k in 0..n {
            let loss = t.loss_grad(theta, &[k], &mut g, &mut scratch).loss_sum;
            // Welford's update: stable for the variance.
            let w = 1.0 / (k + 1) as f64;
            for ((m, s), g) in mean.iter_mut().zip(&mut m2).zip(&g) {
                let delta = g - *m;
                *m += delta * w;
                *s += delta * (g - *m);
            }
            let delta = loss - loss_mean;
            loss_mean += delta * w;
            loss_m2 += delta * (loss - loss_mean);
        }
        let var = m2.iter().map(|s| s / (n - 1) as f64).collect();
        (mean, var, loss_mean, loss_m2 / (n - 1) as f64)
    }

    #[test]
    fn monte_carlo_gradient_mean_and_noise_trace_match_the_closed_forms() {
        let d = 20;
        let n = 20_000u64;
        let t = small(d);
        let theta = point(d);
        let (mean, var, loss_mean, _) = moments(&t, &theta, n);
        // Mean of n draws of N(h_i θ_i, c_i): standard error √(c_i / n). 5 SE per coordinate:
        // a false alarm has probability ~ 20 · 6e-7; a wrong H or wrong noise mean shows up
        // as an offset of many SE.
        for i in 0..d {
            let want = t.h()[i] * theta[i];
            let se = (t.c()[i] / n as f64).sqrt();
            assert!(
                (mean[i] - want).abs() < 5.0 * se,
                "coord {i}: {} vs {want} (se {se})",
                mean[i]
            );
        }
        // Sample variance of Gaussian draws: Var[s²] = 2c²/(n−1), so the trace estimate has
        // SE √(Σ 2c_i² / (n−1)) ≈ 1.3% of Σc here; a wrong variance scale (e.g. c instead of
        // √c as the standard deviation) would be off by tens of SE.
        let trace: f64 = var.iter().sum();
        let want = t.closed_form().unwrap().trace_sigma(&theta);
        let se = (t.c().iter().map(|c| 2.0 * c * c).sum::<f64>() / (n - 1) as f64).sqrt();
        assert!(
            (trace - want).abs() < 5.0 * se,
            "tr Σ {trace} vs {want} (se {se})"
        );
        // The per-sample loss is unbiased: Var[ξᵀθ] = Σ c_i θ_i², SE = √(that / n).
        let want = t.evaluate(&theta, &mut Scratch::new()).loss;
        let se = (t
            .c()
            .iter()
            .zip(&theta)
            .map(|(c, p)| c * p * p)
            .sum::<f64>()
            / n as f64)
            .sqrt();
        assert!(
            (loss_mean - want).abs() < 5.0 * se,
            "mean loss {loss_mean} vs {want} (se {se})"
        );
    }

    #[test]
    fn zero_noise_gives_the_exact_gradient() {
        let t = NqmConfig {
            dim: 3,
            noise_scale: 0.0,
            ..NqmConfig::default()
        }
        .build()
        .unwrap();
        let mut g = [0.0; 3];
        let stats = t.loss_grad(&[1.0, 2.0, 3.0], &[0, 1], &mut g, &mut Scratch::new());
        assert_eq!(g, [2.0, 2.0, 2.0]);
        assert_eq!(stats.loss_sum, 2.0 * 0.5 * (1.0 + 2.0 + 3.0));
    }

    #[test]
    fn bad_configs_are_refused_naming_field_value_and_range() {
        let err = |c: NqmConfig| c.build().unwrap_err().to_string();
        let e = err(NqmConfig {
            dim: 0,
            ..NqmConfig::default()
        });
        assert!(
            e.contains("task.dim = 0") && e.contains("1..=10000000"),
            "{e}"
        );
        let e = err(NqmConfig {
            power: -1.0,
            ..NqmConfig::default()
        });
        assert!(
            e.contains("task.power = -1") && e.contains("[0, 10]"),
            "{e}"
        );
        let e = err(NqmConfig {
            noise_power: Some(f64::NAN),
            ..NqmConfig::default()
        });
        assert!(e.contains("task.noise_power = NaN"), "{e}");
        let e = err(NqmConfig {
            noise_scale: -0.5,
            ..NqmConfig::default()
        });
        assert!(
            e.contains("task.noise_scale = -0.5") && e.contains("≥ 0"),
            "{e}"
        );
        let e = err(NqmConfig {
            init: f64::INFINITY,
            ..NqmConfig::default()
        });
        assert!(e.contains("task.init = inf") && e.contains("finite"), "{e}");
    }
}
