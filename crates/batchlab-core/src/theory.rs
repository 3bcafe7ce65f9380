//! Closed forms of the noisy quadratic model (docs/science.md#noisy-quadratic-model, Zhang et al. 2019).
//!
//! `L(θ) = ½ Σ h_i θ_i²`; a mini-batch gradient of `B` samples is `Hθ + ξ̄`, `ξ̄ ~ N(0, C/B)`,
//! `C = diag(c_i)`. Every dimension evolves on its own, so the expected loss
//! `E[L](t) = ½ Σ h_i s_i(t)`, `s_i = E[θ_i²]`, is known exactly:
//!
//! ```text
//!   SGD          s_i(t+1) = (1−αh_i)² s_i(t) + α² c_i / B
//!                s_i(t)   = s*_i + (1−αh_i)^{2t} (s_i(0) − s*_i),   s*_i = α c_i / (B h_i (2 − α h_i))
//!
//!   heavy ball   v ← βv + g,  θ ← θ − αv,  x = αh_i,  u = αv
//!                (E θ², E u², −E θu)' = T (E θ², E u², −E θu) + α² c_i/B (1, 1, 1)
//!                T = | (1−x)²    β²   2β(1−x) |
//!                    |  x²       β²   −2βx    |
//!                    | −x(1−x)   β²   β(1−2x) |
//! ```
//!
//! The heavy-ball matrix follows from `θ' = (1−x)θ − βu − αξ̄`, `u' = xθ + βu + αξ̄` with `ξ̄`
//! independent of `(θ, u)`: squaring and multiplying these gives the three rows (the noise enters
//! `θ'²`, `u'²` and `−θ'u'` each as `+α²c_i/B`). Velocity starts at zero.
//!
//! All batch sizes are `f64`, so an effective batch (e.g. `B / a²` under a warmup factor `a`)
//! can be passed directly.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The closed forms of one noisy quadratic: curvatures `h` and per-sample noise variances `c`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NqmTheory {
    h: Vec<f64>,
    c: Vec<f64>,
}

/// A learning rate together with the steps it needs to reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestRate {
    /// The learning rate.
    pub lr: f64,
    /// Steps to the target loss at that rate.
    pub steps: u64,
}

/// One batch size of a sweep and its best rate, if any rate of the grid reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The batch size `B`.
    pub batch: f64,
    /// The rate with the fewest steps `S`, or `None` when no rate reached the target in budget.
    pub best: Option<BestRate>,
}

/// Golden-section search for a minimum of `f` on `[a, b]`, to width `tol`: the best point
/// seen and its value. Finds the minimum of a unimodal `f`; otherwise a local one.
pub fn golden_min(f: impl Fn(f64) -> f64, mut a: f64, mut b: f64, tol: f64) -> (f64, f64) {
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - inv_phi * (b - a);
    let mut d = a + inv_phi * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > tol {
        if fc <= fd {
            (b, d, fd) = (d, c, fc);
            c = b - inv_phi * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + inv_phi * (b - a);
            fd = f(d);
        }
    }
    if fc <= fd { (c, fc) } else { (d, fd) }
}

/// `n` rates spaced geometrically from `lo` to `hi` inclusive (`n = 1` gives `[lo]`).
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![lo],
        _ => {
            let ratio = (hi / lo).ln() / (n - 1) as f64;
            (0..n)
                .map(|k| {
                    if k + 1 == n {
                        hi
                    } else {
                        lo * (ratio * k as f64).exp()
                    }
                })
                .collect()
        }
    }
}

/// `s_i(t)` of SGD for one dimension with `x = αh`, noise `n = α²c/B`, written as
/// `r^t s0 + n (1 − r^t)/(1 − r)`, `r = (1−x)²`, so that `x = 0`, `x = 1` and `x ≥ 2` need no
/// special formula (`s* = n/(1−r)` is infinite at `x = 2`).
fn sgd_dim(s0: f64, x: f64, n: f64, t: u64) -> f64 {
    if t == 0 || (s0 == 0.0 && n == 0.0) {
        return s0;
    }
    // ln|1 − x|, accurate near x = 0 and x = 2; −∞ at x = 1.
    let ln_abs = if x < 1.0 {
        (-x).ln_1p()
    } else {
        (x - 2.0).ln_1p()
    };
    let e = 2.0 * t as f64 * ln_abs;
    let one_minus_r = x * (2.0 - x);
    let geometric = if one_minus_r == 0.0 {
        t as f64
    } else {
        -e.exp_m1() / one_minus_r
    };
    e.exp() * s0 + n * geometric
}

/// One heavy-ball step of the scaled second moments `[E θ², E u², −E θu]`, `u = αv`.
fn hb_step(x: f64, beta: f64, n: f64, s: [f64; 3]) -> [f64; 3] {
    let [a, b, c] = s;
    let y = 1.0 - x;
    let bb = beta * beta;
    [
        y * y * a + bb * b + 2.0 * beta * y * c + n,
        x * x * a + bb * b - 2.0 * beta * x * c + n,
        -x * y * a + bb * b + beta * (1.0 - 2.0 * x) * c + n,
    ]
}

type Mat4 = [[f64; 4]; 4];

fn mat4_mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut out = [[0.0; 4]; 4];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            *o = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// `t` heavy-ball steps from `[s0, 0, 0]` by squaring the affine map as a 4×4 matrix
/// (`O(log t)` products).
fn hb_dim(s0: f64, x: f64, beta: f64, n: f64, t: u64) -> [f64; 3] {
    let y = 1.0 - x;
    let bb = beta * beta;
    let mut base: Mat4 = [
        [y * y, bb, 2.0 * beta * y, n],
        [x * x, bb, -2.0 * beta * x, n],
        [-x * y, bb, beta * (1.0 - 2.0 * x), n],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let mut acc: Mat4 = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let mut k = t;
    while k > 0 {
        if k & 1 == 1 {
            acc = mat4_mul(&acc, &base);
        }
        k >>= 1;
        if k > 0 {
            base = mat4_mul(&base, &base);
        }
    }
    // Applied to (s0, 0, 0, 1).
    [
        acc[0][0] * s0 + acc[0][3],
        acc[1][0] * s0 + acc[1][3],
        acc[2][0] * s0 + acc[2][3],
    ]
}

impl NqmTheory {
    /// The model with curvatures `h` (all positive, finite) and noise variances `c` (all
    /// non-negative, finite), of equal non-zero length.
    pub fn new(h: Vec<f64>, c: Vec<f64>) -> Result<Self, ConfigError> {
        crate::error::ensure(!h.is_empty(), "nqm.h", "[]", "at least one dimension")?;
        crate::error::ensure(
            h.len() == c.len(),
            "nqm.c",
            format!("{} values", c.len()),
            &format!("{} values, one per curvature", h.len()),
        )?;
        if let Some((i, v)) = h
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v > 0.0))
        {
            return Err(ConfigError::invalid(
                format!("nqm.h[{i}]"),
                v,
                "a finite curvature > 0",
            ));
        }
        if let Some((i, v)) = c
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
        {
            return Err(ConfigError::invalid(
                format!("nqm.c[{i}]"),
                v,
                "a finite noise variance >= 0",
            ));
        }
        Ok(Self { h, c })
    }

    /// The paper's spectrum: `h_i = i^{−p}` for `i = 1..=dim`, and
    /// `c_i = noise_scale · h_i^{noise_power}` (`noise_power = 1` gives `C ∝ H`, the paper's
    /// default with `noise_scale = 1`; `noise_power = 0` gives isotropic noise).
    pub fn power_law(
        dim: usize,
        p: f64,
        noise_scale: f64,
        noise_power: f64,
    ) -> Result<Self, ConfigError> {
        crate::error::ensure(dim > 0, "nqm.dim", dim, "at least 1")?;
        crate::error::ensure(p.is_finite(), "nqm.p", p, "a finite exponent")?;
        crate::error::ensure(
            noise_power.is_finite(),
            "nqm.noise_power",
            noise_power,
            "a finite exponent",
        )?;
        let h: Vec<f64> = (1..=dim).map(|i| (i as f64).powf(-p)).collect();
        let c = h
            .iter()
            .map(|hi| noise_scale * hi.powf(noise_power))
            .collect();
        Self::new(h, c)
    }

    /// The curvatures `h_i`.
    pub fn h(&self) -> &[f64] {
        &self.h
    }

    /// The per-sample noise variances `c_i`.
    pub fn c(&self) -> &[f64] {
        &self.c
    }

    /// Number of dimensions.
    pub fn dim(&self) -> usize {
        self.h.len()
    }

    /// `h_max`.
    pub fn h_max(&self) -> f64 {
        self.h.iter().copied().fold(0.0, f64::max)
    }

    /// `½ Σ h_i s_i`: the expected loss at expected squares `s`.
    pub fn expected_loss(&self, s: &[f64]) -> f64 {
        debug_assert_eq!(s.len(), self.dim());
        0.5 * self.h.iter().zip(s).map(|(h, s)| h * s).sum::<f64>()
    }

    /// `B_simple = Σ c_i / Σ h_i² θ_i²` at a state given by its squares (pass `s_i = E[θ_i²]` for
    /// the expected state; the ratio then uses `E|G|²` in the denominator).
    pub fn b_simple(&self, theta_sq: &[f64]) -> f64 {
        let num: f64 = self.c.iter().sum();
        let den: f64 = self.h.iter().zip(theta_sq).map(|(h, s)| h * h * s).sum();
        num / den
    }

    /// `B_noise = Σ h_i c_i / Σ h_i³ θ_i²` at a state given by its squares (as
    /// [`b_simple`](Self::b_simple)).
    pub fn b_noise(&self, theta_sq: &[f64]) -> f64 {
        let num: f64 = self.h.iter().zip(&self.c).map(|(h, c)| h * c).sum();
        let den: f64 = self
            .h
            .iter()
            .zip(theta_sq)
            .map(|(h, s)| h * h * h * s)
            .sum();
        num / den
    }

    // ---------------------------------------------------------------- SGD

    /// The largest stable SGD rate, `2 / h_max` (stable iff `α` is below it).
    pub fn sgd_stable_lr(&self) -> f64 {
        2.0 / self.h_max()
    }

    /// `s*_i = α c_i / (B h_i (2 − α h_i))`, the stationary expected squares of SGD
    /// (meaningful for `0 < α < 2/h_max`).
    pub fn sgd_fixed_point(&self, lr: f64, batch: f64) -> Vec<f64> {
        self.h
            .iter()
            .zip(&self.c)
            .map(|(h, c)| lr * c / (batch * h * (2.0 - lr * h)))
            .collect()
    }

    /// `s_i(t)` for every dimension after `t` SGD steps from expected squares `s0`.
    pub fn sgd_state(&self, s0: &[f64], lr: f64, batch: f64, t: u64) -> Vec<f64> {
        debug_assert_eq!(s0.len(), self.dim());
        let nf = lr * lr / batch;
        (0..self.dim())
            .map(|i| sgd_dim(s0[i], lr * self.h[i], nf * self.c[i], t))
            .collect()
    }

    /// `E[L](t) = ½ Σ h_i s_i(t)` after `t` SGD steps (closed form, `O(dim)` whatever `t`).
    pub fn sgd_expected_loss(&self, s0: &[f64], lr: f64, batch: f64, t: u64) -> f64 {
        debug_assert_eq!(s0.len(), self.dim());
        let nf = lr * lr / batch;
        0.5 * (0..self.dim())
            .map(|i| self.h[i] * sgd_dim(s0[i], lr * self.h[i], nf * self.c[i], t))
            .sum::<f64>()
    }

    /// `E[L](t)` for `t = 0..=steps` (`steps + 1` values), by the recursion.
    pub fn sgd_curve(&self, s0: &[f64], lr: f64, batch: f64, steps: u64) -> Vec<f64> {
        let mut s = s0.to_vec();
        let mut out = Vec::with_capacity(steps as usize + 1);
        out.push(self.expected_loss(&s));
        for _ in 0..steps {
            for (i, si) in s.iter_mut().enumerate() {
                let x = lr * self.h[i];
                *si = (1.0 - x) * (1.0 - x) * *si + lr * lr * self.c[i] / batch;
            }
            out.push(self.expected_loss(&s));
        }
        out
    }

    /// Whether some dimension that moves (`s0_i > 0` or `c_i > 0`) has `αh_i ≥ 2` (or `α < 0`).
    fn sgd_unstable(&self, s0: &[f64], lr: f64) -> bool {
        lr < 0.0
            || (0..self.dim()).any(|i| lr * self.h[i] >= 2.0 && (s0[i] > 0.0 || self.c[i] > 0.0))
    }

    /// The first `t ≤ max_steps` with `E[L](t) ≤ target`, or `None`.
    ///
    /// An unstable rate (some moving dimension with `αh_i ≥ 2`) counts as diverged and gives
    /// `None`, even where its expected loss would dip below the target before it grows without
    /// bound.
    ///
    /// `E[L](t)` is a sum of exponentials `½h_i (s*_i + r_i^t (s_i(0) − s*_i))`. When every term
    /// decreases (`s_i(0) ≥ s*_i`, the usual start far from the optimum) the loss is monotone and
    /// the first crossing is found by bisection on the closed form, `O(dim · log max_steps)`.
    /// Otherwise the recursion is scanned step by step, `O(dim)` a step, stopping early once the
    /// increasing terms plus the limits of the decreasing ones exceed the target (a lower bound
    /// on every later loss).
    pub fn sgd_steps_to_target(
        &self,
        s0: &[f64],
        lr: f64,
        batch: f64,
        target: f64,
        max_steps: u64,
    ) -> Option<u64> {
        debug_assert_eq!(s0.len(), self.dim());
        if self.expected_loss(s0) <= target {
            return Some(0);
        }
        if self.sgd_unstable(s0, lr) {
            return None;
        }
        let nf = lr * lr / batch;
        let decreasing = |i: usize| {
            let x = lr * self.h[i];
            nf * self.c[i] <= s0[i] * x * (2.0 - x)
        };
        if (0..self.dim()).all(decreasing) {
            if self.sgd_expected_loss(s0, lr, batch, max_steps) > target {
                return None;
            }
            // Invariant: L(lo) > target, L(hi) ≤ target.
            let (mut lo, mut hi) = (0u64, max_steps);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.sgd_expected_loss(s0, lr, batch, mid) <= target {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            return Some(hi);
        }
        // Non-monotone: scan, with the floor of the decreasing terms for early exit.
        let is_dec: Vec<bool> = (0..self.dim()).map(decreasing).collect();
        let floor: f64 = (0..self.dim())
            .filter(|&i| is_dec[i])
            .map(|i| {
                let x = lr * self.h[i];
                let limit = if x > 0.0 {
                    nf * self.c[i] / (x * (2.0 - x))
                } else {
                    s0[i]
                };
                0.5 * self.h[i] * limit
            })
            .sum();
        let mut s = s0.to_vec();
        for t in 1..=max_steps {
            let (mut loss, mut rising) = (0.0, 0.0);
            for (i, si) in s.iter_mut().enumerate() {
                let x = lr * self.h[i];
                *si = (1.0 - x) * (1.0 - x) * *si + nf * self.c[i];
                let term = 0.5 * self.h[i] * *si;
                loss += term;
                if !is_dec[i] {
                    rising += term;
                }
            }
            if loss <= target {
                return Some(t);
            }
            if rising + floor > target {
                return None;
            }
        }
        None
    }

    /// The steps to `target` as a real number: the first integer crossing `t` of
    /// [`sgd_steps_to_target`](Self::sgd_steps_to_target), less the fraction of the last step
    /// that `ln E[L]` still had to fall, `t − 1 + (ln L(t−1) − ln target)/(ln L(t−1) − ln L(t))`
    /// (`docs/science.md#steps-to-target`). A continuous `S` makes the best rate a smooth
    /// optimum instead of a staircase.
    pub fn sgd_steps_continuous(
        &self,
        s0: &[f64],
        lr: f64,
        batch: f64,
        target: f64,
        max_steps: u64,
    ) -> Option<f64> {
        let t = self.sgd_steps_to_target(s0, lr, batch, target, max_steps)?;
        if t == 0 {
            return Some(0.0);
        }
        let (before, after) = (
            self.sgd_expected_loss(s0, lr, batch, t - 1).ln(),
            self.sgd_expected_loss(s0, lr, batch, t).ln(),
        );
        let frac = ((before - target.ln()) / (before - after)).clamp(0.0, 1.0);
        Some((t - 1) as f64 + if frac.is_finite() { frac } else { 1.0 })
    }

    /// The best constant SGD rate for `batch` in `[lo, hi]` by continuous steps
    /// ([`sgd_steps_continuous`](Self::sgd_steps_continuous)): the best of a log grid of 128
    /// rates, refined by golden section over its two neighbouring cells in `ln α` to a relative
    /// `1e-6`. `None` when no rate reaches the target within `max_steps`. This is the
    /// closed-form optimum a measured sweep is compared with (`docs/science.md#steps-to-target`).
    pub fn best_sgd_rate_continuous(
        &self,
        s0: &[f64],
        batch: f64,
        target: f64,
        max_steps: u64,
        (lo, hi): (f64, f64),
    ) -> Option<(f64, f64)> {
        let grid = log_grid(lo, hi, 128);
        let steps = |ln_lr: f64| {
            self.sgd_steps_continuous(s0, ln_lr.exp(), batch, target, max_steps)
                .unwrap_or(f64::INFINITY)
        };
        let (k, best) = grid.iter().map(|lr| steps(lr.ln())).enumerate().fold(
            (0, f64::INFINITY),
            |acc, (k, s)| if s < acc.1 { (k, s) } else { acc },
        );
        if !best.is_finite() {
            return None;
        }
        let (x, s) = golden_min(
            steps,
            grid[k.saturating_sub(1)].ln(),
            grid[(k + 1).min(grid.len() - 1)].ln(),
            1e-6,
        );
        Some(if s <= best {
            (x.exp(), s)
        } else {
            (grid[k], best)
        })
    }

    /// The rate of `grid` with the fewest SGD steps to `target` (ties: the earlier rate), or
    /// `None` when no rate reaches it within `max_steps`.
    pub fn best_sgd_lr(
        &self,
        s0: &[f64],
        batch: f64,
        target: f64,
        max_steps: u64,
        grid: &[f64],
    ) -> Option<BestRate> {
        let mut best: Option<BestRate> = None;
        for &lr in grid {
            // Only a strictly better rate can replace the current best.
            let limit = match best {
                Some(b) if b.steps == 0 => break,
                Some(b) => b.steps - 1,
                None => max_steps,
            };
            if let Some(steps) = self.sgd_steps_to_target(s0, lr, batch, target, limit) {
                best = Some(BestRate { lr, steps });
            }
        }
        best
    }

    /// For each batch size, [`best_sgd_lr`](Self::best_sgd_lr) over `grid`: the `(B, S)` pairs of
    /// a critical-batch experiment in expectation (fitting `S = S_min(1 + B_crit/B)` is left to
    /// the caller). Make the grid wide and fine enough that the best rate is not at its edge.
    pub fn sgd_critical_batch(
        &self,
        s0: &[f64],
        batches: &[f64],
        target: f64,
        max_steps: u64,
        grid: &[f64],
    ) -> Vec<SweepPoint> {
        batches
            .iter()
            .map(|&batch| SweepPoint {
                batch,
                best: self.best_sgd_lr(s0, batch, target, max_steps, grid),
            })
            .collect()
    }

    // --------------------------------------------------------- heavy ball

    /// The largest stable heavy-ball rate, `2(1+β) / h_max` (stable iff `0 < αh_i < 2(1+β)`
    /// for every `i`, with `|β| < 1`).
    pub fn heavy_ball_stable_lr(&self, beta: f64) -> f64 {
        2.0 * (1.0 + beta) / self.h_max()
    }

    /// Per dimension, `[E θ², α² E v², −α E θv]` after `t` heavy-ball steps from
    /// `E θ² = s0`, `v = 0` (the state of the 3×3 recursion; `O(log t)` per dimension).
    pub fn heavy_ball_moments(
        &self,
        s0: &[f64],
        lr: f64,
        beta: f64,
        batch: f64,
        t: u64,
    ) -> Vec<[f64; 3]> {
        debug_assert_eq!(s0.len(), self.dim());
        let nf = lr * lr / batch;
        (0..self.dim())
            .map(|i| hb_dim(s0[i], lr * self.h[i], beta, nf * self.c[i], t))
            .collect()
    }

    /// `E[L](t) = ½ Σ h_i E[θ_i²](t)` after `t` heavy-ball steps (velocity starts at 0).
    pub fn heavy_ball_expected_loss(
        &self,
        s0: &[f64],
        lr: f64,
        beta: f64,
        batch: f64,
        t: u64,
    ) -> f64 {
        let moments = self.heavy_ball_moments(s0, lr, beta, batch, t);
        0.5 * self
            .h
            .iter()
            .zip(&moments)
            .map(|(h, m)| h * m[0])
            .sum::<f64>()
    }

    /// `E[L](t)` for `t = 0..=steps` (`steps + 1` values), by the recursion.
    pub fn heavy_ball_curve(
        &self,
        s0: &[f64],
        lr: f64,
        beta: f64,
        batch: f64,
        steps: u64,
    ) -> Vec<f64> {
        let nf = lr * lr / batch;
        let mut state: Vec<[f64; 3]> = s0.iter().map(|&s| [s, 0.0, 0.0]).collect();
        let mut out = Vec::with_capacity(steps as usize + 1);
        out.push(self.expected_loss(s0));
        for _ in 0..steps {
            let mut loss = 0.0;
            for (i, st) in state.iter_mut().enumerate() {
                *st = hb_step(lr * self.h[i], beta, nf * self.c[i], *st);
                loss += 0.5 * self.h[i] * st[0];
            }
            out.push(loss);
        }
        out
    }

    /// The first `t ≤ max_steps` with heavy-ball `E[L](t) ≤ target`, or `None`.
    ///
    /// With momentum the expected loss oscillates, so there is no bisection: the recursion is
    /// scanned step by step (`O(dim)` a step) up to the first crossing. An unstable setting
    /// (`|β| ≥ 1`, `α < 0`, or a moving dimension with `αh_i ≥ 2(1+β)`) gives `None`, as for
    /// [`sgd_steps_to_target`](Self::sgd_steps_to_target).
    pub fn heavy_ball_steps_to_target(
        &self,
        s0: &[f64],
        lr: f64,
        beta: f64,
        batch: f64,
        target: f64,
        max_steps: u64,
    ) -> Option<u64> {
        debug_assert_eq!(s0.len(), self.dim());
        if self.expected_loss(s0) <= target {
            return Some(0);
        }
        let unstable = beta.is_nan()
            || beta.abs() >= 1.0
            || lr < 0.0
            || (0..self.dim())
                .any(|i| lr * self.h[i] >= 2.0 * (1.0 + beta) && (s0[i] > 0.0 || self.c[i] > 0.0));
        if unstable {
            return None;
        }
        let nf = lr * lr / batch;
        let mut state: Vec<[f64; 3]> = s0.iter().map(|&s| [s, 0.0, 0.0]).collect();
        for t in 1..=max_steps {
            let mut loss = 0.0;
            for (i, st) in state.iter_mut().enumerate() {
                *st = hb_step(lr * self.h[i], beta, nf * self.c[i], *st);
                loss += 0.5 * self.h[i] * st[0];
            }
            if loss <= target {
                return Some(t);
            }
            if !loss.is_finite() {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, rng};
    use approx::assert_relative_eq;
    use rand::Rng;
    use rand_distr::StandardNormal;

    /// Mean and standard error of the mean of each column.
    fn mean_se(rows: &[Vec<f64>]) -> Vec<(f64, f64)> {
        let n = rows.len() as f64;
        (0..rows[0].len())
            .map(|j| {
                let m = rows.iter().map(|r| r[j]).sum::<f64>() / n;
                let var = rows.iter().map(|r| (r[j] - m).powi(2)).sum::<f64>() / (n - 1.0);
                (m, (var / n).sqrt())
            })
            .collect()
    }

    fn three_dims() -> NqmTheory {
        NqmTheory::new(vec![1.0, 0.3, 0.05], vec![2.0, 0.5, 1.0]).unwrap()
    }

    /// Independent reference: simulate `θ ← θ − α(hθ + mean of B draws of N(0, c))` over many
    /// seeded runs; the closed-form loss lies within 5 standard errors of the Monte Carlo mean.
    #[test]
    fn sgd_expected_loss_matches_monte_carlo() {
        let nqm = three_dims();
        let theta0 = [1.0, -2.0, 3.0];
        let s0: Vec<f64> = theta0.iter().map(|t| t * t).collect();
        let (lr, batch) = (0.8, 4usize);
        let checkpoints = [1u64, 3, 10, 30, 60];
        let runs = 4000;
        let mut rows = Vec::with_capacity(runs);
        for run in 0..runs {
            let mut r = rng(31, Stream::Aux, run as u64);
            let mut theta = theta0.to_vec();
            let mut row = Vec::new();
            for t in 1..=*checkpoints.last().unwrap() {
                for (i, th) in theta.iter_mut().enumerate() {
                    let noise: f64 = (0..batch)
                        .map(|_| r.sample::<f64, _>(StandardNormal))
                        .sum::<f64>()
                        * nqm.c()[i].sqrt()
                        / batch as f64;
                    *th -= lr * (nqm.h()[i] * *th + noise);
                }
                if checkpoints.contains(&t) {
                    row.push(
                        0.5 * (0..3)
                            .map(|i| nqm.h()[i] * theta[i] * theta[i])
                            .sum::<f64>(),
                    );
                }
            }
            rows.push(row);
        }
        for (&t, (m, se)) in checkpoints.iter().zip(mean_se(&rows)) {
            let exact = nqm.sgd_expected_loss(&s0, lr, batch as f64, t);
            assert!(
                (m - exact).abs() < 5.0 * se,
                "t = {t}: MC {m} ± {se}, closed form {exact}"
            );
        }
    }

    /// Independent reference for the 3×3 matrix: simulate `v ← βv + g`, `θ ← θ − αv` and compare
    /// every component `[E θ², α² E v², −α E θv]` of every dimension, within 5 standard errors.
    #[test]
    fn heavy_ball_moments_match_monte_carlo() {
        let nqm = three_dims();
        let theta0 = [1.0, -2.0, 3.0];
        let s0: Vec<f64> = theta0.iter().map(|t| t * t).collect();
        // x = 1.5 (oscillating), 0.45, 0.075; stable below 2(1+β) = 3.8.
        let (lr, beta, batch) = (1.5, 0.9, 4usize);
        let checkpoints = [1u64, 2, 5, 12, 40];
        let runs = 4000;
        let mut rows = Vec::with_capacity(runs);
        for run in 0..runs {
            let mut r = rng(32, Stream::Aux, run as u64);
            let (mut theta, mut v) = (theta0.to_vec(), [0.0; 3]);
            let mut row = Vec::new();
            for t in 1..=*checkpoints.last().unwrap() {
                for i in 0..3 {
                    let noise: f64 = (0..batch)
                        .map(|_| r.sample::<f64, _>(StandardNormal))
                        .sum::<f64>()
                        * nqm.c()[i].sqrt()
                        / batch as f64;
                    let g = nqm.h()[i] * theta[i] + noise;
                    v[i] = beta * v[i] + g;
                    theta[i] -= lr * v[i];
                }
                if checkpoints.contains(&t) {
                    for i in 0..3 {
                        row.extend([
                            theta[i] * theta[i],
                            lr * lr * v[i] * v[i],
                            -lr * theta[i] * v[i],
                        ]);
                    }
                    row.push(
                        0.5 * (0..3)
                            .map(|i| nqm.h()[i] * theta[i] * theta[i])
                            .sum::<f64>(),
                    );
                }
            }
            rows.push(row);
        }
        let stats = mean_se(&rows);
        for (k, &t) in checkpoints.iter().enumerate() {
            let moments = nqm.heavy_ball_moments(&s0, lr, beta, batch as f64, t);
            let loss = nqm.heavy_ball_expected_loss(&s0, lr, beta, batch as f64, t);
            let exact: Vec<f64> = moments.iter().flatten().copied().chain([loss]).collect();
            for (j, e) in exact.iter().enumerate() {
                let (m, se) = stats[k * 10 + j];
                assert!(
                    (m - e).abs() < 5.0 * se,
                    "t = {t}, component {j}: MC {m} ± {se}, closed form {e}"
                );
            }
        }
    }

    /// `h = (2, 0.5)`, `c = (1, 3)`, `α = 0.4`, `B = 2`:
    /// `s*_1 = 0.4·1 / (2·2·(2 − 0.8)) = 1/12`, `s*_2 = 0.4·3 / (2·0.5·(2 − 0.2)) = 2/3`.
    #[test]
    fn sgd_fixed_point_is_s_star() {
        let nqm = NqmTheory::new(vec![2.0, 0.5], vec![1.0, 3.0]).unwrap();
        let (lr, batch) = (0.4, 2.0);
        let star = nqm.sgd_fixed_point(lr, batch);
        assert_relative_eq!(star[0], 1.0 / 12.0, max_relative = 1e-12);
        assert_relative_eq!(star[1], 2.0 / 3.0, max_relative = 1e-12);
        // A fixed point of the one-step recursion, written out by hand.
        for (i, &si) in star.iter().enumerate() {
            let x: f64 = lr * nqm.h()[i];
            let next = (1.0 - x).powi(2) * si + lr * lr * nqm.c()[i] / batch;
            assert_relative_eq!(next, si, max_relative = 1e-12);
        }
        // Started there, SGD stays; started elsewhere, it converges there.
        let stay = nqm.sgd_state(&star, lr, batch, 17);
        let far = nqm.sgd_state(&[5.0, 0.0], lr, batch, 100_000);
        for i in 0..2 {
            assert_relative_eq!(stay[i], star[i], max_relative = 1e-12);
            assert_relative_eq!(far[i], star[i], max_relative = 1e-12);
        }
        let l_inf = 0.5 * (2.0 / 12.0 + 0.5 * 2.0 / 3.0);
        assert_relative_eq!(
            nqm.sgd_expected_loss(&[5.0, 0.0], lr, batch, 100_000),
            l_inf,
            max_relative = 1e-12
        );
    }

    #[test]
    fn closed_form_agrees_with_the_recursion() {
        let nqm = NqmTheory::power_law(50, 1.0, 1.0, 1.0).unwrap();
        let s0 = vec![1.0; 50];
        for lr in [0.3, 1.0, 1.7] {
            let curve = nqm.sgd_curve(&s0, lr, 8.0, 200);
            for t in [0u64, 1, 2, 7, 50, 200] {
                assert_relative_eq!(
                    curve[t as usize],
                    nqm.sgd_expected_loss(&s0, lr, 8.0, t),
                    max_relative = 1e-9
                );
            }
            let hb = nqm.heavy_ball_curve(&s0, lr, 0.7, 8.0, 200);
            for t in [0u64, 1, 2, 7, 50, 200] {
                let closed = nqm.heavy_ball_expected_loss(&s0, lr, 0.7, 8.0, t);
                assert_relative_eq!(hb[t as usize], closed, max_relative = 1e-9);
            }
        }
    }

    #[test]
    fn sgd_stability_boundary_is_two_over_h_max() {
        let nqm = NqmTheory::power_law(100, 1.0, 1.0, 1.0).unwrap();
        assert_relative_eq!(nqm.sgd_stable_lr(), 2.0, max_relative = 1e-15);
        let s0 = vec![1.0; 100];
        let l0 = nqm.expected_loss(&s0);
        let edge = nqm.sgd_stable_lr();
        // A large batch keeps the noise floor (which grows as α → 2/h_max) below L(0).
        let batch = 1e4;
        let below = nqm.sgd_expected_loss(&s0, 0.99 * edge, batch, 10_000);
        let later = nqm.sgd_expected_loss(&s0, 0.99 * edge, batch, 20_000);
        let above = nqm.sgd_expected_loss(&s0, 1.01 * edge, batch, 10_000);
        assert!(below < l0, "below the edge: {below} vs L(0) = {l0}");
        assert_relative_eq!(below, later, max_relative = 1e-9);
        assert!(above > 1e30, "above the edge: {above}");
        assert_eq!(
            nqm.sgd_steps_to_target(&s0, 1.01 * edge, batch, 0.5 * l0, 10_000),
            None
        );
    }

    #[test]
    fn heavy_ball_stability_boundary_is_two_one_plus_beta_over_h_max() {
        let nqm = NqmTheory::power_law(100, 1.0, 1.0, 1.0).unwrap();
        let beta = 0.5;
        assert_relative_eq!(nqm.heavy_ball_stable_lr(beta), 3.0, max_relative = 1e-15);
        let s0 = vec![1.0; 100];
        let l0 = nqm.expected_loss(&s0);
        let edge = nqm.heavy_ball_stable_lr(beta);
        let batch = 1e4;
        let below = nqm.heavy_ball_expected_loss(&s0, 0.99 * edge, beta, batch, 10_000);
        let later = nqm.heavy_ball_expected_loss(&s0, 0.99 * edge, beta, batch, 20_000);
        // 2000 steps: ~1e96, still finite (more would overflow the matrix power to NaN).
        let above = nqm.heavy_ball_expected_loss(&s0, 1.01 * edge, beta, batch, 2000);
        assert!(below < l0, "below the edge: {below} vs L(0) = {l0}");
        assert_relative_eq!(below, later, max_relative = 1e-9);
        assert!(above > 1e30, "above the edge: {above}");
        // Plain SGD would already diverge at this rate.
        assert!(nqm.sgd_expected_loss(&s0, 0.99 * edge, batch, 10_000) > 1e30);
        assert_eq!(
            nqm.heavy_ball_steps_to_target(&s0, 1.01 * edge, beta, batch, 0.5 * l0, 10_000),
            None
        );
    }

    /// `h = (2, 0.5)`, `c = (1, 3)`, `θ² = (0.25, 4)`:
    /// `B_simple = (1 + 3) / (4·0.25 + 0.25·4) = 2`,
    /// `B_noise = (2·1 + 0.5·3) / (8·0.25 + 0.125·4) = 3.5 / 2.5 = 1.4`.
    #[test]
    fn noise_scales_on_a_hand_computed_example() {
        let nqm = NqmTheory::new(vec![2.0, 0.5], vec![1.0, 3.0]).unwrap();
        assert_relative_eq!(nqm.b_simple(&[0.25, 4.0]), 2.0, max_relative = 1e-15);
        assert_relative_eq!(nqm.b_noise(&[0.25, 4.0]), 1.4, max_relative = 1e-15);
        // H ∝ I: the two agree.
        let iso = NqmTheory::new(vec![0.7, 0.7, 0.7], vec![1.0, 2.0, 0.5]).unwrap();
        let s = [1.0, 0.2, 3.0];
        assert_relative_eq!(iso.b_simple(&s), iso.b_noise(&s), max_relative = 1e-14);
    }

    #[test]
    fn steps_to_target_is_the_first_crossing_of_the_curve() {
        let nqm = NqmTheory::power_law(200, 1.0, 1.0, 1.0).unwrap();
        let first =
            |curve: &[f64], target: f64| curve.iter().position(|&l| l <= target).map(|t| t as u64);
        // Monotone (bisection) case: start far above the noise floor.
        let s0 = vec![4.0; 200];
        let curve = nqm.sgd_curve(&s0, 0.9, 32.0, 3000);
        for target in [1.0, 0.3, 0.1, 0.05] {
            assert_eq!(
                nqm.sgd_steps_to_target(&s0, 0.9, 32.0, target, 3000),
                first(&curve, target),
                "{target}"
            );
        }
        assert!(first(&curve, 0.05).is_some());
        // Non-monotone (scan) case: one dimension starts at 0 and rises to its floor.
        let mut mixed = vec![4.0; 200];
        mixed[0] = 0.0;
        let curve = nqm.sgd_curve(&mixed, 1.5, 64.0, 3000);
        for target in [2.0, 1.0, 0.3] {
            assert_eq!(
                nqm.sgd_steps_to_target(&mixed, 1.5, 64.0, target, 3000),
                first(&curve, target),
                "{target}"
            );
        }
        // Below the stationary loss: never, and the scan stops early on the lower bound.
        assert_eq!(
            nqm.sgd_steps_to_target(&mixed, 1.5, 64.0, 1e-4, u64::MAX),
            None
        );
        // Heavy ball: scan against its own curve.
        let hb = nqm.heavy_ball_curve(&s0, 0.5, 0.9, 32.0, 3000);
        for target in [1.0, 0.3, 0.1] {
            let steps = nqm.heavy_ball_steps_to_target(&s0, 0.5, 0.9, 32.0, target, 3000);
            assert_eq!(steps, first(&hb, target), "{target}");
        }
        assert_eq!(nqm.sgd_steps_to_target(&s0, 0.9, 32.0, 1e9, 10), Some(0));
    }

    #[test]
    fn best_rate_is_the_argmin_and_steps_do_not_grow_with_batch() {
        let nqm = NqmTheory::power_law(100, 1.0, 1.0, 1.0).unwrap();
        let s0 = vec![1.0; 100];
        let target = 0.05;
        let grid = log_grid(0.01, 1.99, 25);
        assert_eq!(grid.len(), 25);
        assert_relative_eq!(grid[0], 0.01);
        assert_eq!(grid[24], 1.99);
        let best = nqm.best_sgd_lr(&s0, 4.0, target, 100_000, &grid).unwrap();
        let all: Vec<Option<u64>> = grid
            .iter()
            .map(|&lr| nqm.sgd_steps_to_target(&s0, lr, 4.0, target, 100_000))
            .collect();
        let min = all.iter().flatten().min().copied().unwrap();
        assert_eq!(best.steps, min);
        assert_eq!(
            Some(best.steps),
            all[grid.iter().position(|&lr| lr == best.lr).unwrap()]
        );
        let batches = [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];
        let sweep = nqm.sgd_critical_batch(&s0, &batches, target, 100_000, &grid);
        let steps: Vec<u64> = sweep.iter().map(|p| p.best.unwrap().steps).collect();
        assert!(steps.windows(2).all(|w| w[1] <= w[0]), "{steps:?}");
        // Small batches: 4× the batch, nearly 4× fewer steps (linear scaling); large batches
        // gain little.
        assert!(steps[0] as f64 > 3.5 * steps[1] as f64, "{steps:?}");
        assert!((steps[5] as f64) < 1.5 * steps[6] as f64, "{steps:?}");
    }

    #[test]
    fn invalid_models_are_rejected_with_the_field() {
        let e = NqmTheory::new(vec![1.0, 0.0], vec![1.0, 1.0]).unwrap_err();
        assert!(e.to_string().contains("nqm.h[1]"), "{e}");
        let e = NqmTheory::new(vec![1.0], vec![-1.0]).unwrap_err();
        assert!(e.to_string().contains("nqm.c[0]"), "{e}");
        assert!(NqmTheory::new(vec![1.0], vec![]).is_err());
        assert!(NqmTheory::power_law(0, 1.0, 1.0, 1.0).is_err());
        let p = NqmTheory::power_law(4, 2.0, 3.0, 1.0).unwrap();
        assert_eq!(p.h(), &[1.0, 0.25, 1.0 / 9.0, 1.0 / 16.0]);
        assert_relative_eq!(p.c()[1], 0.75);
    }

    /// Continuous steps interpolate the integer crossing: between `t − 1` and `t`, and on a
    /// single noiseless coordinate (`E[L](t) = ½(1 − α)^{2t}`) equal to the exact real root
    /// `ln(2·target)/(2 ln(1 − α))`. The continuous optimum is no worse than the grid's best.
    #[test]
    fn continuous_steps_and_the_continuous_optimum() {
        let one = NqmTheory::new(vec![1.0], vec![0.0]).unwrap();
        let (lr, target) = (0.1f64, 0.01f64);
        let exact = (2.0 * target).ln() / (2.0 * (1.0f64 - lr).ln());
        let s = one
            .sgd_steps_continuous(&[1.0], lr, 1.0, target, 1000)
            .unwrap();
        assert!((s - exact).abs() < 0.05, "{s} vs {exact}");
        let t = one
            .sgd_steps_to_target(&[1.0], lr, 1.0, target, 1000)
            .unwrap();
        assert!(s > (t - 1) as f64 && s <= t as f64);

        let nqm = NqmTheory::power_law(50, 1.0, 1.0, 1.0).unwrap();
        let s0 = vec![1.0; 50];
        let target = 0.01 * nqm.expected_loss(&s0);
        let grid = log_grid(0.001, 1.99, 24);
        let coarse = nqm.best_sgd_lr(&s0, 16.0, target, 100_000, &grid).unwrap();
        let (lr, steps) = nqm
            .best_sgd_rate_continuous(&s0, 16.0, target, 100_000, (0.001, 1.99))
            .unwrap();
        assert!(steps <= coarse.steps as f64 + 1e-9, "{steps} vs {coarse:?}");
        assert!((lr / coarse.lr).ln().abs() < (1.99f64 / 0.001).ln() / 23.0 * 1.5);
    }
}
