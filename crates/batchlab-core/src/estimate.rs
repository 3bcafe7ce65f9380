//! Estimators: gradient noise scale and sharpness.
//!
//! All formulas are those of `docs/science.md`; symbols: `b` a small batch (a microbatch, a
//! worker's shard), `B` the global batch, `|g_b|²` the squared norm of a `b`-sample mean
//! gradient, `E|g_b|² = |G|² + tr Σ · κ(b)` with `κ(b) = 1/b` on an infinite stream and
//! `(N − b)/(b(N − 1))` without replacement from `N` samples ([`kappa`]).
//!
//! - [`two_batch`]: the unbiased two-size estimates of `|G|²` and `tr Σ` at one step.
//! - [`NoiseScaleEma`]: `B_simple` as a ratio of two bias-corrected EMAs.
//! - [`regress_noise`]: least squares of `|g_j|²` on `1/b_j` for groups of several sizes, and
//!   [`PrefixNorms`], which records the nested prefix norms of one global batch for it.
//! - [`lanczos_extremes`]: sharpness `λ_max` and the most negative eigenvalue `λ_min` from
//!   Hessian-vector products; [`power_iteration`] / [`top_eigenvalue`], the simpler methods.
//!
//! ```text
//!   |g_b|²  ^
//!           |  *                    slope     = tr Σ
//!           |     *                 intercept = |G|²
//!           |        *
//!           |           *  (1/B, |g_B|²)
//!    |G|²  -+--------------------------> 1/b
//! ```

use serde::{Deserialize, Serialize};

use crate::vec::{dot, norm_sq, scale};

/// Two-batch estimates at one step (docs/science.md#two-batch-estimator, McCandlish et al. 2018 appendix A).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoBatch {
    /// Unbiased estimate of `|G|²`.
    pub g2: f64,
    /// Unbiased estimate of `tr Σ`.
    pub trace_sigma: f64,
}

impl TwoBatch {
    /// Whether both estimates are finite (they are not when `b ≥ B`, see [`two_batch`]).
    pub fn is_finite(&self) -> bool {
        self.g2.is_finite() && self.trace_sigma.is_finite()
    }
}

/// `κ(b)`, the factor of `tr Σ` in `E|g_b|² = |G|² + tr Σ · κ(b)` for a `b`-sample mean
/// gradient (`docs/science.md#finite-data`):
///
/// ```text
///   infinite stream (population None):            κ(b) = 1/b
///   without replacement from N samples (Some(N)):  κ(b) = (N − b) / (b (N − 1))
/// ```
///
/// with `Σ` the population covariance (divisor `N`) of the per-sample gradients. `κ(N) = 0`:
/// a batch of the whole training set is its exact gradient. NaN for `b ≤ 0` or `b > N` (a
/// batch larger than the training set repeats samples; no estimate is made from it).
pub fn kappa(b: f64, population: Option<u64>) -> f64 {
    match population {
        None => 1.0 / b,
        Some(n) => {
            let n = n as f64;
            if !(b > 0.0 && b <= n) {
                f64::NAN
            } else if n <= 1.0 {
                0.0
            } else {
                (n - b) / (b * (n - 1.0))
            }
        }
    }
}

/// `|G|²_est` and `S_est` from the small-batch mean squared norm `small_sq` at size `b` and the
/// big-batch squared norm `big_sq` at size `big_b`, samples drawn from `population`
/// (`None`: an infinite stream; `Some(N)`: without replacement from `N` samples):
///
/// ```text
///   |G|²_est = (κ(b) |g_B|² − κ(B) |g_b|²) / (κ(b) − κ(B))
///   S_est    = (|g_b|² − |g_B|²) / (κ(b) − κ(B))
/// ```
///
/// with [`kappa`]; on a stream `κ(b) = 1/b` and these are McCandlish et al.'s
/// `(B|g_B|² − b|g_b|²)/(B − b)` and `(|g_b|² − |g_B|²)/(1/b − 1/B)`. Both are unbiased (for any
/// `0 < b < B`, `B ≤ N`; `docs/science.md#finite-data`); their single-step ratio is very noisy,
/// so feed them to a [`NoiseScaleEma`] rather than dividing them.
///
/// Requires `0 < b < big_b` (and `big_b ≤ N`). When that does not hold (for instance a global
/// batch of a single microbatch, where no two sizes exist, or a batch larger than the training
/// set) both fields are NaN. This is deliberately not a panic: such a configuration is
/// legitimate, it just has no noise estimate, and [`NoiseScaleEma::update`] skips non-finite
/// estimates.
pub fn two_batch(
    b: f64,
    small_sq: f64,
    big_b: f64,
    big_sq: f64,
    population: Option<u64>,
) -> TwoBatch {
    let nan = TwoBatch {
        g2: f64::NAN,
        trace_sigma: f64::NAN,
    };
    if !(b > 0.0 && b < big_b) {
        return nan;
    }
    let Some(n) = population else {
        // The stream's formulas in McCandlish et al.'s arithmetic.
        return TwoBatch {
            g2: (big_b * big_sq - b * small_sq) / (big_b - b),
            trace_sigma: (small_sq - big_sq) / (1.0 / b - 1.0 / big_b),
        };
    };
    let (k_small, k_big) = (kappa(b, Some(n)), kappa(big_b, Some(n)));
    let d = k_small - k_big;
    if !(d > 0.0 && d.is_finite()) {
        return nan;
    }
    TwoBatch {
        g2: (k_small * big_sq - k_big * small_sq) / d,
        trace_sigma: (small_sq - big_sq) / d,
    }
}

/// `B_simple` as a ratio of two EMAs (never an EMA of ratios).
///
/// Keeps `m_G ← β m_G + (1−β) |G|²_est` and `m_S ← β m_S + (1−β) S_est`, both bias-corrected as
/// Adam does (divided by `1 − βⁿ` after `n` updates), and reports `B_simple = m_S / m_G`. The
/// bias correction cancels in the ratio but makes [`g2`](Self::g2) and
/// [`trace_sigma`](Self::trace_sigma) meaningful from the first step.
///
/// The state is plain data (`Clone`, serde) so that it can be checkpointed with a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseScaleEma {
    beta: f64,
    ema_g2: f64,
    ema_trace_sigma: f64,
    /// Number of (finite) estimates fed so far.
    updates: u64,
}

impl NoiseScaleEma {
    /// EMA with decay `beta` (e.g. 0.95), bias-corrected as Adam does.
    ///
    /// # Panics
    /// If `beta` is not in `[0, 1)` (validate configuration values before this point).
    pub fn new(beta: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&beta),
            "NoiseScaleEma beta = {beta}: expected 0 <= beta < 1"
        );
        Self {
            beta,
            ema_g2: 0.0,
            ema_trace_sigma: 0.0,
            updates: 0,
        }
    }

    /// Feeds one step's estimates; returns the current `B_simple`.
    ///
    /// A non-finite estimate (see [`two_batch`]) is skipped: the state is left unchanged and the
    /// current value is returned (NaN while nothing has been fed).
    pub fn update(&mut self, est: TwoBatch) -> f64 {
        if est.is_finite() {
            let (beta, one_minus) = (self.beta, 1.0 - self.beta);
            self.ema_g2 = beta * self.ema_g2 + one_minus * est.g2;
            self.ema_trace_sigma = beta * self.ema_trace_sigma + one_minus * est.trace_sigma;
            self.updates += 1;
        }
        self.b_simple()
    }

    /// The decay `β`.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Number of finite estimates fed so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// `1 − βⁿ`, the bias correction; 0 before the first update.
    fn correction(&self) -> f64 {
        // `powi` takes an i32; beyond that βⁿ is 0 in f64 for any β < 1 that matters.
        let n = i32::try_from(self.updates).unwrap_or(i32::MAX);
        1.0 - self.beta.powi(n)
    }

    /// The bias-corrected EMA of `|G|²_est` (NaN before the first update).
    pub fn g2(&self) -> f64 {
        if self.updates == 0 {
            f64::NAN
        } else {
            self.ema_g2 / self.correction()
        }
    }

    /// The bias-corrected EMA of `S_est`, estimating `tr Σ` (NaN before the first update).
    pub fn trace_sigma(&self) -> f64 {
        if self.updates == 0 {
            f64::NAN
        } else {
            self.ema_trace_sigma / self.correction()
        }
    }

    /// `B_simple = EMA(S) / EMA(|G|²)` (NaN before the first update).
    ///
    /// Early in a noisy run `EMA(|G|²)` can be near zero or negative (the estimate is unbiased,
    /// not positive); the ratio is then returned as computed, possibly negative or huge.
    pub fn b_simple(&self) -> f64 {
        if self.updates == 0 {
            f64::NAN
        } else {
            self.ema_trace_sigma / self.ema_g2
        }
    }
}

/// Least-squares fit of `|g_j|² = |G|² + tr Σ · (1/b_j)` over groups of several sizes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoiseRegression {
    /// The intercept: estimate of `|G|²`.
    pub g2: f64,
    /// The slope: estimate of `tr Σ`.
    pub trace_sigma: f64,
    /// `trace_sigma / g2`.
    pub b_simple: f64,
    /// Standard error of `g2` from the weighted residuals (NaN when `n ≤ 2`).
    pub g2_stderr: f64,
    /// Standard error of `trace_sigma` from the weighted residuals (NaN when `n ≤ 2`).
    pub trace_sigma_stderr: f64,
    /// Number of points fitted.
    pub n: usize,
}

/// Least squares of `|g_j|²` (`sq_norms`) on `1/b_j` (`inv_sizes`), weighted by `b_j`:
/// intercept `|G|²`, slope `tr Σ` (docs/science.md#regression).
///
/// **Weights.** For Gaussian gradient noise
/// `Var |g_b|² = 4 GᵀΣG / b + 2 tr(Σ²) / b²`: smaller groups are noisier. The weight `w_j = b_j`
/// is exact when the first term dominates (gradient signal not negligible) and, when the
/// second does, still down-weights small groups without trusting the largest groups as much as
/// `b²` would. Use [`regress_noise_weighted`] for other weights.
///
/// **Standard errors** come from the weighted residuals,
/// `σ̂² = Σ w r² / (n − 2)`, `Var(slope) = σ̂² / Sxx`, `Var(intercept) = σ̂² (1/Σw + x̄²/Sxx)`;
/// they assume independent groups whose variances are proportional to `1/w`. For nested
/// prefixes of one batch ([`PrefixNorms`]) the points are correlated and these standard errors
/// are only indicative; the estimates themselves stay unbiased.
///
/// Sizes must be positive and finite (`inv_sizes > 0`). With fewer than two points, or all
/// sizes equal, every estimate is NaN.
pub fn regress_noise(inv_sizes: &[f64], sq_norms: &[f64]) -> NoiseRegression {
    let weights: Vec<f64> = inv_sizes.iter().map(|x| 1.0 / x).collect();
    regress_noise_weighted(inv_sizes, sq_norms, &weights)
}

/// [`regress_noise`] with explicit non-negative weights (`1.0` everywhere gives ordinary least
/// squares). Weights are relative: scaling them all changes nothing.
pub fn regress_noise_weighted(
    inv_sizes: &[f64],
    sq_norms: &[f64],
    weights: &[f64],
) -> NoiseRegression {
    assert_eq!(
        inv_sizes.len(),
        sq_norms.len(),
        "one squared norm per group size"
    );
    assert_eq!(inv_sizes.len(), weights.len(), "one weight per group size");
    let n = inv_sizes.len();
    let nan = NoiseRegression {
        g2: f64::NAN,
        trace_sigma: f64::NAN,
        b_simple: f64::NAN,
        g2_stderr: f64::NAN,
        trace_sigma_stderr: f64::NAN,
        n,
    };
    if n < 2 {
        return nan;
    }
    let points = || {
        inv_sizes
            .iter()
            .zip(sq_norms)
            .zip(weights)
            .map(|((&x, &y), &w)| (x, y, w))
    };
    let sw: f64 = weights.iter().sum();
    let xm = points().map(|(x, _, w)| w * x).sum::<f64>() / sw;
    let ym = points().map(|(_, y, w)| w * y).sum::<f64>() / sw;
    let sxx: f64 = points().map(|(x, _, w)| w * (x - xm) * (x - xm)).sum();
    let sxy: f64 = points().map(|(x, y, w)| w * (x - xm) * (y - ym)).sum();
    if sxx.is_nan() || sxx <= 0.0 {
        return nan;
    }
    let slope = sxy / sxx;
    let intercept = ym - slope * xm;
    let (g2_stderr, trace_sigma_stderr) = if n > 2 {
        let rss: f64 = points()
            .map(|(x, y, w)| {
                let r = y - intercept - slope * x;
                w * r * r
            })
            .sum();
        let s2 = rss / (n - 2) as f64;
        ((s2 * (1.0 / sw + xm * xm / sxx)).sqrt(), (s2 / sxx).sqrt())
    } else {
        (f64::NAN, f64::NAN)
    };
    NoiseRegression {
        g2: intercept,
        trace_sigma: slope,
        b_simple: slope / intercept,
        g2_stderr,
        trace_sigma_stderr,
        n,
    }
}

/// The nested prefix sizes of a global batch of `num_micro` microbatches, in microbatches:
/// the powers of two below `num_micro`, then `num_micro` itself (`6 → [1, 2, 4, 6]`,
/// `8 → [1, 2, 4, 8]`, `0 → []`).
pub fn nested_prefix_sizes(num_micro: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut k = 1;
    while k < num_micro {
        sizes.push(k);
        k *= 2;
    }
    if num_micro > 0 {
        sizes.push(num_micro);
    }
    sizes
}

/// Squared norms of the mean gradient over the nested prefixes of one global batch.
///
/// The caller feeds each microbatch's gradient **sum** in batch order; one running-sum vector is
/// kept, and whenever the number of microbatches fed reaches a size of
/// [`nested_prefix_sizes`] the squared norm of the prefix mean `|sum / (k·m)|²` is recorded
/// (accumulated in f64).
///
/// ```text
///   micro:   0 | 1 | 2   3 | 4   5   6   7
///   prefix:  m  2m   4m      8m = B
/// ```
///
/// Each recorded norm satisfies `E|g_b|² = |G|² + tr Σ / b`, so [`regression`](Self::regression)
/// fits every size at once. It costs only the extra norms, no extra gradients; at the end
/// [`sum`](Self::sum) is the whole batch's gradient sum.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixNorms {
    sum: Vec<f64>,
    micro_size: usize,
    population: Option<u64>,
    sizes: Vec<usize>,
    norms: Vec<f64>,
    fed: usize,
}

impl PrefixNorms {
    /// Empty accumulator for `num_micro` microbatches of `micro_size` samples each, gradients of
    /// dimension `dim`.
    pub fn new(dim: usize, num_micro: usize, micro_size: usize) -> Self {
        assert!(
            micro_size > 0,
            "PrefixNorms micro_size = 0: expected at least one sample"
        );
        let sizes = nested_prefix_sizes(num_micro);
        Self {
            sum: vec![0.0; dim],
            micro_size,
            population: None,
            norms: Vec::with_capacity(sizes.len()),
            sizes,
            fed: 0,
        }
    }

    /// The same accumulator for samples drawn without replacement from `population` samples
    /// (`None`: an infinite stream): [`regression`](Self::regression) then regresses on
    /// [`kappa`] instead of `1/b`.
    pub fn with_population(mut self, population: Option<u64>) -> Self {
        self.population = population;
        self
    }

    /// Adds the next microbatch's gradient sum.
    ///
    /// # Panics
    /// If more microbatches are fed than the batch holds, or the dimension is wrong.
    pub fn push(&mut self, micro_grad_sum: &[f64]) {
        assert_eq!(micro_grad_sum.len(), self.sum.len(), "gradient dimension");
        assert!(
            !self.is_complete(),
            "PrefixNorms: all {} microbatches already fed",
            self.fed
        );
        for (s, g) in self.sum.iter_mut().zip(micro_grad_sum) {
            *s += g;
        }
        self.fed += 1;
        if self.sizes.get(self.norms.len()) == Some(&self.fed) {
            let samples = (self.fed * self.micro_size) as f64;
            self.norms.push(norm_sq(&self.sum) / (samples * samples));
        }
    }

    /// Whether every microbatch has been fed.
    pub fn is_complete(&self) -> bool {
        self.norms.len() == self.sizes.len()
    }

    /// The nested sizes, in microbatches.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The squared norms recorded so far, one per size reached.
    pub fn norms(&self) -> &[f64] {
        &self.norms
    }

    /// The running sum of the gradient sums fed so far.
    pub fn sum(&self) -> &[f64] {
        &self.sum
    }

    /// [`regress_noise`] over the recorded points (sizes in samples): `|g_b|²` on `κ(b)`
    /// ([`kappa`]: `1/b` on a stream), weighted by `b`. Its standard errors are only
    /// indicative: nested prefixes share samples, so the points are correlated.
    pub fn regression(&self) -> NoiseRegression {
        let sizes = &self.sizes[..self.norms.len()];
        let Some(n) = self.population else {
            let inv: Vec<f64> = sizes
                .iter()
                .map(|&k| 1.0 / (k * self.micro_size) as f64)
                .collect();
            return regress_noise(&inv, &self.norms);
        };
        let b: Vec<f64> = sizes
            .iter()
            .map(|&k| (k * self.micro_size) as f64)
            .collect();
        let x: Vec<f64> = b.iter().map(|&b| kappa(b, Some(n))).collect();
        regress_noise_weighted(&x, &self.norms, &b)
    }

    /// Clears the accumulator for the next step (keeps the allocation).
    pub fn reset(&mut self) {
        self.sum.iter_mut().for_each(|s| *s = 0.0);
        self.norms.clear();
        self.fed = 0;
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
///
/// Each iteration applies the operator once to the normalised iterate `v` and takes the
/// Rayleigh quotient `λ = vᵀAv`; it stops when `|λ_k − λ_{k−1}| ≤ rel_tol·|λ_k|` or after
/// `max_iter` products. The error of `λ` shrinks like `(λ₂/λ₁)^{2k}`.
///
/// This finds the eigenvalue of largest **magnitude**: for a non-convex Hessian that can be a
/// negative one. Use [`top_eigenvalue`] for the largest algebraic eigenvalue (the sharpness).
/// If `λ` and `−λ` are both extreme, the iterate does not settle and the quotient is not an
/// eigenvalue. A zero or non-finite `v0` (or `max_iter = 0`) gives `lambda = NaN`, not converged;
/// a `v0` in the null space gives `lambda = 0`, converged.
pub fn power_iteration(
    mut hvp: impl FnMut(&[f64], &mut [f64]),
    v0: Vec<f64>,
    max_iter: usize,
    rel_tol: f64,
) -> PowerIteration {
    let mut v = v0;
    let mut w = vec![0.0; v.len()];
    let mut lambda = f64::NAN;
    let v_norm = norm_sq(&v).sqrt();
    if !(v_norm > 0.0 && v_norm.is_finite()) {
        return PowerIteration {
            lambda,
            iterations: 0,
            converged: false,
        };
    }
    scale(1.0 / v_norm, &mut v);
    for it in 1..=max_iter {
        hvp(&v, &mut w);
        let next = dot(&v, &w);
        let w_norm = norm_sq(&w).sqrt();
        if !(next.is_finite() && w_norm.is_finite()) {
            return PowerIteration {
                lambda: next,
                iterations: it,
                converged: false,
            };
        }
        let settled = it > 1 && (next - lambda).abs() <= rel_tol * next.abs();
        lambda = next;
        if w_norm == 0.0 || settled {
            return PowerIteration {
                lambda,
                iterations: it,
                converged: true,
            };
        }
        std::mem::swap(&mut v, &mut w);
        scale(1.0 / w_norm, &mut v);
    }
    PowerIteration {
        lambda,
        iterations: max_iter,
        converged: false,
    }
}

/// The largest **algebraic** eigenvalue of a symmetric operator (the sharpness `λ_max`).
///
/// Runs [`power_iteration`]; if the dominant eigenvalue `λ₁` is non-negative it is the largest
/// one. Otherwise the spectrum is shifted, `A − λ₁I` (all eigenvalues in `[0, λ_max − λ₁]`), and
/// power iteration on it gives `λ_max − λ₁`. `iterations` counts both runs (each `max_iter` at
/// most), `converged` requires both.
pub fn top_eigenvalue(
    mut hvp: impl FnMut(&[f64], &mut [f64]),
    v0: Vec<f64>,
    max_iter: usize,
    rel_tol: f64,
) -> PowerIteration {
    let first = power_iteration(&mut hvp, v0.clone(), max_iter, rel_tol);
    if first.lambda.is_nan() || first.lambda >= 0.0 {
        return first;
    }
    let shift = first.lambda;
    let shifted = power_iteration(
        |v: &[f64], out: &mut [f64]| {
            hvp(v, out);
            crate::vec::axpy(-shift, v, out);
        },
        v0,
        max_iter,
        rel_tol,
    );
    PowerIteration {
        lambda: shifted.lambda + shift,
        iterations: first.iterations + shifted.iterations,
        converged: first.converged && shifted.converged,
    }
}

/// The two ends of a symmetric operator's spectrum, from [`lanczos_extremes`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpectrumEnds {
    /// The largest algebraic eigenvalue `λ_max` (the sharpness).
    pub top: f64,
    /// The smallest algebraic eigenvalue `λ_min` (negative where the loss is not convex).
    pub bottom: f64,
    /// Operator products used.
    pub iterations: usize,
    /// Whether both ends settled to the tolerance (or the Krylov space closed exactly).
    pub converged: bool,
}

/// Largest and smallest eigenvalues of a symmetric `n × n` tridiagonal matrix (`diag` of
/// length `k`, `off` of length `k − 1`), by bisection on Sturm counts to full precision.
fn tridiagonal_extremes(diag: &[f64], off: &[f64]) -> (f64, f64) {
    // Gershgorin bounds hold every eigenvalue.
    let k = diag.len();
    let radius = |i: usize| {
        let l = if i > 0 { off[i - 1].abs() } else { 0.0 };
        let r = if i + 1 < k { off[i].abs() } else { 0.0 };
        l + r
    };
    let lo = (0..k)
        .map(|i| diag[i] - radius(i))
        .fold(f64::INFINITY, f64::min);
    let hi = (0..k)
        .map(|i| diag[i] + radius(i))
        .fold(f64::NEG_INFINITY, f64::max);
    // Number of eigenvalues below `x`: the negative pivots of the LDLᵀ factorisation of T − xI.
    let below = |x: f64| {
        let mut count = 0;
        let mut d = 1.0;
        for i in 0..k {
            let b2 = if i > 0 { off[i - 1] * off[i - 1] } else { 0.0 };
            d = diag[i] - x - if i > 0 { b2 / d } else { 0.0 };
            if d == 0.0 {
                d = -f64::EPSILON * (hi - lo).abs().max(f64::MIN_POSITIVE);
            }
            if d < 0.0 {
                count += 1;
            }
        }
        count
    };
    // The `j`-th smallest eigenvalue (0-based): the smallest x with more than j below it.
    let nth = |j: usize| {
        let (mut a, mut b) = (lo, hi);
        for _ in 0..200 {
            let m = 0.5 * (a + b);
            if m <= a || m >= b {
                break;
            }
            if below(m) > j { b = m } else { a = m }
        }
        0.5 * (a + b)
    };
    (nth(k - 1), nth(0))
}

/// Both ends of the spectrum of a symmetric operator `hvp(v, out)` by the Lanczos method from
/// `v0` (see `docs/science.md#sharpness`).
///
/// Step `j` extends the Krylov basis by one product, `w = A v_j − β_{j−1} v_{j−1} − α_j v_j`,
/// and the extreme eigenvalues of the tridiagonal `T_j` (the Ritz values) approach `λ_max`
/// and `λ_min` from inside, both at once, far faster than power iteration (whose error shrinks
/// like `(λ₂/λ₁)^{2k}` and which finds the eigenvalue of largest **magnitude**, a negative one
/// on a non-convex loss). No reorthogonalisation is done: in floating point the basis loses
/// orthogonality and copies of converged Ritz values appear, which leaves the extremes right.
/// It stops when both ends changed by at most `rel_tol` times the spectrum's width in one
/// step, when the Krylov space closes (`β_j = 0`: the ends are exact), or after `max_iter`
/// products. A zero or non-finite `v0` (or `max_iter = 0`) gives NaN ends.
pub fn lanczos_extremes(
    mut hvp: impl FnMut(&[f64], &mut [f64]),
    v0: Vec<f64>,
    max_iter: usize,
    rel_tol: f64,
) -> SpectrumEnds {
    let nan = SpectrumEnds {
        top: f64::NAN,
        bottom: f64::NAN,
        iterations: 0,
        converged: false,
    };
    let n = v0.len();
    let mut v = v0;
    let norm = norm_sq(&v).sqrt();
    if !(norm > 0.0 && norm.is_finite()) || max_iter == 0 {
        return nan;
    }
    scale(1.0 / norm, &mut v);
    let mut prev = vec![0.0; n];
    let mut w = vec![0.0; n];
    let (mut diag, mut off) = (Vec::new(), Vec::new());
    let mut beta_prev = 0.0;
    let mut ends = (f64::NAN, f64::NAN);
    for it in 1..=max_iter.min(n.max(1)) {
        hvp(&v, &mut w);
        crate::vec::axpy(-beta_prev, &prev, &mut w);
        let alpha = dot(&v, &w);
        crate::vec::axpy(-alpha, &v, &mut w);
        let beta = norm_sq(&w).sqrt();
        if !(alpha.is_finite() && beta.is_finite()) {
            return SpectrumEnds {
                iterations: it,
                ..nan
            };
        }
        diag.push(alpha);
        let next = tridiagonal_extremes(&diag, &off);
        let width = (next.0 - next.1).abs().max(next.0.abs()).max(next.1.abs());
        let settled =
            it > 1 && (next.0 - ends.0).abs().max((next.1 - ends.1).abs()) <= rel_tol * width;
        ends = next;
        let closed = beta <= 1e-14 * width.max(f64::MIN_POSITIVE);
        if settled || closed || it == n {
            return SpectrumEnds {
                top: ends.0,
                bottom: ends.1,
                iterations: it,
                converged: true,
            };
        }
        off.push(beta);
        std::mem::swap(&mut prev, &mut v);
        std::mem::swap(&mut v, &mut w);
        scale(1.0 / beta, &mut v);
        beta_prev = beta;
    }
    SpectrumEnds {
        top: ends.0,
        bottom: ends.1,
        iterations: max_iter,
        converged: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, rng};
    use approx::assert_relative_eq;
    use rand::Rng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn normals(r: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| r.sample(StandardNormal)).collect()
    }

    /// Mean and standard error of the mean.
    fn mean_se(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
        (m, (var / n).sqrt())
    }

    /// `A = Q diag(spectrum) Qᵀ` with `Q` from Gram–Schmidt of seeded normals.
    fn dense_symmetric(spectrum: &[f64], seed: u64) -> Vec<Vec<f64>> {
        let n = spectrum.len();
        let mut r = rng(seed, Stream::Aux, 0);
        let mut q: Vec<Vec<f64>> = Vec::new();
        while q.len() < n {
            let mut v = normals(&mut r, n);
            for u in &q {
                let p = dot(u, &v);
                crate::vec::axpy(-p, u, &mut v);
            }
            let norm = norm_sq(&v).sqrt();
            scale(1.0 / norm, &mut v);
            q.push(v);
        }
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (0..n).map(|k| q[k][i] * spectrum[k] * q[k][j]).sum())
                    .collect()
            })
            .collect()
    }

    fn matvec(a: &[Vec<f64>]) -> impl FnMut(&[f64], &mut [f64]) + '_ {
        move |v, out| {
            for (o, row) in out.iter_mut().zip(a) {
                *o = dot(row, v);
            }
        }
    }

    #[test]
    fn two_batch_inverts_exact_expectations() {
        let (g2, tr) = (3.0, 50.0);
        let (b, big) = (4.0, 64.0);
        let est = two_batch(b, g2 + tr / b, big, g2 + tr / big, None);
        assert_relative_eq!(est.g2, g2, max_relative = 1e-12);
        assert_relative_eq!(est.trace_sigma, tr, max_relative = 1e-12);
    }

    /// Without replacement from `N = 64`: the estimators invert `|G|² + tr Σ·κ(b)` exactly,
    /// `κ(N) = 0`, and the stream's formulas applied to the same norms are off by the factor.
    #[test]
    fn two_batch_on_finite_data_inverts_the_finite_population_expectations() {
        let (g2, tr, n) = (3.0, 50.0, 64u64);
        assert_eq!(kappa(64.0, Some(n)), 0.0);
        assert_relative_eq!(
            kappa(4.0, Some(n)),
            60.0 / (4.0 * 63.0),
            max_relative = 1e-15
        );
        assert_eq!(kappa(4.0, None), 0.25);
        assert!(kappa(65.0, Some(n)).is_nan() && kappa(0.0, Some(n)).is_nan());
        for (b, big) in [(4.0, 64.0), (1.0, 16.0), (8.0, 32.0)] {
            let e = |x: f64| g2 + tr * kappa(x, Some(n));
            let est = two_batch(b, e(b), big, e(big), Some(n));
            assert_relative_eq!(est.g2, g2, max_relative = 1e-12);
            assert_relative_eq!(est.trace_sigma, tr, max_relative = 1e-12);
            let naive = two_batch(b, e(b), big, e(big), None);
            assert!((naive.g2 - g2).abs() > 0.1, "{naive:?}");
        }
        // A batch larger than the training set gives no estimate.
        assert!(!two_batch(4.0, 1.0, 128.0, 1.0, Some(n)).is_finite());
    }

    #[test]
    fn two_batch_without_two_sizes_is_nan_and_the_ema_skips_it() {
        assert!(!two_batch(8.0, 1.0, 8.0, 1.0, None).is_finite());
        assert!(!two_batch(0.0, 1.0, 8.0, 1.0, None).is_finite());
        let mut ema = NoiseScaleEma::new(0.9);
        assert!(ema.update(two_batch(8.0, 1.0, 8.0, 1.0, None)).is_nan());
        assert_eq!(ema.updates(), 0);
        ema.update(TwoBatch {
            g2: 2.0,
            trace_sigma: 6.0,
        });
        assert_relative_eq!(
            ema.update(two_batch(8.0, 1.0, 8.0, 1.0, None)),
            3.0,
            max_relative = 1e-12
        );
        assert_eq!(ema.updates(), 1);
    }

    /// Per-sample gradients `g_i = G + z_i`, `z ~ N(0, diag σ²)`; `b`-sample groups inside a
    /// `B`-sample batch. The mean of the estimates over many trials is within 5 standard errors
    /// of `|G|²` and `tr Σ`.
    #[test]
    fn two_batch_is_unbiased_monte_carlo() {
        let g: Vec<f64> = vec![0.5, -0.3, 0.2, 0.0, 0.1, -0.4, 0.25, 0.05];
        let sigma: Vec<f64> = (0..g.len()).map(|i| 0.5 + 0.25 * i as f64).collect();
        let true_g2 = norm_sq(&g);
        let true_tr: f64 = sigma.iter().map(|s| s * s).sum();
        let (b, groups) = (4usize, 8usize);
        let big = b * groups;
        let trials = 20_000;
        let (mut g2s, mut trs) = (Vec::with_capacity(trials), Vec::with_capacity(trials));
        let mut r = rng(11, Stream::Aux, 1);
        for _ in 0..trials {
            let mut total = vec![0.0; g.len()];
            let mut small_sq = 0.0;
            for _ in 0..groups {
                let mut group = vec![0.0; g.len()];
                for _ in 0..b {
                    for (k, gk) in group.iter_mut().enumerate() {
                        *gk += g[k] + sigma[k] * r.sample::<f64, _>(StandardNormal);
                    }
                }
                small_sq += norm_sq(&group) / (b * b) as f64;
                crate::vec::axpy(1.0, &group, &mut total);
            }
            small_sq /= groups as f64;
            let big_sq = norm_sq(&total) / (big * big) as f64;
            let est = two_batch(b as f64, small_sq, big as f64, big_sq, None);
            g2s.push(est.g2);
            trs.push(est.trace_sigma);
        }
        let (m_g2, se_g2) = mean_se(&g2s);
        let (m_tr, se_tr) = mean_se(&trs);
        assert!(
            (m_g2 - true_g2).abs() < 5.0 * se_g2,
            "|G|²: {m_g2} ± {se_g2} vs {true_g2}"
        );
        assert!(
            (m_tr - true_tr).abs() < 5.0 * se_tr,
            "tr Σ: {m_tr} ± {se_tr} vs {true_tr}"
        );
    }

    #[test]
    fn ema_is_nan_before_the_first_update_and_exact_on_a_constant_stream() {
        let mut ema = NoiseScaleEma::new(0.95);
        assert!(ema.b_simple().is_nan() && ema.g2().is_nan() && ema.trace_sigma().is_nan());
        // Bias correction makes even the first value exact.
        for _ in 0..200 {
            let b = ema.update(TwoBatch {
                g2: 2.0,
                trace_sigma: 10.0,
            });
            assert_relative_eq!(b, 5.0, max_relative = 1e-12);
            assert_relative_eq!(ema.g2(), 2.0, max_relative = 1e-12);
            assert_relative_eq!(ema.trace_sigma(), 10.0, max_relative = 1e-12);
        }
        let copy = ema.clone();
        assert_eq!(copy, ema);
    }

    /// β = 0.5; step 1 `(|G|², S) = (1, 4)` (ratio 4), step 2 `(4, 4)` (ratio 1).
    /// Raw EMAs: `m_G = 0.5·0.5 + 0.5·4 = 2.25`, `m_S = 0.5·2 + 0.5·4 = 3`; corrected by
    /// `1 − 0.25`: `|G|² = 3`, `S = 4`, `B_simple = 4/3`. An EMA of ratios would give
    /// `(0.5·0.5·4 + 0.5·1) / 0.75 = 2`.
    #[test]
    fn ema_is_a_ratio_of_emas_not_an_ema_of_ratios() {
        let mut ema = NoiseScaleEma::new(0.5);
        assert_relative_eq!(
            ema.update(TwoBatch {
                g2: 1.0,
                trace_sigma: 4.0
            }),
            4.0,
            max_relative = 1e-12
        );
        let b = ema.update(TwoBatch {
            g2: 4.0,
            trace_sigma: 4.0,
        });
        assert_relative_eq!(b, 4.0 / 3.0, max_relative = 1e-12);
        assert_relative_eq!(ema.g2(), 3.0, max_relative = 1e-12);
        assert_relative_eq!(ema.trace_sigma(), 4.0, max_relative = 1e-12);
        assert!((b - 2.0).abs() > 0.5);
    }

    #[test]
    fn regression_recovers_intercept_and_slope_from_exact_data() {
        let (g2, tr) = (0.7, 12.0);
        let inv: Vec<f64> = [1.0, 2.0, 4.0, 8.0, 16.0, 3.0]
            .iter()
            .map(|b| 1.0 / b)
            .collect();
        let y: Vec<f64> = inv.iter().map(|x| g2 + tr * x).collect();
        let fit = regress_noise(&inv, &y);
        assert_eq!(fit.n, 6);
        assert_relative_eq!(fit.g2, g2, max_relative = 1e-10);
        assert_relative_eq!(fit.trace_sigma, tr, max_relative = 1e-10);
        assert_relative_eq!(fit.b_simple, tr / g2, max_relative = 1e-10);
        assert!(fit.g2_stderr < 1e-10 && fit.trace_sigma_stderr < 1e-9);
        let ols = regress_noise_weighted(&inv, &y, &[1.0; 6]);
        assert_relative_eq!(ols.trace_sigma, tr, max_relative = 1e-10);
        // Degenerate inputs.
        assert!(regress_noise(&inv[..1], &y[..1]).g2.is_nan());
        assert!(regress_noise(&[0.5, 0.5], &[1.0, 2.0]).trace_sigma.is_nan());
        assert!(regress_noise(&inv[..2], &y[..2]).g2_stderr.is_nan());
    }

    /// Independent groups `g_j = G + N(0, Σ/b_j)`, 24 groups per trial, 300 trials: truth lies
    /// within 3 standard errors (both parameters) in at least 90% of the trials. With a correct
    /// model the rate would be ≈ 99% per parameter (t with 22 d.o.f.); the weights are only
    /// approximately right, and 90% leaves a wide margin (a 300-trial binomial at 97% has a
    /// standard deviation of 1%).
    #[test]
    fn regression_standard_errors_cover_the_truth_on_noisy_data() {
        let d = 16;
        let g: Vec<f64> = (0..d)
            .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        let sigma = 1.0;
        let (true_g2, true_tr) = (norm_sq(&g), d as f64 * sigma * sigma);
        let sizes = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
        let trials = 300;
        let mut covered = 0;
        let mut r = rng(12, Stream::Aux, 2);
        for _ in 0..trials {
            let (mut inv, mut y) = (Vec::new(), Vec::new());
            for j in 0..24 {
                let b: f64 = sizes[j % sizes.len()];
                let sq: f64 = g
                    .iter()
                    .map(|gk| (gk + sigma / b.sqrt() * r.sample::<f64, _>(StandardNormal)).powi(2))
                    .sum();
                inv.push(1.0 / b);
                y.push(sq);
            }
            let fit = regress_noise(&inv, &y);
            if (fit.g2 - true_g2).abs() <= 3.0 * fit.g2_stderr
                && (fit.trace_sigma - true_tr).abs() <= 3.0 * fit.trace_sigma_stderr
            {
                covered += 1;
            }
        }
        let frac = covered as f64 / trials as f64;
        assert!(frac >= 0.95, "coverage {frac}");
    }

    #[test]
    fn nested_prefix_sizes_are_powers_of_two_then_the_batch() {
        assert_eq!(nested_prefix_sizes(0), Vec::<usize>::new());
        assert_eq!(nested_prefix_sizes(1), vec![1]);
        assert_eq!(nested_prefix_sizes(2), vec![1, 2]);
        assert_eq!(nested_prefix_sizes(6), vec![1, 2, 4, 6]);
        assert_eq!(nested_prefix_sizes(8), vec![1, 2, 4, 8]);
        assert_eq!(nested_prefix_sizes(9), vec![1, 2, 4, 8, 9]);
    }

    #[test]
    fn prefix_norms_record_the_prefix_means() {
        let (dim, num_micro, m) = (3, 6, 2);
        let micros: Vec<Vec<f64>> = (0..num_micro)
            .map(|k| vec![k as f64, 1.0, -2.0 * k as f64])
            .collect();
        let mut p = PrefixNorms::new(dim, num_micro, m);
        for (k, g) in micros.iter().enumerate() {
            assert!(!p.is_complete());
            p.push(g);
            assert_eq!(p.norms().len(), [1, 2, 2, 3, 3, 4][k]);
        }
        assert!(p.is_complete());
        for (&k, &norm) in p.sizes().iter().zip(p.norms()) {
            let mean: Vec<f64> = (0..dim)
                .map(|i| micros[..k].iter().map(|g| g[i]).sum::<f64>() / (k * m) as f64)
                .collect();
            assert_relative_eq!(norm, norm_sq(&mean), max_relative = 1e-12);
        }
        assert_eq!(p.sum(), &[15.0, 6.0, -30.0]);
        p.reset();
        assert!(p.norms().is_empty() && p.sum().iter().all(|&s| s == 0.0));
    }

    /// The prefix regression is unbiased: mean over trials within 5 standard errors of the truth.
    #[test]
    fn prefix_regression_is_unbiased_monte_carlo() {
        let g = [0.6, -0.2, 0.3, 0.4];
        let sigma = [1.0, 0.5, 1.5, 1.0];
        let true_g2 = norm_sq(&g);
        let true_tr: f64 = sigma.iter().map(|s| s * s).sum();
        let (num_micro, m) = (8, 4);
        let trials = 8000;
        let mut r = rng(13, Stream::Aux, 3);
        let (mut g2s, mut trs) = (Vec::new(), Vec::new());
        let mut p = PrefixNorms::new(g.len(), num_micro, m);
        for _ in 0..trials {
            p.reset();
            for _ in 0..num_micro {
                // Sum of m per-sample gradients: mG + √m σ z.
                let micro: Vec<f64> = (0..g.len())
                    .map(|k| {
                        m as f64 * g[k]
                            + (m as f64).sqrt() * sigma[k] * r.sample::<f64, _>(StandardNormal)
                    })
                    .collect();
                p.push(&micro);
            }
            let fit = p.regression();
            assert_eq!(fit.n, 4);
            g2s.push(fit.g2);
            trs.push(fit.trace_sigma);
        }
        let (m_g2, se_g2) = mean_se(&g2s);
        let (m_tr, se_tr) = mean_se(&trs);
        assert!(
            (m_g2 - true_g2).abs() < 5.0 * se_g2,
            "|G|²: {m_g2} ± {se_g2} vs {true_g2}"
        );
        assert!(
            (m_tr - true_tr).abs() < 5.0 * se_tr,
            "tr Σ: {m_tr} ± {se_tr} vs {true_tr}"
        );
    }

    #[test]
    fn power_iteration_on_a_diagonal_matrix() {
        let diag = [10.0, 7.0, 3.0, 1.0, -2.0, 0.5];
        let hvp = |v: &[f64], out: &mut [f64]| {
            for ((o, x), d) in out.iter_mut().zip(v).zip(&diag) {
                *o = d * x;
            }
        };
        let res = power_iteration(hvp, vec![1.0; 6], 500, 1e-14);
        assert!(res.converged, "{res:?}");
        assert_relative_eq!(res.lambda, 10.0, max_relative = 1e-10);
        // A few iterations already give 1%: error ~ (0.7)^{2k}.
        let early = power_iteration(hvp, vec![1.0; 6], 8, 0.0);
        assert!(!early.converged && early.iterations == 8);
        assert_relative_eq!(early.lambda, 10.0, max_relative = 1e-2);
    }

    #[test]
    fn power_iteration_on_a_dense_symmetric_matrix_with_known_spectrum() {
        let spectrum: Vec<f64> = (0..20).map(|i| 5.0 - 0.3 * i as f64).collect(); // 5.0 … -0.7
        let a = dense_symmetric(&spectrum, 21);
        let v0 = normals(&mut rng(21, Stream::Aux, 1), 20);
        let res = power_iteration(matvec(&a), v0.clone(), 1000, 1e-13);
        assert!(res.converged, "{res:?}");
        assert_relative_eq!(res.lambda, 5.0, max_relative = 1e-9);
        let early = power_iteration(matvec(&a), v0, 40, 1e-3);
        assert_relative_eq!(early.lambda, 5.0, max_relative = 1e-2);
        assert!(early.iterations < 40);
    }

    #[test]
    fn negative_dominant_eigenvalue_power_vs_top() {
        // Largest magnitude is −6; largest algebraic is 4.
        let spectrum = [-6.0, 4.0, 3.0, 1.0, 0.0, -1.0, 2.0, -3.0];
        let a = dense_symmetric(&spectrum, 22);
        let v0 = normals(&mut rng(22, Stream::Aux, 1), spectrum.len());
        let dominant = power_iteration(matvec(&a), v0.clone(), 2000, 1e-13);
        assert_relative_eq!(dominant.lambda, -6.0, max_relative = 1e-9);
        let top = top_eigenvalue(matvec(&a), v0.clone(), 2000, 1e-13);
        assert!(top.converged, "{top:?}");
        assert_relative_eq!(top.lambda, 4.0, max_relative = 1e-8);
        assert!(top.iterations > dominant.iterations);
        // A positive dominant eigenvalue needs no shift.
        let pos = dense_symmetric(&[6.0, -4.0, 1.0], 23);
        let once = top_eigenvalue(matvec(&pos), vec![1.0, 1.0, 1.0], 2000, 1e-13);
        assert_relative_eq!(once.lambda, 6.0, max_relative = 1e-9);
    }

    #[test]
    fn power_iteration_degenerate_starts() {
        let id = |v: &[f64], out: &mut [f64]| out.copy_from_slice(v);
        let zero = power_iteration(id, vec![0.0; 3], 10, 1e-9);
        assert!(zero.lambda.is_nan() && !zero.converged);
        let null = power_iteration(
            |_: &[f64], out: &mut [f64]| out.fill(0.0),
            vec![1.0; 3],
            10,
            1e-9,
        );
        assert!(null.converged && null.lambda == 0.0);
    }

    /// An indefinite operator whose largest-magnitude eigenvalue is negative: power iteration
    /// returns it, Lanczos returns both ends, each to 1e-9, in far fewer products than the
    /// shifted power iteration needs for the top one.
    #[test]
    fn lanczos_finds_both_ends_of_an_indefinite_spectrum() {
        let spectrum: Vec<f64> = (0..60)
            .map(|i| if i == 0 { -9.0 } else { 4.0 - 0.1 * i as f64 })
            .collect(); // −9, then 3.9 … −1.9
        let a = dense_symmetric(&spectrum, 31);
        let v0 = normals(&mut rng(31, Stream::Aux, 1), spectrum.len());
        let power = power_iteration(matvec(&a), v0.clone(), 5000, 1e-13);
        assert_relative_eq!(power.lambda, -9.0, max_relative = 1e-9);
        let ends = lanczos_extremes(matvec(&a), v0, 60, 1e-13);
        assert!(ends.converged, "{ends:?}");
        assert_relative_eq!(ends.top, 3.9, max_relative = 1e-9);
        assert_relative_eq!(ends.bottom, -9.0, max_relative = 1e-9);
        // The shifted power iteration reaches the same top only after many more products.
        let shifted = top_eigenvalue(
            matvec(&a),
            normals(&mut rng(31, Stream::Aux, 1), 60),
            20_000,
            1e-13,
        );
        assert_relative_eq!(shifted.lambda, 3.9, max_relative = 1e-6);
        assert!(
            5 * ends.iterations < shifted.iterations,
            "{ends:?} {shifted:?}"
        );
        // A diagonal operator with a closed Krylov space (3 distinct values): exact at once.
        let diag = [2.0, 2.0, -1.0, 5.0, -1.0];
        let d = |v: &[f64], out: &mut [f64]| {
            for ((o, x), h) in out.iter_mut().zip(v).zip(&diag) {
                *o = h * x;
            }
        };
        let exact = lanczos_extremes(d, vec![1.0; 5], 50, 0.0);
        assert!(exact.converged && exact.iterations <= 3, "{exact:?}");
        assert_relative_eq!(exact.top, 5.0, max_relative = 1e-12);
        assert_relative_eq!(exact.bottom, -1.0, max_relative = 1e-12);
        // Degenerate starts.
        assert!(lanczos_extremes(d, vec![0.0; 5], 10, 1e-9).top.is_nan());
        assert!(lanczos_extremes(d, vec![1.0; 5], 0, 1e-9).top.is_nan());
    }

    /// The Sturm-count bisection against a tridiagonal matrix with a known spectrum: the
    /// `k × k` matrix with 2 on the diagonal and −1 beside it has `2 − 2cos(jπ/(k+1))`.
    #[test]
    fn tridiagonal_extremes_match_the_closed_form() {
        let k = 30;
        let (top, bottom) = tridiagonal_extremes(&vec![2.0; k], &vec![-1.0; k - 1]);
        let eig = |j: usize| 2.0 - 2.0 * (j as f64 * std::f64::consts::PI / (k + 1) as f64).cos();
        assert_relative_eq!(top, eig(k), max_relative = 1e-12);
        assert_relative_eq!(bottom, eig(1), max_relative = 1e-10);
        assert_eq!(tridiagonal_extremes(&[3.0], &[]), (3.0, 3.0));
    }
}
