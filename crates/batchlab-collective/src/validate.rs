//! The checker of the plan contract (see the crate docs): every send has its receive.

use std::collections::BTreeMap;

use crate::{Op, Plan};

/// How a set of plans breaks the plan contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The slice does not hold one plan per rank, in rank order, all for the same world and
    /// buffer length with the same number of steps.
    #[error(
        "plan at index {index} is for rank {rank} of world {world}, len {len}, with {steps} steps; \
         expected rank {index} of world {expected_world}, len {expected_len}, with {expected_steps} steps"
    )]
    Header {
        /// Position in the slice.
        index: usize,
        /// The plan's rank.
        rank: usize,
        /// The plan's world.
        world: usize,
        /// The plan's buffer length.
        len: usize,
        /// The plan's step count.
        steps: usize,
        /// The world every plan should have (the slice's length).
        expected_world: usize,
        /// The buffer length of the first plan.
        expected_len: usize,
        /// The step count of the first plan.
        expected_steps: usize,
    },
    /// An op names a bad peer or range.
    #[error("rank {rank}, step {step}, op {op:?}: {reason}")]
    BadOp {
        /// The rank whose plan holds the op.
        rank: usize,
        /// The step.
        step: usize,
        /// The op.
        op: Op,
        /// What is wrong, and what would be accepted.
        reason: String,
    },
    /// The `index`-th message from `from` to `to` in a step has no partner, or the partners'
    /// lengths differ.
    #[error(
        "step {step}, message #{index} from rank {from} to rank {to}: {}",
        describe_mismatch(*.sent, *.received)
    )]
    Unmatched {
        /// The step.
        step: usize,
        /// The sending rank.
        from: usize,
        /// The receiving rank.
        to: usize,
        /// Position among the messages from `from` to `to` in the step.
        index: usize,
        /// Length of the `index`-th send, if there is one.
        sent: Option<usize>,
        /// Length of the `index`-th receive, if there is one.
        received: Option<usize>,
    },
    /// Two ops of one rank in one step touch the same elements in a way whose result would
    /// depend on timing.
    #[error(
        "rank {rank}, step {step}: {first:?} overlaps {second:?} (a receive may overlap no send, \
         and a RecvCopy no other receive)"
    )]
    Overlap {
        /// The rank.
        rank: usize,
        /// The step.
        step: usize,
        /// The op listed first of the two.
        first: Op,
        /// The other op.
        second: Op,
    },
}

fn describe_mismatch(sent: Option<usize>, received: Option<usize>) -> String {
    match (sent, received) {
        (Some(s), Some(r)) => format!("sends {s} elements but the receive expects {r}"),
        (Some(s), None) => format!("sends {s} elements that no receive takes"),
        (None, Some(r)) => format!("a receive expects {r} elements that are never sent"),
        (None, None) => "no message".to_owned(),
    }
}

/// Checks that `plans` (one per rank, indexed by rank) fit together:
///
/// - every plan has `rank` = its index, `world` = `plans.len()`, and the same `len` and number
///   of steps;
/// - every op names a peer in `0..world` other than itself and a non-empty range within
///   `0..len`;
/// - in every step, for every ordered pair `(a, b)`, the sends from `a` to `b` and the receives
///   of `b` from `a`, each in listed order, pair up one to one with equal lengths;
/// - within one rank's step, no receive overlaps a send, and no `RecvCopy` overlaps another
///   receive.
///
/// The first violation found is returned. An empty slice is valid.
pub fn validate(plans: &[Plan]) -> Result<(), PlanError> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    let world = plans.len();
    let num_steps = first.steps.len();
    for (index, p) in plans.iter().enumerate() {
        if p.rank != index || p.world != world || p.len != first.len || p.steps.len() != num_steps {
            return Err(PlanError::Header {
                index,
                rank: p.rank,
                world: p.world,
                len: p.len,
                steps: p.steps.len(),
                expected_world: world,
                expected_len: first.len,
                expected_steps: num_steps,
            });
        }
    }
    for step in 0..num_steps {
        // (from, to) -> lengths of the sends, and of the receives, in listed order.
        let mut sends: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        let mut recvs: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for p in plans {
            let ops = &p.steps[step].ops;
            for op in ops {
                check_op(p, step, op)?;
                let len = op.range().len();
                if op.is_send() {
                    sends.entry((p.rank, op.peer())).or_default().push(len);
                } else {
                    recvs.entry((op.peer(), p.rank)).or_default().push(len);
                }
            }
            check_overlaps(p.rank, step, ops)?;
        }
        let pairs: std::collections::BTreeSet<_> = sends.keys().chain(recvs.keys()).collect();
        for &(from, to) in pairs {
            let s = sends.get(&(from, to)).map_or(&[][..], Vec::as_slice);
            let r = recvs.get(&(from, to)).map_or(&[][..], Vec::as_slice);
            for index in 0..s.len().max(r.len()) {
                let (sent, received) = (s.get(index).copied(), r.get(index).copied());
                if sent != received {
                    return Err(PlanError::Unmatched {
                        step,
                        from,
                        to,
                        index,
                        sent,
                        received,
                    });
                }
            }
        }
    }
    Ok(())
}

fn check_op(p: &Plan, step: usize, op: &Op) -> Result<(), PlanError> {
    let range = op.range();
    let reason = if op.peer() >= p.world {
        format!("peer must be a rank in 0..{}", p.world)
    } else if op.peer() == p.rank {
        "peer must be another rank than the plan's own".to_owned()
    } else if range.start >= range.end {
        "range must be non-empty".to_owned()
    } else if range.end > p.len {
        format!("range must lie within the buffer 0..{}", p.len)
    } else {
        return Ok(());
    };
    Err(PlanError::BadOp {
        rank: p.rank,
        step,
        op: op.clone(),
        reason,
    })
}

/// Sweeps the step's ranges by start; each op is checked against the furthest end reached so
/// far by each kind of op it may not overlap. `O(k log k)` for `k` ops.
fn check_overlaps(rank: usize, step: usize, ops: &[Op]) -> Result<(), PlanError> {
    const SEND: usize = 0;
    const REDUCE: usize = 1;
    const COPY: usize = 2;
    let kind = |op: &Op| match op {
        Op::Send { .. } => SEND,
        Op::RecvReduce { .. } => REDUCE,
        Op::RecvCopy { .. } => COPY,
    };
    // CONFLICTS[a][b]: whether kinds a and b may not overlap.
    const CONFLICTS: [[bool; 3]; 3] = [
        [false, true, true], // send: against any receive
        [true, false, true], // reduce: against sends and copies
        [true, true, true],  // copy: against everything
    ];
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].range().start, i));
    // For each kind, the op (index) reaching furthest so far.
    let mut furthest: [Option<usize>; 3] = [None; 3];
    for &i in &order {
        let k = kind(&ops[i]);
        let start = ops[i].range().start;
        for (other, reach) in furthest.iter().enumerate() {
            let Some(j) = *reach else { continue };
            if CONFLICTS[k][other] && ops[j].range().end > start {
                let (first, second) = if j < i { (j, i) } else { (i, j) };
                return Err(PlanError::Overlap {
                    rank,
                    step,
                    first: ops[first].clone(),
                    second: ops[second].clone(),
                });
            }
        }
        if furthest[k].is_none_or(|j| ops[j].range().end < ops[i].range().end) {
            furthest[k] = Some(i);
        }
    }
    Ok(())
}
