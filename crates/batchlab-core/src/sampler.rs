//! Which samples make up each step's global batch, and which worker computes which part.
//!
//! This module is the only place that knows how samples are chosen. The samples of a run are
//! one seeded sequence of positions; step `t` takes the next `B_t` of them, from `s_t`, the
//! samples consumed before it (`s_t = t·B` when the batch is constant; a batch-size schedule,
//! `crate::batching`, makes `B_t` vary). They are cut into `B_t/m` microbatches of `m` samples
//! (the unit of work). The global batch of a step is a function of `(seed, s_t, B_t)` alone:
//! the number of workers never enters.
//!
//! ```text
//!  stream:  step t takes indices  base(seed) + s_t + k,   k = 0..B_t
//!  epochs:  position p = s_t + k;  epoch e = p / N;  index = perm_e[p mod N]
//!           perm_e = seeded Fisher–Yates shuffle from (seed, Stream::Epoch, e)
//!
//!  microbatches of step t:   [0..m) [m..2m) ... [B_t-m..B_t)
//!  worker r of W gets the contiguous range  balanced_range(B_t/m, r, W)
//! ```
//!
//! Batches run straight across epoch boundaries, so every sample is used exactly once per epoch
//! whatever `B_t` is, and however it changes.

use std::ops::Range;

use rand::seq::SliceRandom;

use crate::ConfigError;
use crate::error::ensure;
use crate::rng::{Stream, rng};

/// Where the samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An infinite stream: every step takes fresh samples.
    Stream,
    /// Epochs over a finite dataset of `n` samples, a seeded permutation per epoch.
    Epochs {
        /// Dataset size.
        n: u64,
    },
}

/// The samples of every step.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    micro: u64,
    source: Source,
    /// The current epoch's permutation, cached: `(epoch, perm)`.
    cache: Option<(u64, Vec<u64>)>,
}

/// Offset between the sample-index ranges of different seeds on an infinite stream: 2⁴⁰
/// samples per seed before two seeds could overlap.
const SEED_STRIDE: u64 = 1 << 40;

/// The most samples one run may draw (`Σ_t B_t`): beyond it the stream of one seed
/// would run into the next seed's.
pub const MAX_SAMPLES: u64 = SEED_STRIDE;

impl Sampler {
    /// A sampler of microbatches of `micro` samples.
    pub fn new(seed: u64, micro: u64, source: Source) -> Result<Self, ConfigError> {
        ensure(
            micro >= 1,
            "micro",
            micro,
            "a microbatch size of at least 1",
        )?;
        if let Source::Epochs { n } = source {
            ensure(n >= 1, "dataset size", n, "at least 1 sample")?;
        }
        Ok(Self {
            seed,
            micro,
            source,
            cache: None,
        })
    }

    /// Microbatch size `m`.
    pub fn micro(&self) -> u64 {
        self.micro
    }

    /// The `batch` sample indices of the step that starts at sample position `start`,
    /// microbatch after microbatch (`batch` a multiple of the microbatch size).
    pub fn step_samples(&mut self, start: u64, batch: u64) -> Vec<u64> {
        debug_assert!(
            batch.is_multiple_of(self.micro),
            "B = {batch}, m = {}",
            self.micro
        );
        let mut out = Vec::with_capacity(batch as usize);
        self.samples_into(start, 0..(batch / self.micro) as usize, &mut out);
        out
    }

    /// Appends to `out` the samples of microbatches `micros` of the step that starts at sample
    /// position `start` (the samples consumed before it).
    pub fn samples_into(&mut self, start: u64, micros: Range<usize>, out: &mut Vec<u64>) {
        let m = self.micro;
        let (start, end) = (
            start + micros.start as u64 * m,
            start + micros.end as u64 * m,
        );
        match self.source {
            Source::Stream => {
                let base = self.seed.wrapping_mul(SEED_STRIDE);
                out.extend((start..end).map(|p| base.wrapping_add(p)));
            }
            Source::Epochs { n } => {
                for p in start..end {
                    let epoch = p / n;
                    let perm = self.permutation(epoch, n);
                    out.push(perm[(p % n) as usize]);
                }
            }
        }
    }

    fn permutation(&mut self, epoch: u64, n: u64) -> &[u64] {
        if self.cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<u64> = (0..n).collect();
            perm.shuffle(&mut rng(self.seed, Stream::Epoch, epoch));
            self.cache = Some((epoch, perm));
        }
        &self.cache.as_ref().expect("filled just above").1
    }
}

/// The contiguous, balanced range of `n` items that worker `rank` of `world` takes: the first
/// `n mod world` workers take one more.
pub fn balanced_range(n: usize, rank: usize, world: usize) -> Range<usize> {
    assert!(world >= 1 && rank < world, "rank {rank} of world {world}");
    let base = n / world;
    let extra = n % world;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn balanced_ranges_tile_the_items_and_differ_by_at_most_one() {
        for n in 0..40 {
            for world in 1..10 {
                let ranges: Vec<_> = (0..world).map(|r| balanced_range(n, r, world)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[world - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<_> = ranges.iter().map(|r| r.len()).collect();
                assert!(
                    lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1,
                    "{lens:?}"
                );
            }
        }
    }

    #[test]
    fn workers_together_take_exactly_the_global_batch() {
        let src = Source::Epochs { n: 100 };
        let mut whole = Sampler::new(3, 4, src).unwrap();
        for world in 1..=5 {
            let mut parts = Vec::new();
            for r in 0..world {
                let mut s = Sampler::new(3, 4, src).unwrap();
                s.samples_into(7 * 24, balanced_range(6, r, world), &mut parts);
            }
            assert_eq!(parts, whole.step_samples(7 * 24, 24));
        }
    }

    #[test]
    fn each_epoch_is_a_permutation_even_across_batch_boundaries() {
        let n = 10;
        let mut s = Sampler::new(1, 2, Source::Epochs { n }).unwrap();
        let all: Vec<u64> = (0..5).flat_map(|t| s.step_samples(4 * t, 4)).collect(); // 2 epochs
        for epoch in all.chunks(n as usize) {
            let set: HashSet<_> = epoch.iter().copied().collect();
            assert_eq!(set, (0..n).collect::<HashSet<_>>());
        }
        assert_ne!(all[..10], all[10..], "epochs are shuffled differently");
    }

    #[test]
    fn a_changing_batch_takes_the_next_samples_of_the_same_sequence() {
        // Batches of 2, 6, 4, 8 (a schedule) read the positions a constant batch of 4 reads:
        // every epoch is still a permutation, and no sample is skipped or drawn twice.
        let n = 10;
        let src = Source::Epochs { n };
        let mut s = Sampler::new(5, 2, src).unwrap();
        let mut start = 0;
        let mut varying = Vec::new();
        for b in [2, 6, 4, 8] {
            varying.extend(s.step_samples(start, b));
            start += b;
        }
        let mut c = Sampler::new(5, 2, src).unwrap();
        let constant: Vec<u64> = (0..5).flat_map(|t| c.step_samples(4 * t, 4)).collect();
        assert_eq!(varying, constant);
        for epoch in varying.chunks(n as usize) {
            let set: HashSet<_> = epoch.iter().copied().collect();
            assert_eq!(set, (0..n).collect::<HashSet<_>>());
        }
    }

    #[test]
    fn stream_samples_are_fresh_and_seed_dependent() {
        let mut a = Sampler::new(0, 2, Source::Stream).unwrap();
        let mut b = Sampler::new(1, 2, Source::Stream).unwrap();
        let s0 = a.step_samples(0, 8);
        let s1 = a.step_samples(8, 8);
        assert!(s0.iter().all(|x| !s1.contains(x)));
        assert!(b.step_samples(0, 8).iter().all(|x| !s0.contains(x)));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_value() {
        let e = Sampler::new(0, 0, Source::Stream).unwrap_err().to_string();
        assert!(e.contains("micro = 0"), "{e}");
        let e = Sampler::new(0, 1, Source::Epochs { n: 0 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("dataset size = 0"), "{e}");
    }
}
