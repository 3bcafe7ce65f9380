//! Small dense-vector helpers on `f64` slices. Accumulations are in `f64`.

/// `Σ a_i b_i`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `Σ a_i²`.
pub fn norm_sq(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum()
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
