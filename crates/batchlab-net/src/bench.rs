//! The all-reduce benchmark on a worker: runs a [`BenchOrder`]'s ops through the mesh, times
//! every iteration and checks every result against the exact sum.
//!
//! Inputs are integers so that every sum is exact in `i64` and in `f32` (the sums stay below
//! 2²⁴ for up to 8000 ranks): plan rank `r` of `n` holds, at element `i` of iteration salt `s`,
//!
//! ```text
//!   x_r[i] = ((i + 3r + s) mod 61) − 30 + c_r,    c_r = ((7919 r + s) mod 4093) − 2046,
//! ```
//!
//! a pattern that depends on the element (a piece put at the wrong offset is caught), on the
//! rank (a piece taken from the wrong rank is caught: `c_r` differs for every `r < 4093`) and on
//! the iteration (a stale buffer is caught). The expected sum is periodic in `i` with period
//! 61, so checking costs one pass.

use std::time::Instant;

use batchlab_collective::PlanConfig;
use batchlab_core::driver::ReduceMode;

use crate::protocol::BenchOrder;
use serde::{Deserialize, Serialize};

use crate::NetError;
use crate::mesh::{Mesh, Phase, Wire};

const PERIOD: usize = 61;

/// One op's figures on one rank.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpResult {
    /// Seconds of each timed iteration on this rank.
    pub times_s: Vec<f64>,
    /// Elements that differed from the exact sum, over the checked iterations.
    pub wrong: u64,
    /// Iterations checked.
    pub checked: u64,
}

/// One phase of a sampled iteration, for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Index of the op in the spec.
    pub op: u32,
    /// Timed iteration.
    pub iter: u32,
    /// Plan step (`u32::MAX` for the whole iteration).
    pub step: u32,
    /// `iteration`, `send`, `wait`, `reduce` or `copy`.
    pub phase: String,
    /// The mesh rank on the other end (this rank for the whole iteration).
    pub peer: u32,
    /// Bytes moved.
    pub bytes: u64,
    /// Start, microseconds since the Unix epoch by this rank's clock.
    pub start_us: f64,
    /// Duration in microseconds.
    pub dur_us: f64,
}

/// What a rank reports for a benchmark spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchRankResult {
    /// The mesh rank.
    pub rank: usize,
    /// Whether it took part (a spec may name a subset of the ranks).
    pub member: bool,
    /// Per op of the spec, in order (empty when not a member).
    pub ops: Vec<OpResult>,
    /// Phases of the sampled iterations.
    pub trace: Vec<TraceEvent>,
}

/// Element types the benchmark reduces, with the integer pattern's conversion.
trait BenchElem: Wire + PartialEq {
    fn from_int(v: i64) -> Self;
}

impl BenchElem for i64 {
    fn from_int(v: i64) -> Self {
        v
    }
}

impl BenchElem for f32 {
    fn from_int(v: i64) -> Self {
        v as f32
    }
}

fn rank_offset(r: usize, salt: u64) -> i64 {
    ((7919 * r as u64 + salt) % 4093) as i64 - 2046
}

/// Fills `buf` with plan rank `r`'s input of iteration salt `salt`.
fn fill<T: BenchElem>(buf: &mut [T], r: usize, salt: u64) {
    let c = rank_offset(r, salt);
    let mut j = ((3 * r as u64 + salt) % PERIOD as u64) as usize;
    for x in buf {
        *x = T::from_int(j as i64 - 30 + c);
        j += 1;
        if j == PERIOD {
            j = 0;
        }
    }
}

/// Counts the elements of `buf` that differ from the exact sum over `n` ranks.
fn count_wrong<T: BenchElem>(buf: &[T], n: usize, salt: u64) -> u64 {
    let offsets: i64 = (0..n).map(|r| rank_offset(r, salt)).sum();
    let s = (salt % PERIOD as u64) as usize;
    let expected: Vec<T> = (0..PERIOD)
        .map(|i| {
            let base: i64 = (0..n).map(|r| ((i + 3 * r + s) % PERIOD) as i64 - 30).sum();
            T::from_int(base + offsets)
        })
        .collect();
    let mut wrong = 0;
    for x in buf.chunks(PERIOD) {
        wrong += x.iter().zip(&expected).filter(|(a, b)| a != b).count() as u64;
    }
    wrong
}

/// The salt of timed or warmup iteration `iter` of op `op`.
fn salt(seed: u64, op: usize, iter: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9)
        .wrapping_add((op as u64) << 20)
        .wrapping_add(iter)
        % (1 << 40)
}

/// Runs `spec` on this rank's mesh.
pub(crate) async fn run(
    spec: &BenchOrder,
    mesh: &mut Mesh,
    abort: crate::abort::AbortWatch,
) -> Result<BenchRankResult, NetError> {
    match spec.reduce {
        ReduceMode::Exact => run_typed::<i64>(spec, mesh, abort).await,
        ReduceMode::Fast => run_typed::<f32>(spec, mesh, abort).await,
    }
}

async fn run_typed<T: BenchElem + Default>(
    spec: &BenchOrder,
    mesh: &mut Mesh,
    abort: crate::abort::AbortWatch,
) -> Result<BenchRankResult, NetError> {
    let rank = mesh.rank();
    let world = mesh.world();
    let group: Vec<usize> = if spec.members.is_empty() {
        (0..world).collect()
    } else {
        spec.members.iter().map(|&m| m as usize).collect()
    };
    if let Some(&bad) = group.iter().find(|&&m| m >= world) {
        return Err(NetError::Config(format!(
            "benchmark member {bad} is out of range for {world} ranks"
        )));
    }
    let total: u64 = spec
        .ops
        .iter()
        .map(|o| u64::from(o.warmup) + u64::from(o.iters))
        .sum();
    let Some(me) = group.iter().position(|&m| m == rank) else {
        mesh.skip_collectives(total);
        return Ok(BenchRankResult {
            rank,
            member: false,
            ..BenchRankResult::default()
        });
    };
    if spec.peer_timeout_ms > 0 {
        mesh.set_recv_timeout(std::time::Duration::from_millis(spec.peer_timeout_ms));
    }
    mesh.set_transport(spec.transport.into())?;
    let n = group.len();
    let largest = spec.ops.iter().map(|o| o.bytes).max().unwrap_or(0) as usize / T::SIZE;
    let mut buf = vec![T::default(); largest];
    let corrupt = spec.corrupt_rank.is_some_and(|r| r as usize == rank);
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let zero = Instant::now();
    let wall_us = |t: Instant| epoch.as_secs_f64() * 1e6 + (t - zero).as_secs_f64() * 1e6;
    let mut out = BenchRankResult {
        rank,
        member: true,
        ops: Vec::with_capacity(spec.ops.len()),
        trace: Vec::new(),
    };
    let mut phases: Vec<Phase> = Vec::new();
    for (o, op) in spec.ops.iter().enumerate() {
        let algorithm = op.algorithm;
        let elems = op.bytes as usize / T::SIZE;
        let plan = batchlab_collective::plan(
            &PlanConfig {
                algorithm,
                chunk_elems: (spec.chunk_bytes as usize / T::SIZE).max(1),
            },
            me,
            n,
            elems,
        );
        let buf = &mut buf[..elems];
        let mut result = OpResult {
            times_s: Vec::with_capacity(op.iters as usize),
            ..OpResult::default()
        };
        let iters = u64::from(op.warmup) + u64::from(op.iters);
        for it in 0..iters {
            if let Some(a) = &*abort.borrow() {
                return Err(a.error());
            }
            let timed = it >= u64::from(op.warmup);
            let k = (it - u64::from(op.warmup).min(it)) as u32;
            let s = salt(spec.seed, o, it);
            fill(buf, me, s);
            let traced = timed && spec.trace_every > 0 && k.is_multiple_of(spec.trace_every);
            phases.clear();
            let t0 = Instant::now();
            let reduced =
                mesh.all_reduce_in(buf, &plan, Some(&group), traced.then_some(&mut phases));
            crate::abort::unless_aborted(reduced, &abort).await?;
            let t1 = Instant::now();
            if !timed {
                continue;
            }
            result.times_s.push((t1 - t0).as_secs_f64());
            if traced {
                out.trace.push(TraceEvent {
                    op: o as u32,
                    iter: k,
                    step: u32::MAX,
                    phase: "iteration".into(),
                    peer: rank as u32,
                    bytes: op.bytes,
                    start_us: wall_us(t0),
                    dur_us: (t1 - t0).as_secs_f64() * 1e6,
                });
                out.trace.extend(phases.iter().map(|p| TraceEvent {
                    op: o as u32,
                    iter: k,
                    step: p.step,
                    phase: p.kind.name().into(),
                    peer: p.peer as u32,
                    bytes: p.bytes as u64,
                    start_us: wall_us(p.start),
                    dur_us: (p.end - p.start).as_secs_f64() * 1e6,
                }));
            }
            if spec.check_all {
                if corrupt && !buf.is_empty() {
                    buf[0] = T::from_int(i64::MIN / 2);
                }
                result.wrong += count_wrong(buf, n, s);
                result.checked += 1;
            }
        }
        out.ops.push(result);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_sums_to_what_the_checker_expects_for_both_element_types() {
        for n in [1, 2, 3, 7, 64] {
            for s in [0, 5, 60, 61, 1 << 39] {
                let len = 200;
                let mut sum_i = vec![0i64; len];
                let mut sum_f = vec![0f32; len];
                let mut x_i = vec![0i64; len];
                let mut x_f = vec![0f32; len];
                for r in 0..n {
                    fill(&mut x_i, r, s);
                    fill(&mut x_f, r, s);
                    for k in 0..len {
                        // Independent of the checker: the formula in the module docs.
                        let want = ((k + 3 * r + s as usize) % 61) as i64 - 30
                            + ((7919 * r as u64 + s) % 4093) as i64
                            - 2046;
                        assert_eq!(x_i[k], want);
                        sum_i[k] += x_i[k];
                        sum_f[k] += x_f[k];
                    }
                }
                assert_eq!(count_wrong(&sum_i, n, s), 0, "n={n} s={s}");
                assert_eq!(count_wrong(&sum_f, n, s), 0, "n={n} s={s}");
                sum_i[17] += 1;
                sum_f[199] -= 1.0;
                assert_eq!(count_wrong(&sum_i, n, s), 1);
                assert_eq!(count_wrong(&sum_f, n, s), 1);
            }
        }
    }

    #[test]
    fn a_missing_or_duplicated_rank_or_a_shifted_piece_is_caught() {
        let (n, s, len) = (4, 9, 500);
        let input = |r: usize| {
            let mut x = vec![0i64; len];
            fill(&mut x, r, s);
            x
        };
        let sum_of = |ranks: &[usize]| {
            let mut acc = vec![0i64; len];
            for &r in ranks {
                acc.iter_mut().zip(input(r)).for_each(|(a, b)| *a += b);
            }
            acc
        };
        assert_eq!(count_wrong(&sum_of(&[0, 1, 2, 3]), n, s), 0);
        assert_eq!(count_wrong(&sum_of(&[0, 1, 2, 2]), n, s), len as u64);
        assert!(count_wrong(&sum_of(&[0, 1, 2]), n, s) > (len as u64) * 9 / 10);
        let mut shifted = sum_of(&[0, 1, 2, 3]);
        shifted.rotate_left(1);
        assert!(count_wrong(&shifted, n, s) > (len as u64) * 9 / 10);
        // Last iteration's result, checked against this iteration's salt.
        let mut stale = vec![0i64; len];
        for r in 0..n {
            let mut x = vec![0i64; len];
            fill(&mut x, r, s - 1);
            stale.iter_mut().zip(x).for_each(|(a, b)| *a += b);
        }
        assert!(count_wrong(&stale, n, s) > (len as u64) * 9 / 10);
    }
}
