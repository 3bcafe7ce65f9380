//! The α-β cost model of `docs/science.md#alpha-beta-model` and the byte counts of plans.

use crate::algorithms::ceil_log2;
use crate::{Algorithm, Op, Plan};

/// Modelled time in seconds of an all-reduce of `bytes` bytes per rank over `world` ranks, with
/// a per-message latency `alpha_s` (seconds) and a per-link bandwidth `beta_bytes_per_s`. With
/// `n = world`, `S = bytes`, `p = 2^⌊log₂ n⌋`, `L = ⌈log₂ n⌉`:
///
/// - ring: `2(n−1) α + 2(n−1)/n · S/β`;
/// - rhd: `2 log₂ n · α + 2(n−1)/n · S/β` when `n` is a power of two; otherwise the core runs on
///   `p` ranks and the fold and unfold each add a whole-buffer step:
///   `2 log₂ p · α + 2(p−1)/p · S/β + 2(α + S/β)`;
/// - tree (binomial, no pipelining): `2L (α + S/β)`, which is `2 log₂ n (α + S/β)` for powers of
///   two;
/// - centralized: `2(n−1)(α + S/β)`: rank 0's link carries the `n−1` incoming buffers one after
///   another, then the `n−1` outgoing ones.
///
/// The α term counts the steps of [`crate::plan`] (for centralized: the messages through rank
/// 0); the β term the bytes on the busiest link along the critical path. Pipelining (pieces of
/// `chunk_elems`) is not modelled. `world <= 1` costs nothing.
pub fn alpha_beta_time(
    algorithm: Algorithm,
    bytes: f64,
    world: usize,
    alpha_s: f64,
    beta_bytes_per_s: f64,
) -> f64 {
    if world <= 1 {
        return 0.0;
    }
    let n = world as f64;
    let whole = alpha_s + bytes / beta_bytes_per_s;
    match algorithm {
        Algorithm::Ring => {
            2.0 * (n - 1.0) * alpha_s + 2.0 * (n - 1.0) / n * bytes / beta_bytes_per_s
        }
        Algorithm::Rhd => {
            let log_p = world.ilog2();
            let p = (1usize << log_p) as f64;
            let core =
                2.0 * f64::from(log_p) * alpha_s + 2.0 * (p - 1.0) / p * bytes / beta_bytes_per_s;
            if world.is_power_of_two() {
                core
            } else {
                core + 2.0 * whole
            }
        }
        Algorithm::Tree => 2.0 * f64::from(ceil_log2(world)) * whole,
        Algorithm::Centralized => 2.0 * (n - 1.0) * whole,
    }
}

/// The factor from algorithm bandwidth to bus bandwidth for all-reduce, `2(n−1)/n`, as
/// nccl-tests reports it: `busbw = algbw · factor`, with `algbw = S / t`. It makes figures
/// comparable with the link bandwidth whatever the number of ranks (`0` for one rank).
///
/// # Panics
/// If `world == 0`.
pub fn bus_bandwidth_factor(world: usize) -> f64 {
    assert!(world >= 1, "bus_bandwidth_factor: world must be at least 1");
    let n = world as f64;
    2.0 * (n - 1.0) / n
}

/// Bytes that `plan`'s rank sends over the whole all-reduce, for elements of `elem_size` bytes.
pub fn bytes_per_rank_sent(plan: &Plan, elem_size: usize) -> usize {
    plan.steps
        .iter()
        .flat_map(|s| &s.ops)
        .filter_map(|op| match op {
            Op::Send { range, .. } => Some(range.len()),
            Op::RecvReduce { .. } | Op::RecvCopy { .. } => None,
        })
        .sum::<usize>()
        * elem_size
}

/// Latency and bandwidth of the α-β model fitted to measured all-reduce times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaBetaFit {
    /// Per-message latency α, seconds.
    pub alpha_s: f64,
    /// Per-link bandwidth β, bytes per second (infinite when the bytes explain nothing).
    pub beta_bytes_per_s: f64,
    /// Root mean square of the relative residuals `(model − t)/t`.
    pub rms_rel: f64,
}

/// Fits `α ≥ 0` and `1/β ≥ 0` of [`alpha_beta_time`] to `samples` of `(bytes, seconds)` of one
/// algorithm on `world` ranks, by least squares on relative residuals (the times span orders
/// of magnitude, so each sample counts by its relative error). The model is linear in `α` and
/// `1/β`: `t = a(n)·α + b(n, S)/β`. A coefficient that comes out negative is set to zero and the
/// other refitted. `None` with fewer than two samples, `world < 2`, or a non-positive time.
pub fn fit_alpha_beta(
    algorithm: Algorithm,
    world: usize,
    samples: &[(f64, f64)],
) -> Option<AlphaBetaFit> {
    if world < 2 || samples.len() < 2 || samples.iter().any(|&(_, t)| t.is_nan() || t <= 0.0) {
        return None;
    }
    // Rows of the design divided by t: a_i/t_i, b_i/t_i; target 1.
    let rows: Vec<(f64, f64)> = samples
        .iter()
        .map(|&(bytes, t)| {
            let a = alpha_beta_time(algorithm, bytes, world, 1.0, f64::INFINITY);
            let b = alpha_beta_time(algorithm, bytes, world, 0.0, 1.0);
            (a / t, b / t)
        })
        .collect();
    let (mut saa, mut sab, mut sbb, mut sa, mut sb) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(a, b) in &rows {
        saa += a * a;
        sab += a * b;
        sbb += b * b;
        sa += a;
        sb += b;
    }
    let det = saa * sbb - sab * sab;
    let (mut alpha, mut inv_beta) = if det.abs() > 1e-12 * saa * sbb {
        ((sa * sbb - sb * sab) / det, (sb * saa - sa * sab) / det)
    } else {
        (-1.0, -1.0)
    };
    if alpha < 0.0 || inv_beta < 0.0 {
        // The better of the two one-parameter fits.
        let only_alpha = if saa > 0.0 { sa / saa } else { 0.0 };
        let only_beta = if sbb > 0.0 { sb / sbb } else { 0.0 };
        let sse = |al: f64, ib: f64| {
            rows.iter()
                .map(|&(a, b)| (a * al + b * ib - 1.0).powi(2))
                .sum::<f64>()
        };
        (alpha, inv_beta) = if sse(only_alpha, 0.0) <= sse(0.0, only_beta) {
            (only_alpha, 0.0)
        } else {
            (0.0, only_beta)
        };
    }
    let rms_rel = (rows
        .iter()
        .map(|&(a, b)| (a * alpha + b * inv_beta - 1.0).powi(2))
        .sum::<f64>()
        / rows.len() as f64)
        .sqrt();
    Some(AlphaBetaFit {
        alpha_s: alpha,
        beta_bytes_per_s: if inv_beta > 0.0 {
            1.0 / inv_beta
        } else {
            f64::INFINITY
        },
        rms_rel,
    })
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    #[test]
    fn the_fit_recovers_the_latency_and_bandwidth_that_made_the_times() {
        for algorithm in Algorithm::ALL {
            for world in [2, 3, 4, 8] {
                let (alpha, beta) = (40e-6, 2.5e9);
                let samples: Vec<(f64, f64)> = (10..28)
                    .map(|k| {
                        let bytes = f64::from(1u32 << k);
                        // ±3% deterministic wobble, as measurements have.
                        let wobble = 1.0 + 0.03 * f64::from(k % 3) - 0.03;
                        (
                            bytes,
                            alpha_beta_time(algorithm, bytes, world, alpha, beta) * wobble,
                        )
                    })
                    .collect();
                let fit = fit_alpha_beta(algorithm, world, &samples).unwrap();
                assert!(
                    (fit.alpha_s / alpha - 1.0).abs() < 0.05,
                    "{algorithm:?} n={world}: α {}",
                    fit.alpha_s
                );
                assert!(
                    (fit.beta_bytes_per_s / beta - 1.0).abs() < 0.05,
                    "{algorithm:?} n={world}: β {}",
                    fit.beta_bytes_per_s
                );
                assert!(fit.rms_rel < 0.04 && fit.rms_rel > 0.01, "{}", fit.rms_rel);
            }
        }
    }

    #[test]
    fn a_fit_that_wants_a_negative_latency_gets_zero_and_degenerate_input_gets_none() {
        // Times that fall below the pure-bandwidth line at small sizes.
        let samples = [(1e3, 1e-7), (1e6, 1e-3), (1e7, 1e-2)];
        let fit = fit_alpha_beta(Algorithm::Ring, 2, &samples).unwrap();
        assert_eq!(fit.alpha_s, 0.0);
        assert!(fit.beta_bytes_per_s.is_finite() && fit.beta_bytes_per_s > 0.0);
        assert!(fit_alpha_beta(Algorithm::Ring, 1, &samples).is_none());
        assert!(fit_alpha_beta(Algorithm::Ring, 2, &samples[..1]).is_none());
        assert!(fit_alpha_beta(Algorithm::Ring, 2, &[(1.0, 0.0), (2.0, 1.0)]).is_none());
    }
}
