//! Estimators: gradient noise scale and sharpness. (STUB: to be implemented.)

/// Two-batch estimates at one step (science.md, McCandlish et al. 2018 appendix A).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoBatch {
    /// Unbiased estimate of `|G|²`.
    pub g2: f64,
    /// Unbiased estimate of `tr Σ`.
    pub trace_sigma: f64,
}

/// `|G|²_est` and `S_est` from the small-batch mean squared norm `small_sq` at size `b` and the
/// big-batch squared norm `big_sq` at size `big_b`.
pub fn two_batch(b: f64, small_sq: f64, big_b: f64, big_sq: f64) -> TwoBatch {
    let _ = (b, small_sq, big_b, big_sq);
    unimplemented!()
}

/// `B_simple` as a ratio of two EMAs (never an EMA of ratios).
#[derive(Debug, Clone)]
pub struct NoiseScaleEma {
    _private: (),
}

impl NoiseScaleEma {
    /// EMA with decay `beta` (e.g. 0.95), bias-corrected as Adam does.
    pub fn new(beta: f64) -> Self {
        let _ = beta;
        unimplemented!()
    }
    /// Feeds one step's estimates; returns the current `B_simple`.
    pub fn update(&mut self, est: TwoBatch) -> f64 {
        let _ = est;
        unimplemented!()
    }
}

/// Result of power iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerIteration {
    /// The eigenvalue of largest magnitude (its sign kept).
    pub lambda: f64,
    /// Iterations used.
    pub iterations: usize,
    /// Whether the relative change fell below the tolerance.
    pub converged: bool,
}

/// Power iteration on a symmetric operator given as `hvp(v, out)`, from start vector `v0`.
pub fn power_iteration(
    mut hvp: impl FnMut(&[f64], &mut [f64]),
    v0: Vec<f64>,
    max_iter: usize,
    rel_tol: f64,
) -> PowerIteration {
    let _ = (&mut hvp, v0, max_iter, rel_tol);
    unimplemented!()
}
