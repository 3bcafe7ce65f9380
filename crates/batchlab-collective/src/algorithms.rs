//! The four plan builders. Each returns one rank's steps for `world >= 2` and `len >= 1`;
//! [`crate::plan`] handles the trivial cases and turns `chunk_elems = 0` into `usize::MAX`.
//! The diagrams live on the [`crate::Algorithm`] variants.

use std::ops::Range;

use crate::{Op, Step, ring_chunk_ranges};

/// Builds one step, splitting every transfer into pieces of at most `chunk` elements.
struct StepBuilder {
    chunk: usize,
    ops: Vec<Op>,
}

impl StepBuilder {
    fn new(chunk: usize) -> Self {
        Self {
            chunk,
            ops: Vec::new(),
        }
    }

    /// Pushes `make(piece)` for each piece of `range`, in order; nothing for an empty range.
    fn pieces(&mut self, range: Range<usize>, make: impl Fn(Range<usize>) -> Op) {
        let mut start = range.start;
        while start < range.end {
            let end = start + (range.end - start).min(self.chunk);
            self.ops.push(make(start..end));
            start = end;
        }
    }

    fn send(&mut self, peer: usize, range: Range<usize>) {
        self.pieces(range, |range| Op::Send { peer, range });
    }

    fn recv_reduce(&mut self, peer: usize, range: Range<usize>) {
        self.pieces(range, |range| Op::RecvReduce { peer, range });
    }

    fn recv_copy(&mut self, peer: usize, range: Range<usize>) {
        self.pieces(range, |range| Op::RecvCopy { peer, range });
    }

    fn finish(self) -> Step {
        Step { ops: self.ops }
    }
}

/// `⌈log₂ n⌉` for `n >= 1`.
pub(crate) fn ceil_log2(n: usize) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

/// Ring: reduce-scatter then all-gather, `world − 1` steps each.
pub(crate) fn ring(rank: usize, world: usize, len: usize, chunk: usize) -> Vec<Step> {
    let segments = ring_chunk_ranges(len, world);
    // Segment (rank + world + shift − back) mod world, without going negative.
    let segment =
        |shift: usize, back: usize| segments[(rank + world + shift - back) % world].clone();
    let next = (rank + 1) % world;
    let prev = (rank + world - 1) % world;
    let mut steps = Vec::with_capacity(2 * (world - 1));
    for s in 0..world - 1 {
        let mut step = StepBuilder::new(chunk);
        step.send(next, segment(0, s));
        step.recv_reduce(prev, segment(0, s + 1));
        steps.push(step.finish());
    }
    for s in 0..world - 1 {
        let mut step = StepBuilder::new(chunk);
        step.send(next, segment(1, s));
        step.recv_copy(prev, segment(0, s));
        steps.push(step.finish());
    }
    steps
}

/// Binomial tree: reduce to rank 0, then broadcast, `⌈log₂ world⌉` steps each.
pub(crate) fn tree(rank: usize, world: usize, len: usize, chunk: usize) -> Vec<Step> {
    let levels = ceil_log2(world);
    let mut steps = Vec::with_capacity(2 * levels as usize);
    // In level k, the child `r` with r mod 2^(k+1) = 2^k pairs with the parent r − 2^k.
    let edge = |k: u32, send_up: bool| {
        let mask = 1usize << k;
        let mut step = StepBuilder::new(chunk);
        match rank & (2 * mask - 1) {
            low if low == mask && send_up => step.send(rank - mask, 0..len),
            low if low == mask => step.recv_copy(rank - mask, 0..len),
            0 if rank + mask < world && send_up => step.recv_reduce(rank + mask, 0..len),
            0 if rank + mask < world => step.send(rank + mask, 0..len),
            _ => {}
        }
        step.finish()
    };
    steps.extend((0..levels).map(|k| edge(k, true)));
    steps.extend((0..levels).rev().map(|k| edge(k, false)));
    steps
}

/// Recursive halving-doubling among `p = 2^⌊log₂ world⌋` ranks, with a fold and an unfold
/// step for the `world − p` extra ranks when `world` is not a power of two.
pub(crate) fn rhd(rank: usize, world: usize, len: usize, chunk: usize) -> Vec<Step> {
    let p = 1usize << world.ilog2();
    let extra = world - p;
    let log_p = p.trailing_zeros() as usize;
    let mut steps = Vec::with_capacity(2 * log_p + if extra > 0 { 2 } else { 0 });

    if extra > 0 {
        let mut fold = StepBuilder::new(chunk);
        if rank >= p {
            fold.send(rank - p, 0..len);
        } else if rank < extra {
            fold.recv_reduce(rank + p, 0..len);
        }
        steps.push(fold.finish());
    }

    if rank < p {
        let blocks = ring_chunk_ranges(len, p);
        // Elements of the blocks lo..hi (hi > lo): contiguous because the blocks are.
        let span = |(lo, hi): (usize, usize)| blocks[lo].start..blocks[hi - 1].end;
        // (blocks kept, blocks given, partner) of each halving step, replayed backwards.
        let mut halvings = Vec::with_capacity(log_p);
        let (mut lo, mut hi) = (0, p);
        for k in 0..log_p {
            let mask = p >> (k + 1);
            let mid = lo + mask;
            let partner = rank ^ mask;
            let (keep, give) = if rank & mask == 0 {
                ((lo, mid), (mid, hi))
            } else {
                ((mid, hi), (lo, mid))
            };
            let mut step = StepBuilder::new(chunk);
            step.send(partner, span(give));
            step.recv_reduce(partner, span(keep));
            steps.push(step.finish());
            halvings.push((keep, give, partner));
            (lo, hi) = keep;
        }
        for &(keep, give, partner) in halvings.iter().rev() {
            let mut step = StepBuilder::new(chunk);
            step.send(partner, span(keep));
            step.recv_copy(partner, span(give));
            steps.push(step.finish());
        }
    } else {
        steps.extend((0..2 * log_p).map(|_| Step::default()));
    }

    if extra > 0 {
        let mut unfold = StepBuilder::new(chunk);
        if rank >= p {
            unfold.recv_copy(rank - p, 0..len);
        } else if rank < extra {
            unfold.send(rank + p, 0..len);
        }
        steps.push(unfold.finish());
    }
    steps
}

/// Everyone sends to rank 0, which adds in rank order and sends the sum back.
pub(crate) fn centralized(rank: usize, world: usize, len: usize, chunk: usize) -> Vec<Step> {
    let mut gather = StepBuilder::new(chunk);
    let mut scatter = StepBuilder::new(chunk);
    if rank == 0 {
        for peer in 1..world {
            gather.recv_reduce(peer, 0..len);
            scatter.send(peer, 0..len);
        }
    } else {
        gather.send(0, 0..len);
        scatter.recv_copy(0, 0..len);
    }
    vec![gather.finish(), scatter.finish()]
}
