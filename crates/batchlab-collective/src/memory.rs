//! The reference executor: every rank's plan, step by step, in one address space.

use std::collections::{HashMap, VecDeque};

use crate::{Op, Plan, validate};

/// Runs `plans` (one per rank, from [`crate::plan_all`] or built by hand) on `buffers` (one
/// per rank, `buffers[r]` of length `plans[r].len`), exactly per the plan contract: in each
/// step, every rank's sends are copied out of the buffers first (the pre-step values); then
/// each rank applies its receives in listed order, taking from each sender the messages in the
/// order they were sent. `reduce(acc, x)` folds a received `x` into `acc` for `RecvReduce`;
/// for batchlab's exact packet it is `|a, x| *a = a.wrapping_add(x)`.
///
/// ```
/// use batchlab_collective::{Algorithm, PlanConfig, plan_all, run_in_memory};
/// let plans = plan_all(&PlanConfig::unchunked(Algorithm::Ring), 3, 4);
/// let mut buffers = vec![vec![1i64, 2, 3, 4], vec![10, 20, 30, 40], vec![100, 200, 300, 400]];
/// run_in_memory(&plans, &mut buffers, |a, x| *a = a.wrapping_add(x));
/// assert!(buffers.iter().all(|b| b == &[111, 222, 333, 444]));
/// ```
///
/// # Panics
/// With the [`crate::PlanError`] message if [`validate`] rejects `plans`, or if the buffers do
/// not match the plans in number or length.
pub fn run_in_memory<T: Copy>(plans: &[Plan], buffers: &mut [Vec<T>], reduce: impl Fn(&mut T, T)) {
    if let Err(e) = validate(plans) {
        panic!("run_in_memory: invalid plans: {e}");
    }
    assert_eq!(
        buffers.len(),
        plans.len(),
        "run_in_memory: {} buffers for {} plans; need one buffer per rank",
        buffers.len(),
        plans.len()
    );
    for (rank, (plan, buffer)) in plans.iter().zip(buffers.iter()).enumerate() {
        assert_eq!(
            buffer.len(),
            plan.len,
            "run_in_memory: rank {rank}'s buffer has {} elements; its plan needs {}",
            buffer.len(),
            plan.len
        );
    }
    let num_steps = plans.first().map_or(0, |p| p.steps.len());
    // (from, to) -> messages in flight, in send order.
    let mut inbox: HashMap<(usize, usize), VecDeque<Vec<T>>> = HashMap::new();
    for step in 0..num_steps {
        for (plan, buffer) in plans.iter().zip(buffers.iter()) {
            for op in &plan.steps[step].ops {
                if let Op::Send { peer, range } = op {
                    inbox
                        .entry((plan.rank, *peer))
                        .or_default()
                        .push_back(buffer[range.clone()].to_vec());
                }
            }
        }
        for (plan, buffer) in plans.iter().zip(buffers.iter_mut()) {
            for op in &plan.steps[step].ops {
                let (peer, range, add) = match op {
                    Op::Send { .. } => continue,
                    Op::RecvReduce { peer, range } => (*peer, range, true),
                    Op::RecvCopy { peer, range } => (*peer, range, false),
                };
                // `validate` guarantees the message exists and has the right length.
                let message = inbox
                    .get_mut(&(peer, plan.rank))
                    .and_then(VecDeque::pop_front)
                    .expect("validated plans match every receive with a send");
                let dst = &mut buffer[range.clone()];
                if add {
                    for (d, x) in dst.iter_mut().zip(message) {
                        reduce(d, x);
                    }
                } else {
                    dst.copy_from_slice(&message);
                }
            }
        }
        debug_assert!(inbox.values().all(VecDeque::is_empty));
    }
}
