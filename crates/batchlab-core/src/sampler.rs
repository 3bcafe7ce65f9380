//! Which samples make up each step's global batch, and which worker computes which part.
//!
//! This module is the only place that knows how samples are chosen. The global batch of step
//! `t` is `B` sample indices, cut into `B/m` microbatches of `m` samples (the unit of work). It
//! is a function of `(seed, t)` alone: the number of workers never enters.
//!
//! ```text
//!  stream:  step t takes indices  base(seed) + t·B + k,   k = 0..B
//!  epochs:  position p = t·B + k;  epoch e = p / N;  index = perm_e[p mod N]
//!           perm_e = seeded Fisher–Yates shuffle from (seed, Stream::Epoch, e)
//!
//!  microbatches of step t:   [0..m) [m..2m) ... [B-m..B)
//!  worker r of W gets the contiguous range  balanced_range(B/m, r, W)
//! ```
//!
//! Batches run straight across epoch boundaries, so every sample is used exactly once per epoch
//! whatever `B` is.

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

/// The global batch of every step.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    batch: u64,
    micro: u64,
    source: Source,
    /// The current epoch's permutation, cached: `(epoch, perm)`.
    cache: Option<(u64, Vec<u64>)>,
}

/// Offset between the sample-index ranges of different seeds on an infinite stream: 2⁴⁰
/// samples per seed before two seeds could overlap.
const SEED_STRIDE: u64 = 1 << 40;

/// The most samples one run may draw (`batch × steps`): beyond it the stream of one seed
/// would run into the next seed's.
pub const MAX_SAMPLES: u64 = SEED_STRIDE;

impl Sampler {
    /// A sampler of global batch `batch` in microbatches of `micro` samples.
    pub fn new(seed: u64, batch: u64, micro: u64, source: Source) -> Result<Self, ConfigError> {
        ensure(batch >= 1, "batch", batch, "a batch size of at least 1")?;
        ensure(
            micro >= 1,
            "micro",
            micro,
            "a microbatch size of at least 1",
        )?;
        ensure(
            batch.is_multiple_of(micro),
            "micro",
            micro,
            &format!("a divisor of the batch size {batch}"),
        )?;
        if let Source::Epochs { n } = source {
            ensure(n >= 1, "dataset size", n, "at least 1 sample")?;
        }
        Ok(Self {
            seed,
            batch,
            micro,
            source,
            cache: None,
        })
    }

    /// Global batch size `B`.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Microbatch size `m`.
    pub fn micro(&self) -> u64 {
        self.micro
    }

    /// Number of microbatches per step, `B/m`.
    pub fn num_micro(&self) -> usize {
        (self.batch / self.micro) as usize
    }

    /// The `B` sample indices of step `t`, microbatch after microbatch.
    pub fn step_samples(&mut self, t: u64) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.batch as usize);
        self.samples_into(t, 0..self.num_micro(), &mut out);
        out
    }

    /// Appends to `out` the samples of microbatches `micros` of step `t`.
    pub fn samples_into(&mut self, t: u64, micros: Range<usize>, out: &mut Vec<u64>) {
        let start = t * self.batch + micros.start as u64 * self.micro;
        let end = t * self.batch + micros.end as u64 * self.micro;
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
        let mut whole = Sampler::new(3, 24, 4, src).unwrap();
        for world in 1..=5 {
            let mut parts = Vec::new();
            for r in 0..world {
                let mut s = Sampler::new(3, 24, 4, src).unwrap();
                s.samples_into(7, balanced_range(6, r, world), &mut parts);
            }
            assert_eq!(parts, whole.step_samples(7));
        }
    }

    #[test]
    fn each_epoch_is_a_permutation_even_across_batch_boundaries() {
        let n = 10;
        let mut s = Sampler::new(1, 4, 2, Source::Epochs { n }).unwrap();
        let all: Vec<u64> = (0..5).flat_map(|t| s.step_samples(t)).collect(); // 20 = 2 epochs
        for epoch in all.chunks(n as usize) {
            let set: HashSet<_> = epoch.iter().copied().collect();
            assert_eq!(set, (0..n).collect::<HashSet<_>>());
        }
        assert_ne!(all[..10], all[10..], "epochs are shuffled differently");
    }

    #[test]
    fn stream_samples_are_fresh_and_seed_dependent() {
        let mut a = Sampler::new(0, 8, 2, Source::Stream).unwrap();
        let mut b = Sampler::new(1, 8, 2, Source::Stream).unwrap();
        let s0 = a.step_samples(0);
        let s1 = a.step_samples(1);
        assert!(s0.iter().all(|x| !s1.contains(x)));
        assert!(b.step_samples(0).iter().all(|x| !s0.contains(x)));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_value() {
        let e = Sampler::new(0, 10, 4, Source::Stream)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("micro = 4") && e.contains("divisor of the batch size 10"),
            "{e}"
        );
        let e = Sampler::new(0, 0, 1, Source::Stream)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch = 0"), "{e}");
    }
}
