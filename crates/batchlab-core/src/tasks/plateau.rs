//! The `plateau` task: `f(x) = Σ_i ln(1 + x_i²)` with additive gradient noise, the landscape
//! on which warmup hurts (docs/science.md#warmup: far away the gradient is tiny, and a small early rate
//! only delays the descent).
//!
//! ```text
//!   f(x)   = Σ ln(1 + x_i²)            ∂_i f = 2x_i / (1 + x_i²)
//!   ℓ_s(x) = f(x) + ξ_sᵀx              ∂_i² f = 2(1 − x_i²) / (1 + x_i²)²   (H is diagonal)
//!   g_s(x) = ∇f(x) + ξ_s,  ξ_s ~ N(0, σ² I)
//!
//!   ∂_i f:  0 ── peak 1 at x=1 ──╮
//!                                ╰── ~2/x far away (the plateau)
//! ```
//!
//! Sample `s` is its noise vector `ξ_s`, drawn from `rng(seed, TrainSample, s)`; the stream is
//! infinite. Evaluation is the exact `f`; the noise is constant in `x`, so every sample's
//! Hessian is `H`, and `Σ = σ² I` at every point.

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::error::ensure;
use crate::rng::{Stream, rng};
use crate::task::{BatchStats, ClosedForm, Evaluation, Scratch, Task};

/// The largest `dim` accepted (one vector of this size is 80 MB).
const MAX_DIM: usize = 10_000_000;

/// Settings of the `plateau` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlateauConfig {
    /// Number of coordinates.
    pub dim: usize,
    /// Initial value of every coordinate (far from 0, the gradient `2x/(1+x²)` is tiny).
    pub init: f64,
    /// Standard deviation `σ` of each coordinate of the per-sample gradient noise.
    pub noise: f64,
    /// Seed of the per-sample noise.
    pub seed: u64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        Self {
            dim: 10,
            init: 10.0,
            noise: 0.1,
            seed: 0,
        }
    }
}

impl PlateauConfig {
    /// Validates and builds the task.
    pub fn build(&self) -> Result<Plateau, ConfigError> {
        ensure(
            (1..=MAX_DIM).contains(&self.dim),
            "task.dim",
            self.dim,
            &format!("an integer in 1..={MAX_DIM}"),
        )?;
        ensure(
            self.init.is_finite(),
            "task.init",
            self.init,
            "a finite number",
        )?;
        ensure(
            self.noise.is_finite() && self.noise >= 0.0,
            "task.noise",
            self.noise,
            "a finite number ≥ 0",
        )?;
        Ok(Plateau {
            config: self.clone(),
        })
    }
}

/// The `plateau` task. See the [module docs](self).
#[derive(Debug)]
pub struct Plateau {
    config: PlateauConfig,
}

/// `ln(1 + x²)`.
fn value(x: f64) -> f64 {
    (x * x).ln_1p()
}

/// `2x / (1 + x²)`.
fn slope(x: f64) -> f64 {
    2.0 * x / (1.0 + x * x)
}

/// `2(1 − x²) / (1 + x²)²`.
fn curvature(x: f64) -> f64 {
    let q = 1.0 + x * x;
    2.0 * (1.0 - x * x) / (q * q)
}

impl Plateau {
    /// The configuration the task was built from.
    pub fn config(&self) -> &PlateauConfig {
        &self.config
    }

    /// The exact `f(x) = Σ ln(1 + x_i²)`.
    pub fn value(&self, params: &[f64]) -> f64 {
        params.iter().map(|&x| value(x)).sum()
    }

    /// The Hessian diagonal `2(1 − x_i²) / (1 + x_i²)²` (the Hessian is diagonal).
    pub fn hessian_diagonal(&self, params: &[f64]) -> Vec<f64> {
        params.iter().map(|&x| curvature(x)).collect()
    }

    /// Adds each sample's noise `ξ_s` to `grad` (when given); returns `Σ_s ξ_sᵀx`.
    fn noise_pass(&self, params: &[f64], samples: &[u64], mut grad: Option<&mut [f64]>) -> f64 {
        let sigma = self.config.noise;
        if sigma == 0.0 {
            return 0.0;
        }
        let mut noise_dot = 0.0;
        for &s in samples {
            let mut r = rng(self.config.seed, Stream::TrainSample, s);
            let mut dot = 0.0;
            match grad.as_deref_mut() {
                Some(g) => {
                    for (g, p) in g.iter_mut().zip(params) {
                        let xi = sigma * r.sample::<f64, _>(StandardNormal);
                        *g += xi;
                        dot += xi * p;
                    }
                }
                None => {
                    for p in params {
                        dot += sigma * r.sample::<f64, _>(StandardNormal) * p;
                    }
                }
            }
            noise_dot += dot;
        }
        noise_dot
    }
}

impl Task for Plateau {
    fn name(&self) -> &'static str {
        "plateau"
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
        assert_eq!(params.len(), self.config.dim, "plateau: params length");
        assert_eq!(grad.len(), self.config.dim, "plateau: grad length");
        let n = samples.len() as f64;
        for (g, &x) in grad.iter_mut().zip(params) {
            *g = n * slope(x);
        }
        let noise_dot = self.noise_pass(params, samples, Some(grad));
        BatchStats {
            loss_sum: n * self.value(params) + noise_dot,
            correct: None,
            dead_relu: None,
        }
    }

    fn loss(&self, params: &[f64], samples: &[u64], _scratch: &mut Scratch) -> BatchStats {
        assert_eq!(params.len(), self.config.dim, "plateau: params length");
        let n = samples.len() as f64;
        let noise_dot = self.noise_pass(params, samples, None);
        BatchStats {
            loss_sum: n * self.value(params) + noise_dot,
            correct: None,
            dead_relu: None,
        }
    }

    /// The exact `f(x)`.
    fn evaluate(&self, params: &[f64], _scratch: &mut Scratch) -> Evaluation {
        Evaluation {
            loss: self.value(params),
            accuracy: None,
        }
    }

    /// Exactly `Hv`, `H = diag(2(1 − x_i²)/(1 + x_i²)²)`, whatever the samples (the noise term
    /// is linear in `x`).
    fn hvp(&self, params: &[f64], _samples: &[u64], v: &[f64], out: &mut [f64], _: &mut Scratch) {
        self.hessian_vec(params, v, out);
    }

    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        Some(self)
    }
}

impl ClosedForm for Plateau {
    /// `∇f = 2x / (1 + x²)`, coordinate-wise.
    fn true_gradient(&self, params: &[f64]) -> Vec<f64> {
        params.iter().map(|&x| slope(x)).collect()
    }

    /// `dim · σ²`.
    fn trace_sigma(&self, _params: &[f64]) -> f64 {
        self.config.dim as f64 * self.config.noise * self.config.noise
    }

    /// `σ² Σ H_ii`.
    fn trace_h_sigma(&self, params: &[f64]) -> f64 {
        let trace_h: f64 = params.iter().map(|&x| curvature(x)).sum();
        self.config.noise * self.config.noise * trace_h
    }

    fn hessian_vec(&self, params: &[f64], v: &[f64], out: &mut [f64]) {
        for ((o, &x), v) in out.iter_mut().zip(params).zip(v) {
            *o = curvature(x) * v;
        }
    }

    /// The exact `f(x)`.
    fn population_loss(&self, params: &[f64]) -> f64 {
        self.value(params)
    }

    /// The largest eigenvalue of the diagonal Hessian: `max_i 2(1 − x_i²)/(1 + x_i²)²`. It is
    /// negative when every `|x_i| > 1` (the plateau is concave there), and at most 2 (at 0).
    fn lambda_max(&self, params: &[f64]) -> Option<f64> {
        Some(
            params
                .iter()
                .map(|&x| curvature(x))
                .fold(f64::NEG_INFINITY, f64::max),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::gradient_check_error;
    use crate::tasks::nqm::test_support::assert_grouping_invariant;

    fn task(dim: usize) -> Plateau {
        PlateauConfig {
            dim,
            seed: 9,
            ..PlateauConfig::default()
        }
        .build()
        .unwrap()
    }

    /// Coordinates on both sides of the inflection points ±1, and on the plateau.
    const POINT: [f64; 6] = [0.0, 0.5, -1.0, 2.0, -7.0, 10.0];

    #[test]
    fn defaults_start_on_the_plateau() {
        let t = PlateauConfig::default().build().unwrap();
        assert_eq!(t.init_params(), vec![10.0; 10]);
        assert_eq!(t.train_size(), None);
        // f = 10 ln 101.
        approx::assert_relative_eq!(
            t.evaluate(&t.init_params(), &mut Scratch::new()).loss,
            10.0 * 101f64.ln()
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // f''' = 4x(x² − 3)/(1 + x²)³ has |f'''| < 3: truncation ≤ eps² · 3/6 ≈ 5e-11 per
        // sample, rounding ~ 1e-16 · loss / eps ≈ 1e-10. Tolerance 1e-7.
        let t = task(6);
        let err = gradient_check_error(&t, &POINT, &[0, 1, 2, 1 << 40], 1e-5, 0..6);
        assert!(err < 1e-7, "gradient check error {err}");
    }

    #[test]
    fn sums_do_not_depend_on_grouping_or_order() {
        assert_grouping_invariant(&task(6), &POINT, &[8, 6, 7, 5, 3, 0, 9]);
    }

    #[test]
    fn hessian_diagonal_matches_finite_differences_of_the_gradient() {
        let t = task(6);
        let eps = 1e-5;
        let mut scratch = Scratch::new();
        let (mut up, mut down) = (vec![0.0; 6], vec![0.0; 6]);
        let diag = t.hessian_diagonal(&POINT);
        for i in 0..6 {
            let mut p = POINT.to_vec();
            p[i] += eps;
            t.loss_grad(&p, &[4], &mut up, &mut scratch);
            p[i] -= 2.0 * eps;
            t.loss_grad(&p, &[4], &mut down, &mut scratch);
            let numeric = (up[i] - down[i]) / (2.0 * eps);
            // |f''''| ≤ 12: truncation ~ eps² · 2 ≈ 2e-10; rounding ~ 1e-16 / eps.
            assert!(
                (numeric - diag[i]).abs() < 1e-8,
                "H_{i}{i}: {numeric} vs {}",
                diag[i]
            );
            // The Hessian is diagonal: the other coordinates of the gradient do not move.
            for j in (0..6).filter(|&j| j != i) {
                assert_eq!(up[j], down[j]);
            }
        }
        let mut out = vec![0.0; 6];
        t.hvp(&POINT, &[1, 2], &[1.0; 6], &mut out, &mut scratch);
        assert_eq!(out, diag);
    }

    #[test]
    fn closed_forms_by_hand() {
        // H_ii = 2(1 − x²)/(1 + x²)²: x = 0 → 2, 0.5 → 0.96, ±1 → 0, 2 → −0.24,
        // −7 → −96/2500, 10 → −198/10201.
        let t = PlateauConfig {
            dim: 6,
            noise: 0.5,
            ..PlateauConfig::default()
        }
        .build()
        .unwrap();
        let want = [2.0, 0.96, 0.0, -0.24, -96.0 / 2500.0, -198.0 / 10201.0];
        for (got, want) in t.hessian_diagonal(&POINT).iter().zip(want) {
            approx::assert_abs_diff_eq!(*got, want, epsilon = 1e-15);
        }
        let cf = t.closed_form().unwrap();
        assert_eq!(cf.lambda_max(&POINT), Some(2.0));
        // On the plateau every direction curves down: λ_max = −198/10201 < 0.
        approx::assert_relative_eq!(cf.lambda_max(&[10.0; 6]).unwrap(), -198.0 / 10201.0);
        // x = 3 → −0.16, −7 → −96/2500, 1.5 → −2.5/3.25²: the least negative wins.
        approx::assert_relative_eq!(cf.lambda_max(&[3.0, -7.0, 1.5]).unwrap(), -96.0 / 2500.0);
        // G = 2x/(1 + x²): 0, 0.8, −1, 0.8, −14/50, 20/101.
        let g = cf.true_gradient(&POINT);
        let g_want = [0.0, 0.8, -1.0, 0.8, -0.28, 20.0 / 101.0];
        for (got, want) in g.iter().zip(g_want) {
            approx::assert_abs_diff_eq!(*got, want, epsilon = 1e-15);
        }
        assert_eq!(cf.trace_sigma(&POINT), 6.0 * 0.25);
        approx::assert_relative_eq!(cf.trace_h_sigma(&POINT), 0.25 * want.iter().sum::<f64>());
        // f = ln 1 + ln 1.25 + ln 2 + ln 5 + ln 50 + ln 101.
        let f = (1.25f64 * 2.0 * 5.0 * 50.0 * 101.0).ln();
        approx::assert_relative_eq!(cf.population_loss(&POINT), f, max_relative = 1e-14);
    }

    #[test]
    fn monte_carlo_gradient_mean_and_noise_trace_match() {
        let n = 20_000u64;
        let t = task(6);
        let sigma2 = 0.01;
        let g_true = t.closed_form().unwrap().true_gradient(&POINT);
        let (mut sum, mut sum_sq) = (vec![0.0; 6], vec![0.0; 6]);
        let mut g = vec![0.0; 6];
        let mut scratch = Scratch::new();
        for s in 0..n {
            t.loss_grad(&POINT, &[s], &mut g, &mut scratch);
            for i in 0..6 {
                // Deviations from the known mean: no cancellation in the variance.
                let dev = g[i] - g_true[i];
                sum[i] += dev;
                sum_sq[i] += dev * dev;
            }
        }
        // Mean deviation per coordinate: SE σ/√n; 5 SE.
        let se = (sigma2 / n as f64).sqrt();
        for (i, s) in sum.iter().enumerate() {
            let mean_dev = s / n as f64;
            assert!(mean_dev.abs() < 5.0 * se, "coord {i}: {mean_dev}");
        }
        // tr Σ = dσ² with the known mean: Var of the estimate = d · 2σ⁴ / n.
        let trace = sum_sq.iter().sum::<f64>() / n as f64;
        let want = t.closed_form().unwrap().trace_sigma(&POINT);
        let se = (6.0 * 2.0 * sigma2 * sigma2 / n as f64).sqrt();
        assert!(
            (trace - want).abs() < 5.0 * se,
            "tr Σ {trace} vs {want} ± {se}"
        );
    }

    #[test]
    fn bad_configs_are_refused_naming_field_value_and_range() {
        let err = |c: PlateauConfig| c.build().unwrap_err().to_string();
        let e = err(PlateauConfig {
            dim: 0,
            ..PlateauConfig::default()
        });
        assert!(
            e.contains("task.dim = 0") && e.contains("1..=10000000"),
            "{e}"
        );
        let e = err(PlateauConfig {
            init: f64::NAN,
            ..PlateauConfig::default()
        });
        assert!(e.contains("task.init = NaN") && e.contains("finite"), "{e}");
        let e = err(PlateauConfig {
            noise: -0.1,
            ..PlateauConfig::default()
        });
        assert!(e.contains("task.noise = -0.1") && e.contains("≥ 0"), "{e}");
    }
}
