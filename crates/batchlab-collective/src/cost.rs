//! The α-β cost model of `shared/science.md` and the byte counts of plans.

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
