//! Small dense-vector helpers on `f64` slices. Accumulations are in `f64`.

/// Independent accumulators per reduction: a serial `f64` sum is bound by the add latency;
/// eight lanes let the compiler keep the chains in vector registers. The summation order is
/// fixed, so results are deterministic.
const LANES: usize = 8;

/// `Σ a_i b_i`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `Σ a_i²`.
pub fn norm_sq(a: &[f64]) -> f64 {
    dot(a, a)
}

/// `y ← y + α x`.
pub fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `x ← α x`.
pub fn scale(alpha: f64, x: &mut [f64]) {
    for xi in x {
        *xi *= alpha;
    }
}

/// Cosine of the angle between `a` and `b` (0 when either is zero).
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d = norm_sq(a).sqrt() * norm_sq(b).sqrt();
    if d > 0.0 { dot(a, b) / d } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_their_definitions_on_every_tail_length() {
        for n in 0..40 {
            let a: Vec<f64> = (0..n).map(|i| i as f64 - 7.0).collect();
            let b: Vec<f64> = (0..n).map(|i| 0.5 * i as f64).collect();
            let d: f64 = (0..n).map(|i| (i as f64 - 7.0) * 0.5 * i as f64).sum();
            // Integers and halves: every partial sum is exact, so the order does not matter.
            assert_eq!(dot(&a, &b), d, "n = {n}");
            assert_eq!(
                norm_sq(&a),
                (0..n).map(|i| (i as f64 - 7.0).powi(2)).sum::<f64>()
            );
        }
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-15);
    }
}
