//! The `logreg` task: binary logistic regression with a bias, on Gaussian features labelled by
//! a linear teacher.
//!
//! ```text
//!   x ~ N(0, I_dim),  w* ~ N(0, I_dim) (fixed by the seed),  u = w*/|w*|
//!   y = +1 if uᵀx > 0 else −1, flipped with probability label_noise
//!   params = (w, b),  z = wᵀx + b
//!   ℓ = softplus(−y z) = ln(1 + e^{−y z}),  ∇ℓ = −y σ(−y z) (x, 1),  ∇²ℓ = σ(z)σ(−z) (x,1)(x,1)ᵀ
//! ```
//!
//! With `separable`, a point whose margin `|uᵀx|` is below `margin` is rejected and its
//! component along `u` is drawn again, from the same per-sample generator, until it clears the
//! margin:
//!
//! ```text
//!   x = z + (t − uᵀz) u,   z ~ N(0, I),   t ~ N(0, 1) conditioned on |t| ≥ margin
//! ```
//!
//! This has exactly the distribution of rejecting whole points (the component along `u` is
//! independent of the rest), at the cost of one scalar draw per rejection. The data is then
//! linearly separable through the origin by `w*` with margin `margin`.
//!
//! Sample `s` comes from `rng(seed, TrainSample, s)` (evaluation samples from `EvalSample`),
//! the teacher from `rng(seed, TaskFixed, 0)`. The initial parameters are zero.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::error::ensure;
use crate::rng::{Stream, rng};
use crate::task::{BatchStats, Evaluation, Scratch, Task};

/// The largest `dim` accepted (one vector of this size is 80 MB).
const MAX_DIM: usize = 10_000_000;
/// The largest margin accepted: a point is kept with probability `P(|N(0,1)| ≥ margin)`
/// (0.27% at 3), so each sample costs up to a few hundred scalar draws.
const MAX_MARGIN: f64 = 3.0;

/// Settings of the `logreg` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogregConfig {
    /// Number of features; the model has `dim + 1` parameters (weights, then the bias).
    pub dim: usize,
    /// Number of training samples; absent for an infinite stream of fresh samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_size: Option<u64>,
    /// Number of held-out samples `evaluate` averages over.
    pub eval_size: u64,
    /// Make the data linearly separable: points closer than `margin` to the teacher's
    /// hyperplane are resampled.
    pub separable: bool,
    /// Distance `|w*ᵀx| / |w*|` every point keeps from the teacher's hyperplane, when
    /// `separable` (validated always, used only then).
    pub margin: f64,
    /// Probability that a label is flipped (only without `separable`).
    pub label_noise: f64,
    /// Seed of the teacher, the training and the evaluation samples.
    pub seed: u64,
}

impl Default for LogregConfig {
    fn default() -> Self {
        Self {
            dim: 20,
            train_size: Some(4096),
            eval_size: 2048,
            separable: false,
            margin: 0.1,
            label_noise: 0.0,
            seed: 0,
        }
    }
}

impl LogregConfig {
    /// Validates and builds the task.
    pub fn build(&self) -> Result<Logreg, ConfigError> {
        ensure(
            (1..=MAX_DIM).contains(&self.dim),
            "task.dim",
            self.dim,
            &format!("an integer in 1..={MAX_DIM}"),
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
            self.margin > 0.0 && self.margin <= MAX_MARGIN,
            "task.margin",
            self.margin,
            &format!("a number in (0, {MAX_MARGIN}]"),
        )?;
        ensure(
            (0.0..=0.5).contains(&self.label_noise),
            "task.label_noise",
            self.label_noise,
            "a probability in [0, 0.5]",
        )?;
        ensure(
            !self.separable || self.label_noise == 0.0,
            "task.label_noise",
            self.label_noise,
            "0 when task.separable = true (flipped labels would break separability)",
        )?;

        let mut r = rng(self.seed, Stream::TaskFixed, 0);
        let teacher: Vec<f64> = (0..self.dim).map(|_| normal(&mut r)).collect();
        let norm = crate::vec::norm_sq(&teacher).sqrt();
        // |w*| = 0 has probability zero; guard the division all the same.
        let direction = teacher
            .iter()
            .map(|w| w / norm.max(f64::MIN_POSITIVE))
            .collect();
        Ok(Logreg {
            config: self.clone(),
            teacher,
            direction,
        })
    }
}

/// The `logreg` task. See the [module docs](self).
pub struct Logreg {
    config: LogregConfig,
    /// The teacher `w*`.
    teacher: Vec<f64>,
    /// `u = w*/|w*|`.
    direction: Vec<f64>,
}

impl std::fmt::Debug for Logreg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logreg")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The feature buffer this task keeps in a [`Scratch`].
struct Features(Vec<f64>);

fn normal(r: &mut ChaCha8Rng) -> f64 {
    r.sample(StandardNormal)
}

/// `ln(1 + e^a)`, without overflow for large `a` or loss of precision for very negative `a`.
fn softplus(a: f64) -> f64 {
    a.max(0.0) + (-a.abs()).exp().ln_1p()
}

/// `1 / (1 + e^{−a})`, without overflow.
fn sigmoid(a: f64) -> f64 {
    if a >= 0.0 {
        1.0 / (1.0 + (-a).exp())
    } else {
        let e = a.exp();
        e / (1.0 + e)
    }
}

/// What a pass over samples adds up.
#[derive(Default)]
struct Sums {
    loss: f64,
    correct: u64,
}

impl Logreg {
    /// The teacher `w*` (without a bias: its hyperplane goes through the origin). The parameter
    /// vector `(w*, 0)` classifies separable data perfectly.
    pub fn teacher(&self) -> &[f64] {
        &self.teacher
    }

    /// The configuration the task was built from.
    pub fn config(&self) -> &LogregConfig {
        &self.config
    }

    /// Writes sample `index` of `stream`'s features into `x` and returns its label (±1).
    fn draw(&self, stream: Stream, index: u64, x: &mut [f64]) -> f64 {
        let mut r = rng(self.config.seed, stream, index);
        let mut along = 0.0;
        for (x, u) in x.iter_mut().zip(&self.direction) {
            *x = normal(&mut r);
            along += u * *x;
        }
        if self.config.separable && along.abs() < self.config.margin {
            let t = loop {
                let t = normal(&mut r);
                if t.abs() >= self.config.margin {
                    break t;
                }
            };
            crate::vec::axpy(t - along, &self.direction, x);
            along = t;
        }
        let y = if along > 0.0 { 1.0 } else { -1.0 };
        if self.config.label_noise > 0.0 && r.random::<f64>() < self.config.label_noise {
            -y
        } else {
            y
        }
    }

    /// Loss and correct count over `samples` of `stream`, adding the gradient sum to `grad`
    /// if given.
    fn pass(
        &self,
        params: &[f64],
        stream: Stream,
        samples: impl IntoIterator<Item = u64>,
        mut grad: Option<&mut [f64]>,
        scratch: &mut Scratch,
    ) -> Sums {
        let d = self.config.dim;
        assert_eq!(params.len(), d + 1, "logreg: params length");
        let (w, b) = (&params[..d], params[d]);
        let x = &mut scratch.get(|| Features(Vec::new())).0;
        x.resize(d, 0.0);
        let mut sums = Sums::default();
        for s in samples {
            debug_assert!(
                stream != Stream::TrainSample || self.config.train_size.is_none_or(|n| s < n),
                "logreg: sample {s} outside the training set"
            );
            let y = self.draw(stream, s, x);
            let z = crate::vec::dot(w, x) + b;
            sums.loss += softplus(-y * z);
            // Predict +1 iff z > 0, as the labels do.
            if (z > 0.0) == (y > 0.0) {
                sums.correct += 1;
            }
            if let Some(g) = grad.as_deref_mut() {
                let coef = -y * sigmoid(-y * z);
                crate::vec::axpy(coef, x, &mut g[..d]);
                g[d] += coef;
            }
        }
        sums
    }
}

impl Task for Logreg {
    fn name(&self) -> &'static str {
        "logreg"
    }

    fn num_params(&self) -> usize {
        self.config.dim + 1
    }

    /// Zero weights and bias.
    fn init_params(&self) -> Vec<f64> {
        vec![0.0; self.config.dim + 1]
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
        assert_eq!(grad.len(), self.config.dim + 1, "logreg: grad length");
        grad.fill(0.0);
        let s = self.pass(
            params,
            Stream::TrainSample,
            samples.iter().copied(),
            Some(grad),
            scratch,
        );
        BatchStats {
            loss_sum: s.loss,
            correct: Some(s.correct),
            dead_relu: None,
        }
    }

    fn loss(&self, params: &[f64], samples: &[u64], scratch: &mut Scratch) -> BatchStats {
        let s = self.pass(
            params,
            Stream::TrainSample,
            samples.iter().copied(),
            None,
            scratch,
        );
        BatchStats {
            loss_sum: s.loss,
            correct: Some(s.correct),
            dead_relu: None,
        }
    }

    /// Mean loss and accuracy over the `eval_size` held-out samples.
    fn evaluate(&self, params: &[f64], scratch: &mut Scratch) -> Evaluation {
        let n = self.config.eval_size;
        let s = self.pass(params, Stream::EvalSample, 0..n, None, scratch);
        Evaluation {
            loss: s.loss / n as f64,
            accuracy: Some(s.correct as f64 / n as f64),
        }
    }

    /// Exactly `(1/n) Σ_s σ(z_s)σ(−z_s) x̃_s (x̃_sᵀ v)`, `x̃ = (x, 1)`: the Hessian of the mean
    /// training loss over `samples`.
    fn hvp(
        &self,
        params: &[f64],
        samples: &[u64],
        v: &[f64],
        out: &mut [f64],
        scratch: &mut Scratch,
    ) {
        let d = self.config.dim;
        assert_eq!(params.len(), d + 1, "logreg: params length");
        let (w, b) = (&params[..d], params[d]);
        let x = &mut scratch.get(|| Features(Vec::new())).0;
        x.resize(d, 0.0);
        out.fill(0.0);
        for &s in samples {
            self.draw(Stream::TrainSample, s, x);
            let z = crate::vec::dot(w, x) + b;
            let coef = sigmoid(z) * sigmoid(-z) * (crate::vec::dot(x, &v[..d]) + v[d]);
            crate::vec::axpy(coef, x, &mut out[..d]);
            out[d] += coef;
        }
        crate::vec::scale(1.0 / samples.len().max(1) as f64, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::gradient_check_error;
    use crate::tasks::nqm::test_support::{assert_grouping_invariant, rel_diff};

    fn config(dim: usize) -> LogregConfig {
        LogregConfig {
            dim,
            seed: 3,
            ..LogregConfig::default()
        }
    }

    /// A point with all weights distinct and a bias, where `z` takes moderate values.
    fn point(dim: usize) -> Vec<f64> {
        (0..=dim).map(|i| 0.5 * (i as f64 * 0.7).sin()).collect()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Smooth loss with bounded third derivative (|ℓ'''| ≤ 0.1 |x̃|³ ≈ 10 here): truncation
        // error ~ eps² · 10 / 6 ≈ 2e-10, rounding ~ 1e-16 · loss / eps ≈ 1e-10. Tolerance 1e-7.
        for c in [
            config(8),
            LogregConfig {
                label_noise: 0.2,
                ..config(8)
            },
        ] {
            let t = c.build().unwrap();
            let err = gradient_check_error(&t, &point(8), &[0, 5, 77, 4095], 1e-5, 0..9);
            assert!(err < 1e-7, "gradient check error {err}");
        }
        // Far out, where the naive ln(1 + e^a) overflows: the stable forms still agree.
        let t = config(8).build().unwrap();
        let big: Vec<f64> = point(8).iter().map(|p| 200.0 * p).collect();
        let err = gradient_check_error(&t, &big, &[0, 5, 77, 4095], 1e-5, 0..9);
        assert!(err < 1e-6, "gradient check error far out {err}");
        let stats = t.loss(&big, &[0, 5, 77, 4095], &mut Scratch::new());
        assert!(stats.loss_sum.is_finite());
    }

    #[test]
    fn sums_do_not_depend_on_grouping_or_order() {
        let t = LogregConfig {
            separable: true,
            margin: 1.0,
            ..config(8)
        }
        .build()
        .unwrap();
        assert_grouping_invariant(&t, &point(8), &[10, 20, 30, 40, 50, 60, 70]);
        let t = LogregConfig {
            label_noise: 0.3,
            ..config(8)
        }
        .build()
        .unwrap();
        assert_grouping_invariant(&t, &point(8), &[1, 2, 3, 4]);
    }

    #[test]
    fn stable_softplus_and_sigmoid() {
        assert_eq!(softplus(0.0), std::f64::consts::LN_2);
        assert_eq!(softplus(1000.0), 1000.0);
        approx::assert_relative_eq!(softplus(-40.0), (-40.0f64).exp(), max_relative = 1e-15);
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(1000.0), 1.0);
        approx::assert_relative_eq!(sigmoid(-40.0), (-40.0f64).exp(), max_relative = 1e-15);
    }

    #[test]
    fn separable_data_keeps_its_margin_and_the_teacher_classifies_it_perfectly() {
        for margin in [0.1, 1.0, 2.5] {
            let t = LogregConfig {
                separable: true,
                margin,
                ..config(10)
            }
            .build()
            .unwrap();
            let norm = crate::vec::norm_sq(t.teacher()).sqrt();
            let mut x = vec![0.0; 10];
            for s in 0..2000 {
                let y = t.draw(Stream::TrainSample, s, &mut x);
                // y·w*ᵀx/|w*| is t (≥ margin) up to rounding in x = z + (t − uᵀz)u.
                let m = y * crate::vec::dot(t.teacher(), &x) / norm;
                assert!(m >= margin - 1e-12, "margin {margin}: sample {s} has {m}");
            }
            let mut teacher = t.teacher().to_vec();
            teacher.push(0.0);
            let eval = t.evaluate(&teacher, &mut Scratch::new());
            assert_eq!(eval.accuracy, Some(1.0));
            // On the training set as well.
            let samples: Vec<u64> = (0..4096).collect();
            assert_eq!(
                t.loss(&teacher, &samples, &mut Scratch::new()).correct,
                Some(4096)
            );
        }
    }

    #[test]
    fn without_separable_points_come_close_to_the_hyperplane() {
        // P(|N(0,1)| < 0.1) = 0.0797: of 2000 points, about 159 lie inside the margin.
        let t = config(10).build().unwrap();
        let norm = crate::vec::norm_sq(t.teacher()).sqrt();
        let mut x = vec![0.0; 10];
        let inside = (0..2000)
            .filter(|&s| {
                t.draw(Stream::TrainSample, s, &mut x);
                crate::vec::dot(t.teacher(), &x).abs() / norm < 0.1
            })
            .count();
        // Binomial(2000, 0.0797): sd 12.1; 5 sd.
        assert!(
            (inside as f64 - 159.4).abs() < 60.0,
            "{inside} inside the margin"
        );
    }

    #[test]
    fn label_noise_flips_the_stated_fraction() {
        // The teacher misclassifies exactly the flipped labels: accuracy ~ 1 − p.
        // Over 2048 eval samples the accuracy has sd √(p(1−p)/2048) = 0.0088 at p = 0.2.
        let t = LogregConfig {
            label_noise: 0.2,
            ..config(10)
        }
        .build()
        .unwrap();
        let mut teacher = t.teacher().to_vec();
        teacher.push(0.0);
        let acc = t.evaluate(&teacher, &mut Scratch::new()).accuracy.unwrap();
        assert!((acc - 0.8).abs() < 5.0 * 0.0088, "accuracy {acc}");
        // Without noise the teacher is perfect even on non-separable data.
        let t = config(10).build().unwrap();
        assert_eq!(
            t.evaluate(&teacher, &mut Scratch::new()).accuracy,
            Some(1.0)
        );
    }

    #[test]
    fn hvp_matches_central_differences_of_the_gradient() {
        let t = config(6).build().unwrap();
        let p = point(6);
        let v: Vec<f64> = (0..7).map(|i| (i as f64 - 3.0) / 4.0).collect();
        let samples: Vec<u64> = (0..64).collect();
        let (mut exact, mut numeric) = (vec![0.0; 7], vec![0.0; 7]);
        t.hvp(&p, &samples, &v, &mut exact, &mut Scratch::new());
        crate::task::central_difference_hvp(
            &t,
            &p,
            &samples,
            &v,
            &mut numeric,
            &mut Scratch::new(),
        );
        // Step ~1e-4: truncation error ~ eps² |ℓ''''| ≈ 1e-8 relative.
        assert!(
            rel_diff(&exact, &numeric) < 1e-6,
            "{exact:?} vs {numeric:?}"
        );
    }

    #[test]
    fn zero_parameters_give_log_two_per_sample() {
        let t = config(5).build().unwrap();
        assert_eq!(t.num_params(), 6);
        assert_eq!(t.init_params(), vec![0.0; 6]);
        let stats = t.loss(&t.init_params(), &[0, 1, 2], &mut Scratch::new());
        approx::assert_relative_eq!(stats.loss_sum, 3.0 * std::f64::consts::LN_2);
        // z = 0 predicts −1: the samples labelled −1 count as correct.
        let eval = t.evaluate(&t.init_params(), &mut Scratch::new());
        // (A mean of 2048 equal terms: rounding only.)
        approx::assert_relative_eq!(eval.loss, std::f64::consts::LN_2, max_relative = 1e-12);
        assert!((eval.accuracy.unwrap() - 0.5).abs() < 5.0 * 0.011);
    }

    #[test]
    fn bad_configs_are_refused_naming_field_value_and_range() {
        let err = |c: LogregConfig| c.build().unwrap_err().to_string();
        let e = err(LogregConfig {
            dim: 0,
            ..LogregConfig::default()
        });
        assert!(
            e.contains("task.dim = 0") && e.contains("1..=10000000"),
            "{e}"
        );
        let e = err(LogregConfig {
            train_size: Some(0),
            ..LogregConfig::default()
        });
        assert!(e.contains("task.train_size = 0"), "{e}");
        let e = err(LogregConfig {
            eval_size: 0,
            ..LogregConfig::default()
        });
        assert!(e.contains("task.eval_size = 0"), "{e}");
        let e = err(LogregConfig {
            margin: 0.0,
            ..LogregConfig::default()
        });
        assert!(e.contains("task.margin = 0") && e.contains("(0, 3]"), "{e}");
        let e = err(LogregConfig {
            label_noise: 0.7,
            ..LogregConfig::default()
        });
        assert!(
            e.contains("task.label_noise = 0.7") && e.contains("[0, 0.5]"),
            "{e}"
        );
        let e = err(LogregConfig {
            separable: true,
            label_noise: 0.1,
            ..LogregConfig::default()
        });
        assert!(
            e.contains("task.label_noise = 0.1") && e.contains("separable"),
            "{e}"
        );
    }
}
