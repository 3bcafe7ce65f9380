//! The [`Task`] contract: a model together with its data.
//!
//! A task answers every question the training loop asks about the loss: the loss and the **sum**
//! of per-sample gradients over any list of sample indices, evaluation on held-out data, and
//! Hessian-vector products. Sample `i`'s data is a pure function of `(data seed, i)`, so a
//! sample's contribution is the same whichever worker computes it and in whichever batch.
//!
//! Parameters and gradients cross this boundary as `f64`. A task may compute internally in
//! `f32` (the MLP does, for speed), converting at the boundary.

use std::any::Any;

/// What one pass over a list of samples measured, besides the gradient.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum over the samples of the per-sample loss.
    pub loss_sum: f64,
    /// Number of samples classified correctly, for classification tasks.
    pub correct: Option<u64>,
    /// Fraction of hidden ReLU units that were zero for every sample of the batch (MLP only).
    pub dead_relu: Option<f64>,
}

/// Held-out evaluation of a parameter vector.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Mean loss. For tasks with a closed-form population loss (NQM) this is that exact loss.
    pub loss: f64,
    /// Fraction classified correctly, for classification tasks.
    pub accuracy: Option<f64>,
}

/// Reusable buffers a task keeps between calls, so that the hot path does not allocate.
///
/// Each caller (a worker thread, a test) owns one; a task stores whatever it needs in it.
#[derive(Default)]
pub struct Scratch {
    slot: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("used", &self.slot.is_some())
            .finish()
    }
}

impl Scratch {
    /// An empty scratch space.
    pub fn new() -> Self {
        Self::default()
    }

    /// The task's buffers of type `T`, created by `init` on first use (or when a different task
    /// used this scratch before).
    pub fn get<T: Any + Send>(&mut self, init: impl FnOnce() -> T) -> &mut T {
        if !self.slot.as_ref().is_some_and(|b| b.is::<T>()) {
            self.slot = Some(Box::new(init()));
        }
        self.slot
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .expect("slot holds a T: set just above")
    }
}

/// Population quantities known in closed form (NQM, linear regression on an infinite stream).
///
/// Tests and reports compare the estimators against these.
pub trait ClosedForm {
    /// The true gradient `G = E[g_i]` at `params`.
    fn true_gradient(&self, params: &[f64]) -> Vec<f64>;
    /// `tr Σ`, the trace of the per-sample gradient covariance at `params`.
    fn trace_sigma(&self, params: &[f64]) -> f64;
    /// `tr(HΣ)` at `params`.
    fn trace_h_sigma(&self, params: &[f64]) -> f64;
    /// The population Hessian times `v`.
    fn hessian_vec(&self, params: &[f64], v: &[f64], out: &mut [f64]);
    /// The population loss at `params`.
    fn population_loss(&self, params: &[f64]) -> f64;
    /// The largest Hessian eigenvalue, where the task knows it exactly.
    fn lambda_max(&self, params: &[f64]) -> Option<f64>;

    /// `B_simple = tr Σ / |G|²` at `params` (docs/science.md#noise-scale).
    fn b_simple(&self, params: &[f64]) -> f64 {
        let g = self.true_gradient(params);
        self.trace_sigma(params) / crate::vec::norm_sq(&g)
    }

    /// `B_noise = tr(HΣ) / (GᵀHG)` at `params` (docs/science.md#optimal-step).
    fn b_noise(&self, params: &[f64]) -> f64 {
        let g = self.true_gradient(params);
        let mut hg = vec![0.0; g.len()];
        self.hessian_vec(params, &g, &mut hg);
        self.trace_h_sigma(params) / crate::vec::dot(&g, &hg)
    }
}

/// A model together with its data. See the [module docs](self).
pub trait Task: Send + Sync {
    /// Short name, as in configs (`nqm`, `linreg`, ...).
    fn name(&self) -> &'static str;

    /// Number of parameters.
    fn num_params(&self) -> usize;

    /// The initial parameters (deterministic: from the task's configuration and seeds).
    fn init_params(&self) -> Vec<f64>;

    /// Number of training samples, or `None` for an infinite stream.
    fn train_size(&self) -> Option<u64>;

    /// Writes into `grad` (overwriting it) the **sum** of the per-sample gradients over
    /// `samples`, and returns the summed loss. `grad.len() == num_params()`.
    fn loss_grad(
        &self,
        params: &[f64],
        samples: &[u64],
        grad: &mut [f64],
        scratch: &mut Scratch,
    ) -> BatchStats;

    /// The gradient's buckets, in the order [`Task::loss_grad_streamed`] finishes them: a
    /// partition of `0..num_params()`. One bucket unless the task computes its gradient in
    /// stages (an MLP's backward pass finishes the last layer first).
    #[allow(clippy::single_range_in_vec_init)] // one bucket: the whole range
    fn buckets(&self) -> Vec<std::ops::Range<usize>> {
        vec![0..self.num_params()]
    }

    /// [`Task::loss_grad`], handing each bucket's range and final values to `ready` as soon as
    /// they are final, in the order of [`Task::buckets`], so that its reduction can start
    /// while the rest is computed. The gradient is the same as `loss_grad`'s, bit for bit.
    fn loss_grad_streamed(
        &self,
        params: &[f64],
        samples: &[u64],
        grad: &mut [f64],
        scratch: &mut Scratch,
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[f64]),
    ) -> BatchStats {
        let stats = self.loss_grad(params, samples, grad, scratch);
        ready(0..grad.len(), grad);
        stats
    }

    /// The summed loss over `samples`, without the gradient.
    fn loss(&self, params: &[f64], samples: &[u64], scratch: &mut Scratch) -> BatchStats;

    /// Evaluation on the task's held-out samples.
    fn evaluate(&self, params: &[f64], scratch: &mut Scratch) -> Evaluation;

    /// Hessian of the **mean** loss over `samples` times `v`, written into `out`.
    ///
    /// The default is the central difference `(∇L(θ+εv) − ∇L(θ−εv)) / 2ε` with
    /// `ε = 1e-4 / max(|v|, 1e-12)`-scaled steps; tasks with an analytic form override it.
    fn hvp(
        &self,
        params: &[f64],
        samples: &[u64],
        v: &[f64],
        out: &mut [f64],
        scratch: &mut Scratch,
    ) {
        central_difference_hvp(self, params, samples, v, out, scratch);
    }

    /// The samples on which sharpness is measured: by default the first
    /// `min(train_size, 2048)` training samples (2048 of the stream for infinite tasks).
    fn curvature_samples(&self) -> Vec<u64> {
        let n = self.train_size().map_or(2048, |n| n.min(2048));
        (0..n).collect()
    }

    /// Closed-form population quantities, where the task has them.
    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        None
    }
}

/// `(∇L(θ+εv) − ∇L(θ−εv)) / 2ε` of the mean loss over `samples`; the default [`Task::hvp`].
pub fn central_difference_hvp<T: Task + ?Sized>(
    task: &T,
    params: &[f64],
    samples: &[u64],
    v: &[f64],
    out: &mut [f64],
    scratch: &mut Scratch,
) {
    let vnorm = crate::vec::norm_sq(v).sqrt().max(1e-12);
    let pnorm = crate::vec::norm_sq(params).sqrt();
    let eps = 1e-4 * (1.0 + pnorm) / vnorm;
    let shifted = |sign: f64| -> Vec<f64> {
        params
            .iter()
            .zip(v)
            .map(|(p, d)| p + sign * eps * d)
            .collect()
    };
    let mut g_minus = vec![0.0; params.len()];
    task.loss_grad(&shifted(1.0), samples, out, scratch);
    task.loss_grad(&shifted(-1.0), samples, &mut g_minus, scratch);
    let scale = 1.0 / (2.0 * eps * samples.len().max(1) as f64);
    for (o, m) in out.iter_mut().zip(&g_minus) {
        *o = (*o - m) * scale;
    }
}

/// The largest error of `task`'s gradient against central finite differences of its loss,
/// over the coordinates `coords`, at `params` over `samples`.
///
/// Each coordinate's error is `|analytic − numeric| / max(1, |analytic|, |numeric|)`, so it is
/// relative for large components and absolute for small ones. Used by every task's tests.
pub fn gradient_check_error<T: Task + ?Sized>(
    task: &T,
    params: &[f64],
    samples: &[u64],
    eps: f64,
    coords: impl IntoIterator<Item = usize>,
) -> f64 {
    let mut scratch = Scratch::new();
    let mut grad = vec![0.0; params.len()];
    task.loss_grad(params, samples, &mut grad, &mut scratch);
    let mut p = params.to_vec();
    let mut worst = 0.0f64;
    for i in coords {
        p[i] = params[i] + eps;
        let up = task.loss(&p, samples, &mut scratch).loss_sum;
        p[i] = params[i] - eps;
        let down = task.loss(&p, samples, &mut scratch).loss_sum;
        p[i] = params[i];
        let numeric = (up - down) / (2.0 * eps);
        let err = (grad[i] - numeric).abs() / 1f64.max(grad[i].abs()).max(numeric.abs());
        worst = worst.max(err);
    }
    worst
}
