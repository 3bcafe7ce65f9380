//! All-reduce algorithms as sans-I/O plans.
//!
//! An all-reduce leaves every rank holding the element-wise sum of all ranks' buffers. This
//! crate says *how*: for one rank of a world, [`plan`] returns a [`Plan`], a list of
//! [`Step`]s, each a set of [`Op`]s that send a range of the rank's buffer to a peer or receive
//! a range from a peer and add it in or copy it over. Plans are pure data: no threads, sockets
//! or async. Two executors run the same plans: [`run_in_memory`], the reference used by
//! tests, and the networked one in `batchlab-net`. Because both read one plan, and every plan
//! is built on one chunking function ([`ring_chunk_ranges`]), they cannot disagree about which
//! element goes where.
//!
//! The crate is generic over the element type: batchlab reduces `i64` words with wrapping
//! addition (the exact packet of `batchlab-core`), which is associative and commutative, so
//! every algorithm gives the same bits; `f32`/`f64` sums work too, with rounding that depends
//! on the algorithm (every rank still ends with the same bits: each element's sum is computed
//! on one rank and copied to the others).
//!
//! # The plan contract
//!
//! ```text
//!  rank r's plan:  step 0: [Send{peer, range}, RecvReduce{peer, range}, ...]
//!                  step 1: [...]
//!                  ...
//!  all ranks' plans have the same number of steps; step k of every rank runs together
//! ```
//!
//! - **Steps are barriers in meaning, not necessarily in time.** All ops of a step may run
//!   concurrently. A `Send` reads the buffer as it was at the *start* of the step; the
//!   receives of a step apply after. (Plans from [`plan`] never let a receive overlap a send
//!   of the same rank in the same step, so an executor may also apply each receive as soon as
//!   it arrives; [`validate`] checks this.)
//! - **Matching.** For every ordered pair of ranks `(a, b)` and every step, the `Send`s from
//!   `a` to `b` and the receives (`RecvReduce` or `RecvCopy`) of `b` from `a` are matched in
//!   the order they are listed: the i-th send pairs with the i-th receive, and they have the
//!   same length. Only the relative order of ops with the same peer and direction matters. A
//!   step may hold several sends to one peer: the pieces (each at most
//!   [`PlanConfig::chunk_elems`] elements) of a pipelined segment.
//! - **Overlap.** Within one rank's step, receive ranges never overlap send ranges, and a
//!   `RecvCopy` overlaps no other receive. Several `RecvReduce` may cover the same elements
//!   (the root of [`Algorithm::Centralized`] adds every other rank's buffer in one step); they
//!   are applied in the order listed, which an executor must keep to give the reference's
//!   bits for non-associative sums such as `f64`.
//! - Ranges are element indices into the rank's buffer (length [`Plan::len`], the same on every
//!   rank), never empty. The receiving range has the sending range's length; in the plans
//!   built here it is also the same range.
//!
//! # Algorithms
//!
//! `n` ranks, `S` bytes per rank, `p = 2^⌊log₂ n⌋`, `L = ⌈log₂ n⌉`:
//!
//! | algorithm     | steps                               | bytes sent by one rank                     |
//! |---------------|-------------------------------------|--------------------------------------------|
//! | `ring`        | `2(n−1)`                            | `2(n−1)/n · S` (± segment rounding)        |
//! | `rhd`         | `2 log₂ n`, else `2 log₂ p + 2`     | `2(p−1)/p · S`; `+ S` for the `n−p` fold partners; extras `S` |
//! | `tree`        | `2L`                                | `S` to the parent (not the root) `+ S` per child |
//! | `centralized` | `2`                                 | `S`; rank 0 `(n−1) S`                      |
//!
//! The diagrams are on the [`Algorithm`] variants; the α-β times in [`alpha_beta_time`]; a
//! discrete-event run of the same plans on a modelled network in [`simulate()`].

mod algorithms;
mod cost;
mod memory;
mod simulate;
mod validate;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

pub use cost::{
    AlphaBetaFit, alpha_beta_time, bus_bandwidth_factor, bytes_per_rank_sent, fit_alpha_beta,
};
pub use memory::run_in_memory;
pub use simulate::simulate;
pub use validate::{PlanError, validate};

/// An all-reduce algorithm. Serialized (and parsed, and displayed) as its lowercase name:
/// `"ring"`, `"tree"`, `"rhd"`, `"centralized"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Ring: reduce-scatter then all-gather around the ring `r → r+1`, `n − 1` steps each.
    /// The buffer is cut into `n` segments by [`ring_chunk_ranges`]; every step moves one
    /// segment per rank, as pieces of at most [`PlanConfig::chunk_elems`] elements.
    ///
    /// ```text
    ///  reduce-scatter, step s: r sends segment (r−s) mod n to r+1,
    ///                          receives segment (r−s−1) mod n from r−1 and adds it
    ///    step 0:  r0 ─g0─► r1 ─g1─► r2 ─g2─► r3 ─g3─► r0
    ///    step 1:  r0 ─g3─► r1 ─g0─► r2 ─g1─► r3 ─g2─► r0
    ///    step 2:  r0 ─g2─► r1 ─g3─► r2 ─g0─► r3 ─g1─► r0
    ///    → rank r holds segment (r+1) mod n summed over all ranks
    ///  all-gather, step s: r sends segment (r+1−s) mod n to r+1,
    ///                      receives segment (r−s) mod n from r−1 and copies it
    ///    step 0:  r0 ─g1─► r1 ─g2─► r2 ─g3─► r3 ─g0─► r0     (and so on, n−1 steps)
    /// ```
    Ring,
    /// Binomial tree: reduce to rank 0 then broadcast, `⌈log₂ n⌉` steps each, any `n`. In
    /// step `k` of the reduce, every rank `r` with `r mod 2^(k+1) = 2^k` sends its whole
    /// (partially reduced) buffer to `r − 2^k`; the broadcast runs the same edges backwards.
    /// Every rank talks to at most one peer per step, so each step costs `α + S/β`.
    ///
    /// ```text
    ///  n = 6:          0            reduce:    step 0: 1→0 3→2 5→4
    ///               /  |  \                    step 1: 2→0
    ///              1   2   4                   step 2: 4→0
    ///                  |   |        broadcast: step 3: 0→4
    ///                  3   5                   step 4: 0→2
    ///                                          step 5: 0→1 2→3 4→5
    /// ```
    Tree,
    /// Recursive halving-doubling (Rabenseifner): reduce-scatter by recursive halving, then
    /// all-gather by recursive doubling, among `p = 2^⌊log₂ n⌋` ranks. The buffer is cut into
    /// `p` blocks by [`ring_chunk_ranges`]; in halving step `k` rank `r` exchanges with
    /// `r XOR p/2^(k+1)`, keeps the half of its current blocks on its side of that bit
    /// (adding the partner's copy) and sends the other half; doubling undoes it, copying.
    ///
    /// When `n` is not a power of two, the `n − p` extra ranks first **fold** their whole
    /// buffer into rank `r − p` (one step, adding), sit out the halving and doubling, and
    /// finally **unfold**: rank `r − p` sends them the result (one step, copying).
    ///
    /// ```text
    ///  n = 6, p = 4, blocks b0..b3
    ///  fold:       4 ─all─► 0      5 ─all─► 1                 (add)
    ///  halving:    0↔2  1↔3   0,1 keep b0b1, 2,3 keep b2b3    (add)
    ///              0↔1  2↔3   rank r keeps block b_r          (add)
    ///  doubling:   0↔1  2↔3   send own blocks, copy the partner's
    ///              0↔2  1↔3
    ///  unfold:     0 ─all─► 4      1 ─all─► 5                 (copy)
    /// ```
    Rhd,
    /// Centralized (parameter-server style): every rank sends its buffer to rank 0, which adds
    /// them in rank order and sends the sum back. Two steps, but rank 0's link carries
    /// `2(n−1) S` bytes.
    ///
    /// ```text
    ///  step 0:  1, 2, …, n−1 ─all─► 0   (0 adds them in rank order)
    ///  step 1:  0 ─all─► 1, 2, …, n−1   (copy)
    /// ```
    Centralized,
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Ring,
        Algorithm::Tree,
        Algorithm::Rhd,
        Algorithm::Centralized,
    ];

    /// The lowercase name used in configs, flags and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Tree => "tree",
            Algorithm::Rhd => "rhd",
            Algorithm::Centralized => "centralized",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`Algorithm::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown all-reduce algorithm {0:?}: expected one of ring, tree, rhd, centralized")]
pub struct ParseAlgorithmError(pub String);

impl FromStr for Algorithm {
    type Err = ParseAlgorithmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ParseAlgorithmError(s.to_owned()))
    }
}

/// How to plan an all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PlanConfig {
    /// Which algorithm.
    pub algorithm: Algorithm,
    /// The most elements in one message piece, the granularity of pipelining: every transfer
    /// of a range is split into consecutive pieces of `chunk_elems` elements (the last one
    /// shorter), each its own [`Op`]. `0` means no limit: one message per range.
    #[serde(default)]
    pub chunk_elems: usize,
}

impl PlanConfig {
    /// `algorithm` with whole-range messages (`chunk_elems = 0`).
    pub const fn unchunked(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            chunk_elems: 0,
        }
    }
}

/// One operation of a rank in one step. Ranges index the rank's own buffer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Send these elements of my buffer, as they were at the start of the step, to `peer`.
    Send {
        /// The receiving rank.
        peer: usize,
        /// Elements sent.
        range: Range<usize>,
    },
    /// Receive `range.len()` elements from `peer` and reduce (add) them into `range`.
    RecvReduce {
        /// The sending rank.
        peer: usize,
        /// Elements reduced into.
        range: Range<usize>,
    },
    /// Receive `range.len()` elements from `peer` and overwrite `range` with them.
    RecvCopy {
        /// The sending rank.
        peer: usize,
        /// Elements overwritten.
        range: Range<usize>,
    },
}

impl Op {
    /// The other rank of this op.
    pub fn peer(&self) -> usize {
        match self {
            Op::Send { peer, .. } | Op::RecvReduce { peer, .. } | Op::RecvCopy { peer, .. } => {
                *peer
            }
        }
    }

    /// The elements of my buffer this op reads or writes.
    pub fn range(&self) -> &Range<usize> {
        match self {
            Op::Send { range, .. } | Op::RecvReduce { range, .. } | Op::RecvCopy { range, .. } => {
                range
            }
        }
    }

    /// Whether this op sends (as opposed to receives).
    pub fn is_send(&self) -> bool {
        matches!(self, Op::Send { .. })
    }
}

/// The ops one rank runs in one step; they may run concurrently (see the crate docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// The ops, in matching order per peer and direction.
    pub ops: Vec<Op>,
}

/// One rank's part of an all-reduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The rank this plan is for.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Buffer length in elements, the same on every rank.
    pub len: usize,
    /// The steps, run in order; every rank of a world has the same number.
    pub steps: Vec<Step>,
}

/// The plan of `rank` in a world of `world` ranks reducing buffers of `len` elements.
/// Empty (no steps) when `world == 1` or `len == 0`.
///
/// # Panics
/// If `world == 0` or `rank >= world`.
pub fn plan(cfg: &PlanConfig, rank: usize, world: usize, len: usize) -> Plan {
    assert!(
        world >= 1 && rank < world,
        "plan: rank {rank} of world {world}: need 0 <= rank < world"
    );
    let steps = if world == 1 || len == 0 {
        Vec::new()
    } else {
        let chunk = if cfg.chunk_elems == 0 {
            usize::MAX
        } else {
            cfg.chunk_elems
        };
        match cfg.algorithm {
            Algorithm::Ring => algorithms::ring(rank, world, len, chunk),
            Algorithm::Tree => algorithms::tree(rank, world, len, chunk),
            Algorithm::Rhd => algorithms::rhd(rank, world, len, chunk),
            Algorithm::Centralized => algorithms::centralized(rank, world, len, chunk),
        }
    };
    Plan {
        rank,
        world,
        len,
        steps,
    }
}

/// The plans of every rank of the world, indexed by rank.
///
/// # Panics
/// If `world == 0`.
pub fn plan_all(cfg: &PlanConfig, world: usize, len: usize) -> Vec<Plan> {
    assert!(world >= 1, "plan_all: world must be at least 1");
    (0..world).map(|r| plan(cfg, r, world, len)).collect()
}

/// Cuts `0..len` into `world` contiguous, balanced ranges: the first `len % world` have
/// `⌈len/world⌉` elements, the others `⌊len/world⌋` (empty when `len < world`). The one
/// chunking function: ring segments and halving-doubling blocks both come from it.
///
/// ```
/// # use batchlab_collective::ring_chunk_ranges;
/// assert_eq!(ring_chunk_ranges(7, 3), vec![0..3, 3..5, 5..7]);
/// assert_eq!(ring_chunk_ranges(2, 3), vec![0..1, 1..2, 2..2]);
/// ```
///
/// # Panics
/// If `world == 0`.
pub fn ring_chunk_ranges(len: usize, world: usize) -> Vec<Range<usize>> {
    assert!(world >= 1, "ring_chunk_ranges: world must be at least 1");
    let base = len / world;
    let extra = len % world;
    (0..world)
        .map(|r| {
            let start = r * base + r.min(extra);
            start..start + base + usize::from(r < extra)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip_through_display_fromstr_and_serde() {
        for a in Algorithm::ALL {
            assert_eq!(a.to_string().parse::<Algorithm>(), Ok(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), a);
        }
        assert_eq!(
            "Ring".parse::<Algorithm>().unwrap_err().to_string(),
            "unknown all-reduce algorithm \"Ring\": expected one of ring, tree, rhd, centralized"
        );
    }

    #[test]
    fn plan_config_chunk_defaults_to_unchunked() {
        let cfg: PlanConfig = serde_json::from_str(r#"{"algorithm":"rhd"}"#).unwrap();
        assert_eq!(cfg, PlanConfig::unchunked(Algorithm::Rhd));
    }

    #[test]
    fn ring_chunk_ranges_tile_the_buffer_and_differ_by_at_most_one() {
        for len in 0..40 {
            for world in 1..12 {
                let ranges = ring_chunk_ranges(len, world);
                assert_eq!(ranges.len(), world);
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[world - 1].end, len);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() == w[1].len() || w[0].len() == w[1].len() + 1);
                }
            }
        }
    }

    #[test]
    fn one_rank_or_empty_buffer_plans_nothing() {
        for a in Algorithm::ALL {
            let cfg = PlanConfig::unchunked(a);
            assert!(plan(&cfg, 0, 1, 100).steps.is_empty());
            assert!(plan(&cfg, 2, 5, 0).steps.is_empty());
        }
    }
}
