//! The order-independent exact reduction: why a run is bit-identical on 1 or 64 workers.
//!
//! Floating-point addition is not associative, so summing the same microbatch gradients in a
//! different grouping (2 workers instead of 3, a ring instead of a tree) changes the last bits,
//! and a training run then drifts apart. batchlab sums in integers instead:
//!
//! ```text
//!  micro j's gradient sum (f64)  --quantize(2^f)-->  i64 words  --+
//!  micro k's gradient sum (f64)  --quantize(2^f)-->  i64 words  --+--> wrapping i64 sum
//!  ...                                                            |    (any order, any grouping)
//!  per-micro scalars (f64 bits) --> slot j (zeros elsewhere)     --+
//!
//!  packet = [ grad: dim words (fixed point, 2^-f units) | micro 0 fields | micro 1 fields | ... ]
//! ```
//!
//! - **Gradients** are quantized per microbatch to `round(x·2^f)` (halves away from zero) and summed as
//!   `i64` with wrapping addition, which is associative and commutative: every grouping gives the
//!   same integers. Each micro's words are bounded by `min(2^51, 2^62 / num_micro)`, so the exact
//!   total cannot overflow; a micro that exceeds the bound marks the step for a redo.
//! - **Per-micro scalars** (loss, squared norm, max |x|, ...) travel as raw `f64` bits in the
//!   micro's own slot; every other contribution to that slot is zero, and `x + 0 = x` in
//!   integers, so after the sum every replica holds every micro's scalars exactly and adds them
//!   up in micro order itself.
//! - **The scale** `2^f` for step `t` is chosen from step `t−1`'s largest per-micro `|x|` (which
//!   every replica knows exactly), with [`HEADROOM_BITS`] of room for growth. If a micro still
//!   exceeds the bound, every replica sees it (its `max_abs` arrives with the packet) and the
//!   whole step is recomputed at the scale that fits: the decision depends on micro values only,
//!   never on the number of workers.
//!
//! The resolution is `2^-f`, with `2^(51 - HEADROOM_BITS)` units below the largest gradient
//! component of the previous step (up to 2048 microbatches; fewer bits beyond): 43 significant
//! bits for the largest element, against `f32`'s 24.

use crate::task::BatchStats;

/// Bits of growth allowed between the previous step's largest gradient component and this one's
/// before a step must be redone.
pub const HEADROOM_BITS: i32 = 8;

/// Number of `i64` words per microbatch in a packet.
pub const MICRO_FIELDS: usize = 5;

/// The fixed-point scale `2^frac_bits` of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FixedScale {
    /// `f` in `x ≈ q · 2^-f`. May be negative for huge gradients.
    pub frac_bits: i32,
}

impl FixedScale {
    /// The scale for the first step, before any gradient has been seen: room for components up
    /// to about `2^(62 - 32 - log2 num_micro)`; a larger first gradient costs one redo.
    pub const INITIAL: Self = Self { frac_bits: 32 };

    /// Largest `|q|` a single micro may contribute: `num_micro` of them cannot overflow `i64`,
    /// and each is within the exact range of the rounding in `quantize` (`2^51`).
    fn word_limit(num_micro: usize) -> f64 {
        ((2f64).powi(62) / num_micro.max(1) as f64).min((2f64).powi(51))
    }

    /// The scale for gradients whose largest per-micro component was `max_abs`, with
    /// [`HEADROOM_BITS`] to spare. Zero or non-finite `max_abs` keeps `self`.
    pub fn fitted(self, max_abs: f64, num_micro: usize) -> Self {
        if !(max_abs.is_finite() && max_abs > 0.0) {
            return self;
        }
        let limit_bits = Self::word_limit(num_micro).log2().floor() as i32;
        let top = max_abs.log2().floor() as i32 + 1; // max_abs < 2^top
        Self {
            frac_bits: (limit_bits - top - HEADROOM_BITS).clamp(-1000, 1000),
        }
    }

    /// Whether a micro whose largest component is `max_abs` fits at this scale.
    pub fn fits(self, max_abs: f64, num_micro: usize) -> bool {
        max_abs * (2f64).powi(self.frac_bits) <= Self::word_limit(num_micro)
    }

    fn to_fixed(self) -> f64 {
        (2f64).powi(self.frac_bits)
    }
}

/// What one microbatch measured besides its gradient sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicroStats {
    /// Sum of per-sample losses.
    pub loss_sum: f64,
    /// `|Σ g_i|²` of the micro's gradient sum (not the mean), in `f64`.
    pub grad_sum_sq: f64,
    /// Largest `|component|` of the gradient sum; NaN or ∞ when the gradient is not finite.
    pub max_abs: f64,
    /// Correctly classified samples, for classification tasks.
    pub correct: Option<u64>,
    /// Dead-ReLU fraction, for MLPs.
    pub dead_relu: Option<f64>,
}

impl MicroStats {
    /// The stats of a micro from its task statistics and gradient sum.
    pub fn measure(stats: BatchStats, grad_sum: &[f64]) -> Self {
        let (grad_sum_sq, max_abs) = norm_and_max(grad_sum);
        Self::from_parts(stats, grad_sum_sq, max_abs)
    }

    fn from_parts(stats: BatchStats, grad_sum_sq: f64, max_abs: f64) -> Self {
        Self {
            loss_sum: stats.loss_sum,
            grad_sum_sq,
            max_abs,
            correct: stats.correct,
            dead_relu: stats.dead_relu,
        }
    }

    fn encode(&self) -> [i64; MICRO_FIELDS] {
        let bits = |x: f64| x.to_bits() as i64;
        [
            bits(self.loss_sum),
            bits(self.grad_sum_sq),
            bits(self.max_abs),
            bits(self.correct.map_or(f64::NAN, |c| c as f64)),
            bits(self.dead_relu.unwrap_or(f64::NAN)),
        ]
    }

    fn decode(words: &[i64]) -> Self {
        let f = |w: i64| f64::from_bits(w as u64);
        let opt = |x: f64| if x.is_nan() { None } else { Some(x) };
        Self {
            loss_sum: f(words[0]),
            grad_sum_sq: f(words[1]),
            max_abs: f(words[2]),
            correct: opt(f(words[3])).map(|c| c as u64),
            dead_relu: opt(f(words[4])),
        }
    }
}

/// One step's contribution of a set of microbatches, or the sum of several such contributions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    dim: usize,
    num_micro: usize,
    words: Vec<i64>,
}

impl Packet {
    /// An all-zero packet for `dim` parameters and `num_micro` microbatches.
    pub fn zeroed(dim: usize, num_micro: usize) -> Self {
        Self {
            dim,
            num_micro,
            words: vec![0; dim + num_micro * MICRO_FIELDS],
        }
    }

    /// Number of words: `dim + num_micro · MICRO_FIELDS`.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the packet has no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Resets every word to zero.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// The words, for the wire.
    pub fn words(&self) -> &[i64] {
        &self.words
    }

    /// The words, to receive into.
    pub fn words_mut(&mut self) -> &mut [i64] {
        &mut self.words
    }

    /// Adds micro `index`'s gradient sum at `scale`, stores its stats in its slot, and returns
    /// them. One pass over the gradient measures and quantizes it.
    ///
    /// Values are quantized even when they exceed the scale's bound (the words then wrap); the
    /// receiver sees `max_abs` and redoes the step, so nothing wrong is ever applied.
    pub fn add_micro(
        &mut self,
        index: usize,
        grad_sum: &[f64],
        stats: BatchStats,
        scale: FixedScale,
    ) -> MicroStats {
        assert_eq!(grad_sum.len(), self.dim, "gradient length");
        assert!(
            index < self.num_micro,
            "micro {index} of {}",
            self.num_micro
        );
        let s = scale.to_fixed();
        let (sq, max_abs) = fused_pass(&mut self.words[..self.dim], grad_sum, s);
        let micro = MicroStats::from_parts(stats, sq, max_abs);
        self.add_stats(index, &micro);
        micro
    }

    /// Stores micro `index`'s stats in its slot without any gradient words (fast mode carries
    /// the gradient separately, in `f32`).
    pub fn add_stats(&mut self, index: usize, micro: &MicroStats) {
        assert!(
            index < self.num_micro,
            "micro {index} of {}",
            self.num_micro
        );
        let slot = self.dim + index * MICRO_FIELDS;
        for (w, e) in self.words[slot..slot + MICRO_FIELDS]
            .iter_mut()
            .zip(micro.encode())
        {
            *w = w.wrapping_add(e);
        }
    }

    /// Adds another packet into this one (wrapping, so any order gives the same words).
    pub fn merge(&mut self, other: &Packet) {
        assert_eq!(self.words.len(), other.words.len(), "packet length");
        merge_words(&mut self.words, &other.words);
    }

    /// Number of parameters (gradient words).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The gradient words and the stats words, apart.
    pub fn grad_and_stats_mut(&mut self) -> (&mut [i64], &mut [i64]) {
        self.words.split_at_mut(self.dim)
    }

    /// Decodes a fully reduced packet: the gradient **sum** over all micros, and each micro's
    /// stats in micro order.
    pub fn decode(&self, scale: FixedScale, grad_sum: &mut [f64]) -> Vec<MicroStats> {
        assert_eq!(grad_sum.len(), self.dim, "gradient length");
        let inv = 1.0 / scale.to_fixed();
        for (g, &w) in grad_sum.iter_mut().zip(&self.words[..self.dim]) {
            *g = w as f64 * inv;
        }
        self.words[self.dim..]
            .chunks_exact(MICRO_FIELDS)
            .map(MicroStats::decode)
            .collect()
    }
}

/// `1.5 · 2^52`: adding it to `|y| ≤ 2^51` leaves a number in `[2^52, 2^53)`, whose unit in the
/// last place is 1, so the addition itself rounds `y` to the nearest integer (ties to even) and
/// the integer sits in the low mantissa bits.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// `y` rounded to the nearest integer (ties to even) for `|y| ≤ 2^51`, as `i64`, with no branch
/// and no libm call, so the loop vectorizes. Outside that range the result is a deterministic
/// wrong value; callers detect those micros through `max_abs` and redo the step.
#[inline(always)]
fn quantize(y: f64) -> i64 {
    ((y + ROUND_MAGIC).to_bits() as i64).wrapping_sub(ROUND_MAGIC.to_bits() as i64)
}

/// Accumulators per lane: independent chains that the compiler keeps in vector registers.
const LANES: usize = 8;

/// Lane accumulators of `(Σ x², max |x|)`. Both passes below fold through them in the same order, so a gradient's
/// stats have the same bits whether it was quantized or only measured.
#[derive(Default)]
struct NormMax {
    sq: [f64; LANES],
    mx: [f64; LANES],
}

impl NormMax {
    #[inline(always)]
    fn add(&mut self, lane: usize, x: f64) {
        self.sq[lane] += x * x;
        let a = x.abs();
        // A select: a NaN leaves the max alone (it shows in `Σ x²` instead).
        self.mx[lane] = if a > self.mx[lane] { a } else { self.mx[lane] };
    }

    /// `(Σ x², max |x|)`, NaN as the max when any `x` was NaN.
    fn finish(&self) -> (f64, f64) {
        let total: f64 = self.sq.iter().sum();
        let max_abs = self.mx.iter().fold(0.0f64, |a, &b| a.max(b));
        (total, if total.is_nan() { f64::NAN } else { max_abs })
    }
}

/// One pass over a micro's gradient: `words += quantize(x·s)`, and `(Σ x², max |x|)` with NaN as
/// the max when any `x` is NaN (a NaN makes `Σ x²` NaN, squares being non-negative otherwise).
fn fused_pass(words: &mut [i64], xs: &[f64], s: f64) -> (f64, f64) {
    let mut acc = NormMax::default();
    let mut wc = words.chunks_exact_mut(LANES);
    let mut xc = xs.chunks_exact(LANES);
    for (w, x) in (&mut wc).zip(&mut xc) {
        for k in 0..LANES {
            acc.add(k, x[k]);
            w[k] = w[k].wrapping_add(quantize(x[k] * s));
        }
    }
    for (w, &x) in wc.into_remainder().iter_mut().zip(xc.remainder()) {
        acc.add(0, x);
        *w = w.wrapping_add(quantize(x * s));
    }
    acc.finish()
}

/// `words[i] += round(xs[i] · 2^f)` (wrapping) at `scale`: the quantization of
/// [`Packet::add_micro`] for one piece of a micro's gradient (the words are the same
/// element by element, whatever the pieces).
pub fn add_quantized(words: &mut [i64], xs: &[f64], scale: FixedScale) {
    assert_eq!(words.len(), xs.len(), "piece length");
    let s = scale.to_fixed();
    for (w, &x) in words.iter_mut().zip(xs) {
        *w = w.wrapping_add(quantize(x * s));
    }
}

/// `(Σ x², max |x|)`, with NaN as the max when any `x` is NaN: [`fused_pass`]'s stats without
/// its words, and without a buffer for them (it was a zeroed allocation of the gradient's size,
/// page-faulted in on every overlapped step).
fn norm_and_max(xs: &[f64]) -> (f64, f64) {
    let mut acc = NormMax::default();
    let mut xc = xs.chunks_exact(LANES);
    for x in &mut xc {
        for (k, &v) in x.iter().enumerate() {
            acc.add(k, v);
        }
    }
    for &x in xc.remainder() {
        acc.add(0, x);
    }
    acc.finish()
}

/// `acc[i] ← acc[i] + x[i]` with wrapping: the one reduction operator of exact mode.
pub fn merge_words(acc: &mut [i64], x: &[i64]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a = a.wrapping_add(*b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, rng};
    use rand::Rng;

    fn stats(loss: f64) -> BatchStats {
        BatchStats {
            loss_sum: loss,
            correct: Some(3),
            dead_relu: None,
        }
    }

    #[test]
    fn any_grouping_and_order_gives_identical_words() {
        let (dim, n) = (37, 9);
        let mut r = rng(1, Stream::Aux, 0);
        let grads: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..dim).map(|_| r.random_range(-1e3..1e3)).collect())
            .collect();
        let scale = FixedScale::INITIAL.fitted(1e3, n);
        let mut whole = Packet::zeroed(dim, n);
        for (j, g) in grads.iter().enumerate() {
            whole.add_micro(j, g, stats(j as f64), scale);
        }
        // Three workers with uneven shares, merged in reverse order.
        let shares = [0..2, 2..7, 7..9];
        let mut parts: Vec<Packet> = shares
            .iter()
            .map(|range| {
                let mut p = Packet::zeroed(dim, n);
                for j in range.clone() {
                    p.add_micro(j, &grads[j], stats(j as f64), scale);
                }
                p
            })
            .collect();
        let mut total = parts.pop().unwrap();
        while let Some(p) = parts.pop() {
            total.merge(&p);
        }
        assert_eq!(total, whole);
    }

    #[test]
    fn decoded_sum_is_within_one_unit_per_micro_of_the_true_sum() {
        let (dim, n) = (5, 4);
        let grads = [
            [1.5, -2.25, 1e-9, 3.0, 0.1],
            [0.5, 0.25, 1e-9, -3.0, 0.2],
            [0.0; 5],
            [1.0; 5],
        ];
        let scale = FixedScale::INITIAL.fitted(3.0, n);
        let mut p = Packet::zeroed(dim, n);
        for (j, g) in grads.iter().enumerate() {
            p.add_micro(j, g, stats(1.0), scale);
        }
        let mut sum = vec![0.0; dim];
        let micro = p.decode(scale, &mut sum);
        let unit = (2f64).powi(-scale.frac_bits);
        for i in 0..dim {
            let exact: f64 = grads.iter().map(|g| g[i]).sum();
            assert!(
                (sum[i] - exact).abs() <= n as f64 * 0.5 * unit,
                "{i}: {} vs {exact}",
                sum[i]
            );
        }
        // Bound min(2^51, 2^62/4) = 2^51, 3.0 < 2^2, headroom 8 => f = 51 - 2 - 8 = 41.
        assert_eq!(scale.frac_bits, 41);
        assert_eq!(micro.len(), n);
        assert_eq!(micro[1].max_abs, 3.0);
        assert_eq!(
            micro[0].grad_sum_sq,
            1.5f64.powi(2) + 2.25f64.powi(2) + 1e-18 + 9.0 + 0.01
        );
        assert_eq!(micro[3].correct, Some(3));
        assert_eq!(micro[3].dead_relu, None);
    }

    #[test]
    fn a_micro_beyond_the_bound_is_detected_and_the_fitted_scale_fits() {
        let n = 16;
        let scale = FixedScale::INITIAL;
        // Bound at f = 32: min(2^51, 2^62/16) / 2^32 = 2^19.
        assert!(scale.fits((2f64).powi(19), n));
        assert!(!scale.fits((2f64).powi(19) * 1.01, n));
        // With 2^14 micros the i64 total is the tighter bound: 2^62/2^14 / 2^32 = 2^16.
        assert!(
            scale.fits((2f64).powi(16), 1 << 14) && !scale.fits((2f64).powi(16) * 1.01, 1 << 14)
        );
        let refit = scale.fitted(1e12, n);
        assert!(refit.fits(1e12, n) && refit.fits(1e12 * 255.0, n));
        assert!(
            !refit.fits(1e12 * 1024.0, n),
            "headroom is 8 bits, not more"
        );
        assert!(!scale.fits(f64::NAN, n) && !scale.fits(f64::INFINITY, n));
    }

    #[test]
    fn quantize_rounds_to_nearest_with_ties_to_even_over_its_whole_range() {
        for (y, q) in [
            (0.0, 0),
            (0.4, 0),
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.7, -3),
        ] {
            assert_eq!(quantize(y), q, "{y}");
        }
        let top = (2f64).powi(51);
        assert_eq!(quantize(top), 1i64 << 51);
        assert_eq!(quantize(-top), -(1i64 << 51));
        assert_eq!(
            quantize(top - 0.5),
            1i64 << 51,
            "tie goes to the even neighbour"
        );
        assert_eq!(
            quantize(top - 1.5),
            (1i64 << 51) - 2,
            "tie goes to the even neighbour"
        );
        assert_eq!(quantize(-(top - 1.0)), 1 - (1i64 << 51));
    }

    #[test]
    fn nan_gradients_surface_in_max_abs() {
        let s = MicroStats::measure(stats(0.0), &[1.0, f64::NAN, 2.0]);
        assert!(s.max_abs.is_nan());
        let mut p = Packet::zeroed(2, 1);
        let s = p.add_micro(0, &[f64::NAN, 1.0], stats(0.0), FixedScale::INITIAL);
        assert!(s.max_abs.is_nan());
        assert_eq!(MicroStats::measure(stats(0.0), &[-3.0, 2.0]).max_abs, 3.0);
    }

    #[test]
    fn measuring_a_gradient_gives_the_stats_of_quantizing_it_bit_for_bit() {
        // Lengths around the lane width (remainders included); values of mixed sign and
        // magnitude, so the order of the sums shows in the last bits.
        let mut r = rng(7, Stream::TrainSample, 0);
        for len in [0, 1, 7, 8, 9, 63, 1001] {
            let xs: Vec<f64> = (0..len)
                .map(|_| r.random_range(-1.0..1.0) * 10f64.powi(r.random_range(-6..6)))
                .collect();
            let naive_sq: f64 = xs.iter().map(|x| x * x).sum();
            let naive_max = xs.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let mut p = Packet::zeroed(len, 1);
            let q = p.add_micro(0, &xs, stats(0.0), FixedScale::INITIAL);
            let m = MicroStats::measure(stats(0.0), &xs);
            assert_eq!(
                q.grad_sum_sq.to_bits(),
                m.grad_sum_sq.to_bits(),
                "len {len}"
            );
            assert_eq!(q.max_abs.to_bits(), m.max_abs.to_bits(), "len {len}");
            approx::assert_relative_eq!(m.grad_sum_sq, naive_sq, max_relative = 1e-12);
            assert_eq!(m.max_abs, naive_max, "len {len}");
        }
    }
}
