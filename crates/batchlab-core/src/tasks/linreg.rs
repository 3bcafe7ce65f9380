//! The `linreg` task: linear regression with squared loss on Gaussian features.
//!
//! ```text
//!   x ~ N(0, Λ),  Λ = diag(λ_i),  λ_i = 1 / i^spectrum_power,  i = 1..dim
//!   y = w*ᵀx + σ ε,  ε ~ N(0, 1),  w* ~ N(0, I/dim) (fixed by the seed)
//!   ℓ(w) = ½ (wᵀx − y)²,  ∇ℓ = (wᵀx − y) x,  ∇²ℓ = x xᵀ
//! ```
//!
//! Sample `s` is `(x, y)` drawn from `rng(seed, TrainSample, s)` (evaluation samples from
//! `EvalSample`), the teacher `w*` from `rng(seed, TaskFixed, 0)`.
//!
//! Population closed forms (Gaussian `x`, `e = w − w*`), derived with Isserlis' theorem
//! `E[x xᵀ A x xᵀ] = Λ(A + Aᵀ)Λ + tr(AΛ) Λ`:
//!
//! ```text
//!   G = Λe,  H = Λ,  L = ½ (eᵀΛe + σ²)
//!   Σ = E[g gᵀ] − G Gᵀ = (eᵀΛe + σ²) Λ + Λe eᵀΛ
//!   tr Σ    = (eᵀΛe + σ²) tr Λ  + |Λe|²
//!   tr(HΣ)  = (eᵀΛe + σ²) tr Λ² + eᵀΛ³e
//! ```
//!
//! They are exact for the infinite stream (`train_size` absent), which is the only case where
//! [`Task::closed_form`] returns them. With a finite training set they still hold in expectation
//! over the draw of the set, but not for the set at hand, so the task returns `None`.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::error::ensure;
use crate::rng::{Stream, rng};
use crate::task::{BatchStats, ClosedForm, Evaluation, Scratch, Task};

/// The largest `dim` accepted (one vector of this size is 80 MB).
const MAX_DIM: usize = 10_000_000;
/// The largest spectrum exponent accepted: `λ_dim ≥ dim^-10 ≥ 1e-70`, and `λ³` (in `tr(HΣ)`)
/// stays a normal `f64`.
const MAX_POWER: f64 = 10.0;

/// Settings of the `linreg` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinregConfig {
    /// Number of features (= parameters; there is no bias).
    pub dim: usize,
    /// Exponent of the feature spectrum: the features are `N(0, diag(λ_i))`, `λ_i = 1 / i^p`.
    pub spectrum_power: f64,
    /// Standard deviation `σ` of the label noise: `y = w*ᵀx + σ ε`.
    pub noise: f64,
    /// Number of training samples; absent for an infinite stream of fresh samples (the only
    /// case with closed-form population quantities).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_size: Option<u64>,
    /// Number of held-out samples `evaluate` averages over.
    pub eval_size: u64,
    /// Initial value of every weight.
    pub init: f64,
    /// Seed of the teacher, the training and the evaluation samples.
    pub seed: u64,
}

impl Default for LinregConfig {
    fn default() -> Self {
        Self {
            dim: 100,
            spectrum_power: 1.0,
            noise: 0.5,
            train_size: None,
            eval_size: 4096,
            init: 0.0,
            seed: 0,
        }
    }
}

impl LinregConfig {
    /// Validates and builds the task.
    pub fn build(&self) -> Result<Linreg, ConfigError> {
        ensure(
            (1..=MAX_DIM).contains(&self.dim),
            "task.dim",
            self.dim,
            &format!("an integer in 1..={MAX_DIM}"),
        )?;
        ensure(
            (0.0..=MAX_POWER).contains(&self.spectrum_power),
            "task.spectrum_power",
            self.spectrum_power,
            &format!("a number in [0, {MAX_POWER}]"),
        )?;
        ensure(
            self.noise.is_finite() && self.noise >= 0.0,
            "task.noise",
            self.noise,
            "a finite number ≥ 0",
        )?;
        if let Some(n) = self.train_size {
            ensure(
                n >= 1,
                "task.train_size",
                n,
                "an integer ≥ 1, or absent for an infinite stream",
            )?;
        }
        ensure(
            self.eval_size >= 1,
            "task.eval_size",
            self.eval_size,
            "an integer ≥ 1",
        )?;
        ensure(
            self.init.is_finite(),
            "task.init",
            self.init,
            "a finite number",
        )?;

        let lambda: Vec<f64> = (1..=self.dim)
            .map(|i| (i as f64).powf(-self.spectrum_power))
            .collect();
        let sqrt_lambda = lambda.iter().map(|l| l.sqrt()).collect();
        let scale = 1.0 / (self.dim as f64).sqrt();
        let mut r = rng(self.seed, Stream::TaskFixed, 0);
        let teacher = (0..self.dim).map(|_| scale * normal(&mut r)).collect();
        Ok(Linreg {
            config: self.clone(),
            lambda,
            sqrt_lambda,
            teacher,
        })
    }
}

/// The `linreg` task. See the [module docs](self).
pub struct Linreg {
    config: LinregConfig,
    /// Feature variances `λ_i`.
    lambda: Vec<f64>,
    /// `√λ_i`.
    sqrt_lambda: Vec<f64>,
    /// The teacher `w*`.
    teacher: Vec<f64>,
}

impl std::fmt::Debug for Linreg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linreg")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The feature buffer this task keeps in a [`Scratch`].
struct Features(Vec<f64>);

fn normal(r: &mut ChaCha8Rng) -> f64 {
    r.sample(StandardNormal)
}

impl Linreg {
    /// The teacher `w*`, the minimiser of the population loss.
    pub fn teacher(&self) -> &[f64] {
        &self.teacher
    }

    /// The feature variances `λ_i = 1 / i^spectrum_power` (the population Hessian's diagonal).
    pub fn spectrum(&self) -> &[f64] {
        &self.lambda
    }

    /// The configuration the task was built from.
    pub fn config(&self) -> &LinregConfig {
        &self.config
    }

    /// Writes sample `index` of `stream`'s features into `x` and returns its label.
    fn draw(&self, stream: Stream, index: u64, x: &mut [f64]) -> f64 {
        let mut r = rng(self.config.seed, stream, index);
        let mut teacher_dot = 0.0;
        for ((x, s), w) in x.iter_mut().zip(&self.sqrt_lambda).zip(&self.teacher) {
            *x = s * normal(&mut r);
            teacher_dot += w * *x;
        }
        teacher_dot + self.config.noise * normal(&mut r)
    }

    /// The loss summed over `samples` of `stream`, adding the gradient sum to `grad` if given.
    fn pass(
        &self,
        params: &[f64],
        stream: Stream,
        samples: impl IntoIterator<Item = u64>,
        mut grad: Option<&mut [f64]>,
        scratch: &mut Scratch,
    ) -> f64 {
        assert_eq!(params.len(), self.config.dim, "linreg: params length");
        let x = &mut scratch.get(|| Features(Vec::new())).0;
        x.resize(self.config.dim, 0.0);
        let mut loss_sum = 0.0;
        for s in samples {
            debug_assert!(
                stream != Stream::TrainSample || self.config.train_size.is_none_or(|n| s < n),
                "linreg: sample {s} outside the training set"
            );
            let y = self.draw(stream, s, x);
            let residual = crate::vec::dot(params, x) - y;
            loss_sum += 0.5 * residual * residual;
            if let Some(g) = grad.as_deref_mut() {
                crate::vec::axpy(residual, x, g);
            }
        }
        loss_sum
    }

    /// `e = w − w*`.
    fn error(&self, params: &[f64]) -> Vec<f64> {
        params
            .iter()
            .zip(&self.teacher)
            .map(|(w, t)| w - t)
            .collect()
    }

    /// `Σ λ_i^k e_i²`.
    fn moment(&self, e: &[f64], k: i32) -> f64 {
        self.lambda
            .iter()
            .zip(e)
            .map(|(l, e)| l.powi(k) * e * e)
            .sum()
    }
}

impl Task for Linreg {
    fn name(&self) -> &'static str {
        "linreg"
    }

    fn num_params(&self) -> usize {
        self.config.dim
    }

    fn init_params(&self) -> Vec<f64> {
        vec![self.config.init; self.config.dim]
    }

    fn train_size(&self) -> Option<u64> {
        self.config.train_size
    }

    fn loss_grad(
        &self,
        params: &[f64],
        samples: &[u64],
        grad: &mut [f64],
        scratch: &mut Scratch,
    ) -> BatchStats {
        assert_eq!(grad.len(), self.config.dim, "linreg: grad length");
        grad.fill(0.0);
        let loss_sum = self.pass(
            params,
            Stream::TrainSample,
            samples.iter().copied(),
            Some(grad),
            scratch,
        );
        BatchStats {
            loss_sum,
            correct: None,
            dead_relu: None,
        }
    }

    fn loss(&self, params: &[f64], samples: &[u64], scratch: &mut Scratch) -> BatchStats {
        let loss_sum = self.pass(
            params,
            Stream::TrainSample,
            samples.iter().copied(),
            None,
            scratch,
        );
        BatchStats {
            loss_sum,
            correct: None,
            dead_relu: None,
        }
    }

    /// Mean loss over the `eval_size` held-out samples.
    fn evaluate(&self, params: &[f64], scratch: &mut Scratch) -> Evaluation {
        let n = self.config.eval_size;
        let loss_sum = self.pass(params, Stream::EvalSample, 0..n, None, scratch);
        Evaluation {
            loss: loss_sum / n as f64,
            accuracy: None,
        }
    }

    /// Exactly `(1/n) Σ_s x_s (x_sᵀ v)`: the Hessian of the mean training loss over `samples`
    /// (it does not depend on the parameters). For the infinite stream this is a Monte Carlo
    /// estimate of the population `Λv`, which [`ClosedForm::hessian_vec`] gives exactly.
    fn hvp(
        &self,
        _params: &[f64],
        samples: &[u64],
        v: &[f64],
        out: &mut [f64],
        scratch: &mut Scratch,
    ) {
        let x = &mut scratch.get(|| Features(Vec::new())).0;
        x.resize(self.config.dim, 0.0);
        out.fill(0.0);
        for &s in samples {
            self.draw(Stream::TrainSample, s, x);
            crate::vec::axpy(crate::vec::dot(x, v), x, out);
        }
        crate::vec::scale(1.0 / samples.len().max(1) as f64, out);
    }

    /// The population closed forms, for the infinite stream only (see the [module docs](self)).
    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        match self.config.train_size {
            None => Some(self),
            Some(_) => None,
        }
    }
}

impl ClosedForm for Linreg {
    /// `G = Λe`.
    fn true_gradient(&self, params: &[f64]) -> Vec<f64> {
        let e = self.error(params);
        self.lambda.iter().zip(&e).map(|(l, e)| l * e).collect()
    }

    /// `(eᵀΛe + σ²) tr Λ + |Λe|²`.
    fn trace_sigma(&self, params: &[f64]) -> f64 {
        let e = self.error(params);
        let sigma2 = self.config.noise * self.config.noise;
        let trace: f64 = self.lambda.iter().sum();
        (self.moment(&e, 1) + sigma2) * trace + self.moment(&e, 2)
    }

    /// `(eᵀΛe + σ²) tr Λ² + eᵀΛ³e`.
    fn trace_h_sigma(&self, params: &[f64]) -> f64 {
        let e = self.error(params);
        let sigma2 = self.config.noise * self.config.noise;
        let trace2: f64 = self.lambda.iter().map(|l| l * l).sum();
        (self.moment(&e, 1) + sigma2) * trace2 + self.moment(&e, 3)
    }

    /// `Λv`.
    fn hessian_vec(&self, _params: &[f64], v: &[f64], out: &mut [f64]) {
        for ((o, l), v) in out.iter_mut().zip(&self.lambda).zip(v) {
            *o = l * v;
        }
    }

    /// `½ (eᵀΛe + σ²)`.
    fn population_loss(&self, params: &[f64]) -> f64 {
        let e = self.error(params);
        0.5 * (self.moment(&e, 1) + self.config.noise * self.config.noise)
    }

    /// `max λ_i` (`λ_1 = 1`).
    fn lambda_max(&self, _params: &[f64]) -> Option<f64> {
        Some(
            self.lambda
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::gradient_check_error;
    use crate::tasks::nqm::test_support::{assert_grouping_invariant, rel_diff};

    fn task(dim: usize, train_size: Option<u64>) -> Linreg {
        LinregConfig {
            dim,
            train_size,
            seed: 5,
            ..LinregConfig::default()
        }
        .build()
        .unwrap()
    }

    /// `w* + δ` with `δ_i = 1 − 0.4 i`: far enough from the teacher that the `|Λe|²` term of
    /// `tr Σ` is a sizeable part of it.
    fn point(t: &Linreg) -> Vec<f64> {
        t.teacher()
            .iter()
            .enumerate()
            .map(|(i, w)| w + 1.0 - 0.4 * i as f64)
            .collect()
    }

    #[test]
    fn defaults_and_data_shape() {
        let t = LinregConfig::default().build().unwrap();
        assert_eq!(t.num_params(), 100);
        assert_eq!(t.train_size(), None);
        assert_eq!(t.init_params(), vec![0.0; 100]);
        assert_eq!(t.spectrum()[4], 0.2);
        assert!(t.closed_form().is_some());
        assert!(task(10, Some(64)).closed_form().is_none());
        // The teacher is N(0, I/d): |w*|² ≈ 1 (chi-square / d, sd √(2/d) ≈ 0.14).
        let norm2 = crate::vec::norm_sq(t.teacher());
        assert!((norm2 - 1.0).abs() < 0.6, "|w*|² = {norm2}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Quadratic loss: central differences are exact up to rounding (~1e-16 · loss / eps).
        let t = task(12, Some(100));
        let p = point(&t);
        let err = gradient_check_error(&t, &p, &[0, 7, 42, 99], 1e-5, 0..12);
        assert!(err < 1e-7, "gradient check error {err}");
    }

    #[test]
    fn sums_do_not_depend_on_grouping_or_order() {
        let t = task(12, None);
        assert_grouping_invariant(&t, &point(&t), &[3, 1, 4, 1_000_000_007, 5, 9]);
    }

    #[test]
    fn hvp_is_the_exact_hessian_of_the_mean_training_loss() {
        let t = task(6, Some(50));
        let p = point(&t);
        let v: Vec<f64> = (0..6).map(|i| (i as f64 - 2.5) / 3.0).collect();
        let samples: Vec<u64> = (0..50).collect();
        let (mut exact, mut numeric) = (vec![0.0; 6], vec![0.0; 6]);
        t.hvp(&p, &samples, &v, &mut exact, &mut Scratch::new());
        crate::task::central_difference_hvp(
            &t,
            &p,
            &samples,
            &v,
            &mut numeric,
            &mut Scratch::new(),
        );
        // Quadratic loss: the difference quotient is exact up to rounding.
        assert!(
            rel_diff(&exact, &numeric) < 1e-8,
            "{exact:?} vs {numeric:?}"
        );
    }

    #[test]
    fn closed_forms_at_the_teacher_are_the_noise_floor() {
        // e = 0: G = 0, L = σ²/2, tr Σ = σ² tr Λ, tr(HΣ) = σ² tr Λ². d = 3, p = 1:
        // tr Λ = 1 + 1/2 + 1/3 = 11/6, tr Λ² = 1 + 1/4 + 1/9 = 49/36, σ² = 1/4.
        let t = task(3, None);
        let w = t.teacher().to_vec();
        let cf = t.closed_form().unwrap();
        assert_eq!(cf.true_gradient(&w), vec![0.0; 3]);
        approx::assert_relative_eq!(cf.population_loss(&w), 0.125);
        approx::assert_relative_eq!(cf.trace_sigma(&w), 0.25 * 11.0 / 6.0, max_relative = 1e-14);
        approx::assert_relative_eq!(
            cf.trace_h_sigma(&w),
            0.25 * 49.0 / 36.0,
            max_relative = 1e-14
        );
        assert_eq!(cf.lambda_max(&w), Some(1.0));
    }

    #[test]
    fn monte_carlo_moments_match_the_population_closed_forms() {
        let d = 5;
        let n = 200_000u64;
        let t = task(d, None);
        let w = point(&t);
        let cf = t.closed_form().unwrap();
        let lambda = t.spectrum().to_vec();
        // Per-sample gradients and losses, kept so that the checks below can also estimate
        // their own standard errors (fourth moments are not needed in closed form).
        let mut grads = vec![0.0; d * n as usize];
        let mut losses = vec![0.0; n as usize];
        let mut scratch = Scratch::new();
        for k in 0..n as usize {
            let g = &mut grads[k * d..(k + 1) * d];
            losses[k] = t.loss_grad(&w, &[k as u64], g, &mut scratch).loss_sum;
        }
        let nf = n as f64;
        let mean = |f: &dyn Fn(usize) -> f64| (0..n as usize).map(f).sum::<f64>() / nf;
        let se = |f: &dyn Fn(usize) -> f64, m: f64| {
            ((0..n as usize).map(|k| (f(k) - m).powi(2)).sum::<f64>() / (nf - 1.0) / nf).sqrt()
        };

        // Mean gradient vs G = Λe, per coordinate, 5 standard errors.
        let g_true = cf.true_gradient(&w);
        let mut g_mean = vec![0.0; d];
        for i in 0..d {
            let gi = |k: usize| grads[k * d + i];
            g_mean[i] = mean(&gi);
            let tol = 5.0 * se(&gi, g_mean[i]);
            assert!(
                (g_mean[i] - g_true[i]).abs() < tol,
                "G_{i}: {} vs {} ± {tol}",
                g_mean[i],
                g_true[i]
            );
        }

        // tr Σ and tr(HΣ): the sample mean of q_k = Σ_i a_i (g_ki − ḡ_i)² (a = 1, a = λ) is
        // the trace estimate (up to n/(n−1)); its standard error is that of the mean of q.
        for (name, weights, want) in [
            ("tr Σ", vec![1.0; d], cf.trace_sigma(&w)),
            ("tr HΣ", lambda.clone(), cf.trace_h_sigma(&w)),
        ] {
            let q = |k: usize| {
                (0..d)
                    .map(|i| weights[i] * (grads[k * d + i] - g_mean[i]).powi(2))
                    .sum::<f64>()
            };
            let got = mean(&q) * nf / (nf - 1.0);
            let tol = 5.0 * se(&q, got);
            assert!((got - want).abs() < tol, "{name}: {got} vs {want} ± {tol}");
            assert!(
                (got - want).abs() < 0.03 * want,
                "{name}: {got} vs {want}, > 3%"
            );
            // The test can fail: the Λe eᵀΛ term is well above the tolerance.
            let rank_one = if name == "tr Σ" {
                t.moment(&t.error(&w), 2)
            } else {
                t.moment(&t.error(&w), 3)
            };
            assert!(
                rank_one > 3.0 * tol,
                "{name}: rank-one term {rank_one} vs tol {tol}"
            );
        }

        // Mean loss vs the population loss ½(eᵀΛe + σ²).
        let l = |k: usize| losses[k];
        let got = mean(&l);
        let tol = 5.0 * se(&l, got);
        let want = cf.population_loss(&w);
        assert!((got - want).abs() < tol, "loss {got} vs {want} ± {tol}");
        // ... which is also what evaluation estimates, on other samples (4096 of them).
        let eval = t.evaluate(&w, &mut Scratch::new()).loss;
        let tol = 5.0 * se(&l, got) * (nf / 4096.0).sqrt();
        assert!(
            (eval - want).abs() < tol,
            "eval loss {eval} vs {want} ± {tol}"
        );
    }

    #[test]
    fn bad_configs_are_refused_naming_field_value_and_range() {
        let err = |c: LinregConfig| c.build().unwrap_err().to_string();
        let e = err(LinregConfig {
            dim: 0,
            ..LinregConfig::default()
        });
        assert!(
            e.contains("task.dim = 0") && e.contains("1..=10000000"),
            "{e}"
        );
        let e = err(LinregConfig {
            spectrum_power: 11.0,
            ..LinregConfig::default()
        });
        assert!(
            e.contains("task.spectrum_power = 11") && e.contains("[0, 10]"),
            "{e}"
        );
        let e = err(LinregConfig {
            noise: -1.0,
            ..LinregConfig::default()
        });
        assert!(e.contains("task.noise = -1") && e.contains("≥ 0"), "{e}");
        let e = err(LinregConfig {
            train_size: Some(0),
            ..LinregConfig::default()
        });
        assert!(
            e.contains("task.train_size = 0") && e.contains("infinite"),
            "{e}"
        );
        let e = err(LinregConfig {
            eval_size: 0,
            ..LinregConfig::default()
        });
        assert!(e.contains("task.eval_size = 0") && e.contains("≥ 1"), "{e}");
        let e = err(LinregConfig {
            init: f64::NAN,
            ..LinregConfig::default()
        });
        assert!(e.contains("task.init = NaN"), "{e}");
    }
}
