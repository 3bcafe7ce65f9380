//! A discrete-event run of plans on a modelled network: what the α-β formulas of [`crate::cost`]
//! leave out (docs/science.md#alpha-beta-model).
//!
//! Every rank has one full-duplex link: a message of `b` bytes occupies the sender's transmit
//! side and the receiver's receive side for `b/β` seconds, one message at a time on each, and
//! arrives `α` after its last byte left (latency overlaps the next message's transmission, as on
//! a real wire). A rank starts step `k + 1` once every message it receives in step `k` arrived;
//! its sends then queue on its link in plan order. Messages of a step are placed in the order
//! their senders could start them. Reductions cost nothing.
//!
//! The formulas charge `α + b/β` per message along the critical path; the simulation differs
//! where messages of one step queue on one link (centralized: the root's `n − 1` messages share
//! one latency instead of paying `n − 1`) and where a step's pieces (`chunk_elems`) follow one
//! another (one latency per step, not per piece).

use crate::{Op, Plan};

/// Seconds until every rank of `plans` (one per rank, in rank order) has finished, for elements
/// of `elem_bytes` bytes, per-message latency `alpha_s` and link bandwidth `beta_bytes_per_s`.
///
/// # Panics
/// If the plans are not one per rank of one world with the same number of steps.
pub fn simulate(plans: &[Plan], elem_bytes: usize, alpha_s: f64, beta_bytes_per_s: f64) -> f64 {
    let n = plans.len();
    if n <= 1 {
        return 0.0;
    }
    let steps = plans[0].steps.len();
    assert!(
        plans
            .iter()
            .enumerate()
            .all(|(r, p)| p.rank == r && p.world == n && p.steps.len() == steps),
        "simulate: one plan per rank of a world of {n}, each of {steps} steps"
    );
    let mut ready = vec![0.0f64; n];
    let mut tx_free = vec![0.0f64; n];
    let mut rx_free = vec![0.0f64; n];
    for k in 0..steps {
        // (earliest start, sender, receiver, seconds on the wire), senders in plan order.
        let mut messages: Vec<(f64, usize, usize, f64)> = Vec::new();
        for (r, p) in plans.iter().enumerate() {
            for op in &p.steps[k].ops {
                if let Op::Send { peer, range } = op {
                    let wire = (range.len() * elem_bytes) as f64 / beta_bytes_per_s;
                    messages.push((ready[r], r, *peer, wire));
                }
            }
        }
        // Stable: a sender's messages keep their plan order.
        messages.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut arrived = ready.clone();
        for (earliest, from, to, wire) in messages {
            let start = earliest.max(tx_free[from]).max(rx_free[to]);
            let done = start + wire;
            tx_free[from] = done;
            rx_free[to] = done;
            arrived[to] = arrived[to].max(done + alpha_s);
        }
        ready = arrived;
    }
    ready.into_iter().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, PlanConfig, alpha_beta_time, plan};

    fn plans(algorithm: Algorithm, chunk_elems: usize, world: usize, len: usize) -> Vec<Plan> {
        let cfg = PlanConfig {
            algorithm,
            chunk_elems,
        };
        (0..world).map(|r| plan(&cfg, r, world, len)).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-30)
    }

    #[test]
    fn ring_tree_and_power_of_two_rhd_take_exactly_the_formulas_time() {
        let (alpha, beta) = (30e-6, 2e9);
        for world in [2, 4, 8, 16] {
            // A length every algorithm cuts into equal parts.
            let len = 1 << 16;
            for algorithm in [Algorithm::Ring, Algorithm::Tree, Algorithm::Rhd] {
                let des = simulate(&plans(algorithm, 0, world, len), 8, alpha, beta);
                let model = alpha_beta_time(algorithm, (8 * len) as f64, world, alpha, beta);
                assert!(
                    close(des, model),
                    "{algorithm:?} n={world}: {des} vs {model}"
                );
            }
        }
    }

    #[test]
    fn the_centralized_root_pays_one_latency_per_phase_not_one_per_message() {
        let (alpha, beta, len) = (50e-6, 1e9, 1000);
        for world in [2, 3, 5, 9] {
            let des = simulate(
                &plans(Algorithm::Centralized, 0, world, len),
                8,
                alpha,
                beta,
            );
            // Gather: the n − 1 buffers queue on the root's receive side, the last arrives α
            // after; broadcast likewise on its transmit side.
            let wire = 8.0 * len as f64 / beta;
            let want = 2.0 * ((world - 1) as f64 * wire + alpha);
            assert!(close(des, want), "n={world}: {des} vs {want}");
            let model =
                alpha_beta_time(Algorithm::Centralized, 8.0 * len as f64, world, alpha, beta);
            assert!(close(model - des, 2.0 * (world as f64 - 2.0) * alpha));
        }
    }

    #[test]
    fn pieces_of_a_step_share_its_latency() {
        let (alpha, beta) = (40e-6, 1e9);
        for world in [2, 3, 6] {
            let len = 6 * 4096;
            let whole = simulate(&plans(Algorithm::Ring, 0, world, len), 8, alpha, beta);
            let pieces = simulate(&plans(Algorithm::Ring, 512, world, len), 8, alpha, beta);
            assert!(close(whole, pieces), "n={world}: {whole} vs {pieces}");
        }
    }

    #[test]
    fn one_rank_costs_nothing() {
        assert_eq!(
            simulate(&plans(Algorithm::Ring, 0, 1, 100), 8, 1.0, 1.0),
            0.0
        );
    }
}
