//! Order statistics, each convention written once and named for what it is.
//!
//! Different summaries need different conventions (a latency percentile is a value that
//! occurred; a median of steps over seeds interpolates; a median of rates is taken in log
//! space), so each has its own function here and every caller says which one it uses. All
//! take values sorted ascending ([`sorted`]), NaN last.

/// `values` sorted ascending by `f64::total_cmp` (NaN after every number).
pub fn sorted(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q`-quantile with linear interpolation between order statistics (Hyndman & Fan type 7,
/// NumPy's default); `None` for no values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let h = last as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// The median by [`quantile`]: the mean of the middle two for an even count.
pub fn median(sorted: &[f64]) -> Option<f64> {
    quantile(sorted, 0.5)
}

/// The nearest-rank `q`-quantile: the smallest value with at least a fraction `q` of the
/// values at or below it (a value that occurred, as latency percentiles are reported); NaN for
/// no values.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

/// The upper median: the middle value, the upper of the middle two for an even count (always
/// a value that occurred); `None` for no values.
pub fn upper_median(sorted: &[f64]) -> Option<f64> {
    sorted.get(sorted.len() / 2).copied()
}

/// The median of positive values in log space: the middle value for an odd count, the
/// geometric mean of the middle two for an even one; `None` for no values.
pub fn log_median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] * sorted[n / 2]).sqrt()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_convention_against_hand_computed_values() {
        let odd = sorted([5.0, 1.0, 3.0]);
        let even = sorted([4.0, 1.0, 2.0, 8.0]);
        assert_eq!(odd, vec![1.0, 3.0, 5.0]);
        // NumPy: np.quantile([1, 2, 4, 8], [0.5, 0.25, 0.9]) = [3.0, 1.75, 6.8].
        assert_eq!(median(&even), Some(3.0));
        assert_eq!(quantile(&even, 0.25), Some(1.75));
        assert!((quantile(&even, 0.9).unwrap() - 6.8).abs() < 1e-12);
        assert_eq!(median(&odd), Some(3.0));
        assert_eq!(median(&[]), None);
        // Nearest rank: ⌈0.5·4⌉ = 2nd value, ⌈0.99·4⌉ = 4th.
        assert_eq!(nearest_rank(&even, 0.5), 2.0);
        assert_eq!(nearest_rank(&even, 0.99), 8.0);
        assert!(nearest_rank(&[], 0.5).is_nan());
        assert_eq!(upper_median(&even), Some(4.0));
        assert_eq!(upper_median(&odd), Some(3.0));
        // √(2·4) = 2√2.
        assert_eq!(log_median(&even), Some(8f64.sqrt()));
        assert_eq!(log_median(&odd), Some(3.0));
        assert_eq!(log_median(&[]), None);
        // Infinity sorts last, NaN after it.
        assert_eq!(
            sorted([f64::NAN, f64::INFINITY, 0.0])[..2],
            [0.0, f64::INFINITY]
        );
    }
}
