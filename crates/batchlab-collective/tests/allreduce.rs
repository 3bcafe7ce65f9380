//! Every algorithm against the naive sum, the plan contract, and the closed forms of
//! `docs/science.md#all-reduce` (step counts, bytes per rank, α-β times).

use std::ops::Range;

use batchlab_collective::{
    Algorithm, Op, Plan, PlanConfig, PlanError, Step, alpha_beta_time, bus_bandwidth_factor,
    bytes_per_rank_sent, plan, plan_all, ring_chunk_ranges, run_in_memory, validate,
};
use proptest::prelude::*;

fn cfg(algorithm: Algorithm, chunk_elems: usize) -> PlanConfig {
    PlanConfig {
        algorithm,
        chunk_elems,
    }
}

/// The element-wise sum of all buffers, by a loop nobody could get wrong.
fn naive_sum<T: Copy>(buffers: &[Vec<T>], zero: T, add: impl Fn(T, T) -> T) -> Vec<T> {
    (0..buffers[0].len())
        .map(|i| buffers.iter().fold(zero, |acc, b| add(acc, b[i])))
        .collect()
}

fn send(peer: usize, range: Range<usize>) -> Op {
    Op::Send { peer, range }
}
fn reduce(peer: usize, range: Range<usize>) -> Op {
    Op::RecvReduce { peer, range }
}
fn copy(peer: usize, range: Range<usize>) -> Op {
    Op::RecvCopy { peer, range }
}
fn steps(ops: Vec<Vec<Op>>) -> Vec<Step> {
    ops.into_iter().map(|ops| Step { ops }).collect()
}

/// Buffer lengths worth testing: empty, tiny (below any world size), primes, and a spread of
/// lengths not divisible by most world sizes.
fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..=10usize,
        prop::sample::select(vec![11usize, 13, 17, 29, 31, 61, 97, 127]),
        10..=160usize,
    ]
}

/// (algorithm, world, len, chunk_elems); chunk 0 is "unchunked", otherwise 1 up to past `len`.
fn setups() -> impl Strategy<Value = (Algorithm, usize, usize, usize)> {
    (
        prop::sample::select(Algorithm::ALL.to_vec()),
        1..=9usize,
        lengths(),
    )
        .prop_flat_map(|(a, world, len)| (Just(a), Just(world), Just(len), 0..=len + 2))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn plans_validate_and_reduce_i64_words_to_the_wrapping_sum(
        ((algorithm, world, len, chunk), buffers) in setups().prop_flat_map(|s| {
            let (_, world, len, _) = s;
            (Just(s), prop::collection::vec(prop::collection::vec(any::<i64>(), len), world))
        })
    ) {
        let plans = plan_all(&cfg(algorithm, chunk), world, len);
        prop_assert_eq!(validate(&plans), Ok(()));
        let expected = naive_sum(&buffers, 0i64, i64::wrapping_add);
        let mut buffers = buffers;
        run_in_memory(&plans, &mut buffers, |a, x| *a = a.wrapping_add(x));
        for b in &buffers {
            prop_assert_eq!(b, &expected);
        }
    }

    #[test]
    fn small_integer_f64_values_sum_exactly(
        ((algorithm, world, len, chunk), buffers) in setups().prop_flat_map(|s| {
            let (_, world, len, _) = s;
            let value = (-1000i32..=1000).prop_map(f64::from);
            (Just(s), prop::collection::vec(prop::collection::vec(value, len), world))
        })
    ) {
        let plans = plan_all(&cfg(algorithm, chunk), world, len);
        let expected = naive_sum(&buffers, 0.0, |a, b| a + b);
        let mut buffers = buffers;
        run_in_memory(&plans, &mut buffers, |a, x| *a += x);
        for b in &buffers {
            prop_assert_eq!(b, &expected);
        }
    }

    /// Data-parallel replicas must agree to the bit even when the sum rounds: every element's
    /// final value is computed once and copied.
    #[test]
    fn every_rank_ends_with_the_same_bits_for_arbitrary_f64(
        ((algorithm, world, len, chunk), buffers) in setups().prop_flat_map(|s| {
            let (_, world, len, _) = s;
            (Just(s), prop::collection::vec(prop::collection::vec(-1e6f64..1e6, len), world))
        })
    ) {
        let plans = plan_all(&cfg(algorithm, chunk), world, len);
        let expected = naive_sum(&buffers, 0.0, |a, b| a + b);
        let mut buffers = buffers;
        run_in_memory(&plans, &mut buffers, |a, x| *a += x);
        for b in &buffers {
            prop_assert!(b.iter().zip(&buffers[0]).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        for (x, e) in buffers[0].iter().zip(&expected) {
            prop_assert!((x - e).abs() <= 1e-6 * 9.0, "{} vs {}", x, e);
        }
    }

    /// Chunking only splits messages: merging consecutive pieces gives the unchunked plan, and
    /// every piece but a range's last is exactly `chunk_elems` long.
    #[test]
    fn pieces_are_the_unchunked_ranges_cut_in_order((algorithm, world, len, chunk) in setups()) {
        for rank in 0..world {
            let whole = plan(&PlanConfig::unchunked(algorithm), rank, world, len);
            let cut = plan(&cfg(algorithm, chunk), rank, world, len);
            prop_assert_eq!(cut.steps.len(), whole.steps.len());
            for (c, w) in cut.steps.iter().zip(&whole.steps) {
                prop_assert!(chunk == 0 || c.ops.iter().all(|op| op.range().len() <= chunk));
                let mut merged: Vec<Op> = Vec::new();
                let mut last_piece = 0;
                for op in &c.ops {
                    match merged.last_mut() {
                        Some(last) if same_kind_and_peer(last, op)
                            && last.range().end == op.range().start
                            && last_piece == chunk => {
                            range_mut(last).end = op.range().end;
                        }
                        _ => merged.push(op.clone()),
                    }
                    last_piece = op.range().len();
                }
                prop_assert_eq!(&merged, &w.ops);
            }
        }
    }
}

/// Every algorithm, world 1..=9, every length up to 40 and a few chunk sizes, exhaustively:
/// the random cases above cannot miss a small corner.
#[test]
fn every_small_case_validates_and_sums_exactly() {
    for algorithm in Algorithm::ALL {
        for world in 1..=9 {
            for len in 0..=40 {
                for chunk in [0, 1, 2, 3, 7] {
                    let plans = plan_all(&cfg(algorithm, chunk), world, len);
                    assert_eq!(
                        validate(&plans),
                        Ok(()),
                        "{algorithm} {world} {len} {chunk}"
                    );
                    // Distinct powers of two per rank: any lost or doubled term shows.
                    let mut buffers: Vec<Vec<i64>> = (0..world)
                        .map(|r| (0..len).map(|i| (1i64 << r) * (i as i64 + 1)).collect())
                        .collect();
                    let expected = naive_sum(&buffers, 0i64, i64::wrapping_add);
                    run_in_memory(&plans, &mut buffers, |a, x| *a = a.wrapping_add(x));
                    for b in &buffers {
                        assert_eq!(b, &expected, "{algorithm} {world} {len} {chunk}");
                    }
                }
            }
        }
    }
}

fn same_kind_and_peer(a: &Op, b: &Op) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b) && a.peer() == b.peer()
}

fn range_mut(op: &mut Op) -> &mut Range<usize> {
    match op {
        Op::Send { range, .. } | Op::RecvReduce { range, .. } | Op::RecvCopy { range, .. } => range,
    }
}

/// In every plan built here a message lands in the same range it left from.
#[test]
fn messages_land_in_the_range_they_left_from() {
    for algorithm in Algorithm::ALL {
        for world in 1..=9 {
            for len in [1, 5, 12, 31] {
                let plans = plan_all(&cfg(algorithm, 3), world, len);
                for step in 0..plans[0].steps.len() {
                    for p in &plans {
                        let sent = p.steps[step].ops.iter().filter(|op| op.is_send());
                        for q in &plans {
                            let to_q: Vec<_> = sent
                                .clone()
                                .filter(|op| op.peer() == q.rank)
                                .map(Op::range)
                                .collect();
                            let from_p: Vec<_> = q.steps[step]
                                .ops
                                .iter()
                                .filter(|op| !op.is_send() && op.peer() == p.rank)
                                .map(Op::range)
                                .collect();
                            assert_eq!(to_q, from_p, "{algorithm} world {world} len {len}");
                        }
                    }
                }
            }
        }
    }
}

/// Step counts from the theory: ring `2(n−1)`, rhd `2 log₂ n` (powers of two) or
/// `2⌊log₂ n⌋ + 2`, tree `2⌈log₂ n⌉`, centralized 2; one rank: none.
#[test]
fn step_counts_match_the_theory() {
    #[rustfmt::skip]
    let table: &[(usize, [usize; 4])] = &[
        // world   ring tree rhd centralized
        (1,  [ 0,  0,  0, 0]),
        (2,  [ 2,  2,  2, 2]),
        (3,  [ 4,  4,  4, 2]),
        (4,  [ 6,  4,  4, 2]),
        (5,  [ 8,  6,  6, 2]),
        (6,  [10,  6,  6, 2]),
        (7,  [12,  6,  6, 2]),
        (8,  [14,  6,  6, 2]),
        (9,  [16,  8,  8, 2]),
        (16, [30,  8,  8, 2]),
        (17, [32, 10, 10, 2]),
    ];
    for &(world, counts) in table {
        for (algorithm, expected) in Algorithm::ALL.into_iter().zip(counts) {
            for rank in 0..world {
                let p = plan(&PlanConfig::unchunked(algorithm), rank, world, 40);
                assert_eq!(p.steps.len(), expected, "{algorithm}, world {world}");
            }
        }
    }
}

/// Ring rank `r` sends every segment but `(r+1)` in the reduce-scatter and every segment but
/// `(r+2)` in the all-gather: `2(n−1)/n · len` up to the rounding of those two segments.
#[test]
fn ring_sends_two_n_minus_one_over_n_of_the_buffer_per_rank() {
    for world in 2..=9 {
        for len in [1, 2, 7, 9, 64, 97, 100] {
            let segments = ring_chunk_ranges(len, world);
            for rank in 0..world {
                let sent =
                    bytes_per_rank_sent(&plan(&cfg(Algorithm::Ring, 4), rank, world, len), 1);
                let skipped =
                    segments[(rank + 1) % world].len() + segments[(rank + 2) % world].len();
                assert_eq!(
                    sent,
                    2 * len - skipped,
                    "world {world} len {len} rank {rank}"
                );
                let theory = 2.0 * (world - 1) as f64 / world as f64 * len as f64;
                assert!((sent as f64 - theory).abs() < 2.0, "{sent} vs {theory}");
                if len % world == 0 {
                    assert_eq!(sent as f64, theory);
                }
            }
        }
    }
}

/// Bytes per rank of the other algorithms, `S = len · elem_size`: rhd's core ranks send
/// `2(p−1)/p · S` (exactly, when `p` divides `len`) plus `S` to unfold a partner; extras and
/// tree/centralized ranks send `S` per edge; the root sends `S` per child.
#[test]
fn bytes_per_rank_match_the_closed_forms() {
    let elem = 8;
    for world in 2..=9usize {
        let len = 5040; // divisible by every p and n up to 9
        let s = len * elem;
        let p = 1usize << world.ilog2();
        let extra = world - p;
        for rank in 0..world {
            let sent = |a| bytes_per_rank_sent(&plan(&cfg(a, 7), rank, world, len), elem);
            let rhd = if rank < p {
                2 * (p - 1) * s / p + if rank < extra { s } else { 0 }
            } else {
                s
            };
            assert_eq!(sent(Algorithm::Rhd), rhd, "rhd world {world} rank {rank}");
            let children = (0..world)
                .filter(|&c| c != rank && tree_parent(c) == rank)
                .count();
            let to_parent = usize::from(rank != 0);
            assert_eq!(
                sent(Algorithm::Tree),
                (to_parent + children) * s,
                "tree {world} {rank}"
            );
            let central = if rank == 0 { (world - 1) * s } else { s };
            assert_eq!(
                sent(Algorithm::Centralized),
                central,
                "centralized {world} {rank}"
            );
        }
    }
}

/// The binomial tree's parent: clear the lowest set bit.
fn tree_parent(rank: usize) -> usize {
    rank & rank.wrapping_sub(1)
}

/// What the α-β model charges, read off the plans: one `α` per step, and per step the bytes
/// on the busiest rank's link (the larger of what it sends and receives).
fn plan_cost(plans: &[Plan], elem_size: usize) -> (usize, usize) {
    let num_steps = plans[0].steps.len();
    let busiest: usize = (0..num_steps)
        .map(|k| {
            plans
                .iter()
                .map(|p| {
                    let (sent, received): (Vec<&Op>, Vec<&Op>) =
                        p.steps[k].ops.iter().partition(|op| op.is_send());
                    let total =
                        |ops: Vec<&Op>| ops.iter().map(|op| op.range().len()).sum::<usize>();
                    total(sent).max(total(received))
                })
                .max()
                .unwrap_or(0)
        })
        .sum();
    (num_steps, busiest * elem_size)
}

#[test]
fn alpha_beta_times_are_the_plans_steps_and_critical_bytes() {
    let elem = 4;
    for world in 2..=9usize {
        let len = 2520 * 4; // divisible by every n and p up to 9
        let s = (len * elem) as f64;
        for algorithm in Algorithm::ALL {
            let plans = plan_all(&cfg(algorithm, 0), world, len);
            let (num_steps, critical_bytes) = plan_cost(&plans, elem);
            let alpha_part = alpha_beta_time(algorithm, s, world, 1.0, f64::INFINITY);
            let beta_part = alpha_beta_time(algorithm, s, world, 0.0, 1.0);
            let alphas = match algorithm {
                // Rank 0 handles its n−1 messages one after another.
                Algorithm::Centralized => 2 * (world - 1),
                _ => num_steps,
            };
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y;
            assert!(
                close(alpha_part, alphas as f64),
                "{algorithm} world {world}: {alpha_part}"
            );
            assert!(
                close(beta_part, critical_bytes as f64),
                "{algorithm} world {world}: {beta_part}"
            );
        }
    }
}

#[test]
fn alpha_beta_times_follow_science_md_for_powers_of_two() {
    let (s, a, b) = (1e6, 1e-5, 1e9);
    for n in [2usize, 4, 8, 16, 64] {
        let nf = n as f64;
        let log = nf.log2();
        let bw = 2.0 * (nf - 1.0) / nf * s / b;
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y;
        assert!(close(
            alpha_beta_time(Algorithm::Ring, s, n, a, b),
            2.0 * (nf - 1.0) * a + bw
        ));
        assert!(close(
            alpha_beta_time(Algorithm::Rhd, s, n, a, b),
            2.0 * log * a + bw
        ));
        assert!(close(
            alpha_beta_time(Algorithm::Tree, s, n, a, b),
            2.0 * log * (a + s / b)
        ));
        assert!(close(
            alpha_beta_time(Algorithm::Centralized, s, n, a, b),
            2.0 * (nf - 1.0) * (a + s / b)
        ));
    }
    assert_eq!(alpha_beta_time(Algorithm::Ring, s, 1, a, b), 0.0);
}

#[test]
fn bus_bandwidth_factor_is_two_n_minus_one_over_n() {
    for (world, factor) in [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75), (5, 1.6)] {
        assert_eq!(bus_bandwidth_factor(world), factor);
    }
}

/// A worked example: world 3, len 7 (segments 0..3, 3..5, 5..7), pieces of at most 2.
#[test]
fn ring_plan_of_rank_0_in_a_world_of_3() {
    let expected = steps(vec![
        // reduce-scatter: send own segment onward, add the previous rank's
        vec![send(1, 0..2), send(1, 2..3), reduce(2, 5..7)],
        vec![send(1, 5..7), reduce(2, 3..5)],
        // all-gather: pass on the finished segment, copy the incoming one
        vec![send(1, 3..5), copy(2, 0..2), copy(2, 2..3)],
        vec![send(1, 0..2), send(1, 2..3), copy(2, 5..7)],
    ]);
    assert_eq!(plan(&cfg(Algorithm::Ring, 2), 0, 3, 7).steps, expected);
}

/// World 6 (p = 4): rank 1 folds in rank 5, halves and doubles with 3 then 0, unfolds to 5.
/// Blocks of 10 elements: 0..3, 3..6, 6..8, 8..10.
#[test]
fn rhd_plan_of_rank_1_in_a_world_of_6() {
    let expected = steps(vec![
        vec![reduce(5, 0..10)],
        vec![send(3, 6..10), reduce(3, 0..6)],
        vec![send(0, 0..3), reduce(0, 3..6)],
        vec![send(0, 3..6), copy(0, 0..3)],
        vec![send(3, 0..6), copy(3, 6..10)],
        vec![send(5, 0..10)],
    ]);
    assert_eq!(
        plan(&PlanConfig::unchunked(Algorithm::Rhd), 1, 6, 10).steps,
        expected
    );
    let extra = steps(vec![
        vec![send(1, 0..10)],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![copy(1, 0..10)],
    ]);
    assert_eq!(
        plan(&PlanConfig::unchunked(Algorithm::Rhd), 5, 6, 10).steps,
        extra
    );
}

/// World 6: rank 2 takes 3's buffer, passes the sum to 0, gets the result back, forwards it.
#[test]
fn tree_plan_of_rank_2_in_a_world_of_6() {
    let expected = steps(vec![
        vec![reduce(3, 0..4)],
        vec![send(0, 0..4)],
        vec![],
        vec![],
        vec![copy(0, 0..4)],
        vec![send(3, 0..4)],
    ]);
    assert_eq!(
        plan(&PlanConfig::unchunked(Algorithm::Tree), 2, 6, 4).steps,
        expected
    );
}

#[test]
fn centralized_root_adds_in_rank_order() {
    let expected = steps(vec![
        vec![reduce(1, 0..3), reduce(2, 0..3), reduce(3, 0..3)],
        vec![send(1, 0..3), send(2, 0..3), send(3, 0..3)],
    ]);
    assert_eq!(
        plan(&PlanConfig::unchunked(Algorithm::Centralized), 0, 4, 3).steps,
        expected
    );
}

/// Each broken plan set and the error `validate` names for it.
#[test]
fn validate_names_what_is_broken() {
    let two = |a: Vec<Vec<Op>>, b: Vec<Vec<Op>>| {
        vec![
            Plan {
                rank: 0,
                world: 2,
                len: 8,
                steps: steps(a),
            },
            Plan {
                rank: 1,
                world: 2,
                len: 8,
                steps: steps(b),
            },
        ]
    };
    let cases: Vec<(Vec<Plan>, &str)> = vec![
        (
            two(vec![vec![send(1, 0..4)]], vec![vec![reduce(0, 0..3)]]),
            "step 0, message #0 from rank 0 to rank 1: sends 4 elements but the receive expects 3",
        ),
        (
            two(
                vec![vec![send(1, 0..4), send(1, 4..8)]],
                vec![vec![copy(0, 0..4)]],
            ),
            "step 0, message #1 from rank 0 to rank 1: sends 4 elements that no receive takes",
        ),
        (
            two(vec![vec![]], vec![vec![copy(0, 0..4)]]),
            "step 0, message #0 from rank 0 to rank 1: a receive expects 4 elements that are never sent",
        ),
        (
            two(vec![vec![send(2, 0..4)]], vec![vec![]]),
            "rank 0, step 0, op Send { peer: 2, range: 0..4 }: peer must be a rank in 0..2",
        ),
        (
            two(vec![vec![send(1, 6..9)]], vec![vec![copy(0, 0..3)]]),
            "rank 0, step 0, op Send { peer: 1, range: 6..9 }: range must lie within the buffer 0..8",
        ),
        (
            two(vec![vec![send(1, 3..3)]], vec![vec![]]),
            "rank 0, step 0, op Send { peer: 1, range: 3..3 }: range must be non-empty",
        ),
        (
            two(
                vec![vec![send(1, 0..4), reduce(1, 3..8)]],
                vec![vec![copy(0, 0..4), send(0, 3..8)]],
            ),
            "rank 0, step 0: Send { peer: 1, range: 0..4 } overlaps RecvReduce { peer: 1, range: 3..8 } \
             (a receive may overlap no send, and a RecvCopy no other receive)",
        ),
        (
            two(vec![vec![], vec![]], vec![vec![]]),
            "plan at index 1 is for rank 1 of world 2, len 8, with 1 steps; \
             expected rank 1 of world 2, len 8, with 2 steps",
        ),
    ];
    for (plans, message) in cases {
        assert_eq!(
            validate(&plans).map_err(|e| e.to_string()),
            Err(message.to_owned())
        );
    }
    // Reduces may overlap each other (the centralized root); a copy may not.
    let three = |root: Vec<Op>| {
        vec![
            Plan {
                rank: 0,
                world: 3,
                len: 4,
                steps: steps(vec![root]),
            },
            Plan {
                rank: 1,
                world: 3,
                len: 4,
                steps: steps(vec![vec![send(0, 0..4)]]),
            },
            Plan {
                rank: 2,
                world: 3,
                len: 4,
                steps: steps(vec![vec![send(0, 1..3)]]),
            },
        ]
    };
    assert_eq!(
        validate(&three(vec![reduce(1, 0..4), reduce(2, 1..3)])),
        Ok(())
    );
    assert!(matches!(
        validate(&three(vec![reduce(1, 0..4), copy(2, 1..3)])),
        Err(PlanError::Overlap { .. })
    ));
}

#[test]
fn run_in_memory_refuses_mismatched_plans_with_the_validation_error() {
    let plans = vec![
        Plan {
            rank: 0,
            world: 2,
            len: 2,
            steps: steps(vec![vec![send(1, 0..2)]]),
        },
        Plan {
            rank: 1,
            world: 2,
            len: 2,
            steps: steps(vec![vec![]]),
        },
    ];
    let panic = std::panic::catch_unwind(|| {
        run_in_memory(&plans, &mut [vec![1i64, 2], vec![3, 4]], |a, x| *a += x);
    })
    .expect_err("a send without a receive must not run");
    assert_eq!(
        panic.downcast_ref::<String>().map(String::as_str),
        Some(
            "run_in_memory: invalid plans: step 0, message #0 from rank 0 to rank 1: \
             sends 2 elements that no receive takes"
        )
    );
}
