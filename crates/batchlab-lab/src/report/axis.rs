//! Axis ranges, ticks and number labels. They are computed here rather than by plotters so that a
//! log axis gets readable ticks over any span (plotters' own log ticks vanish under one decade)
//! and labels stay short.
//!
//! An axis works in *drawing space*: the value itself on a linear axis, `log10(value)` on a log
//! axis. Plotters then maps drawing space linearly to pixels, so the log mapping is exactly
//! `px = px_lo + (log10 v - lo)/(hi - lo)·(px_hi - px_lo)`.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// The value's position in drawing space, or `None` where it cannot be drawn (non-finite, or
/// `≤ 0` on a log axis).
pub(super) fn to_draw(v: f64, log: bool) -> Option<f64> {
    match (v.is_finite(), log) {
        (false, _) => None,
        (true, false) => Some(v),
        (true, true) => (v > 0.0).then(|| v.log10()),
    }
}

/// One axis in drawing space, with its labelled ticks and its light grid lines.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Axis {
    /// Logarithmic axis.
    pub log: bool,
    /// Lower end of the drawn range.
    pub lo: f64,
    /// Upper end of the drawn range.
    pub hi: f64,
    /// Labelled ticks (bold grid lines).
    pub ticks: Vec<f64>,
    /// Unlabelled light grid lines (2..9 × 10^k on a log axis).
    pub minor: Vec<f64>,
    /// Tick spacing of a linear axis, which sets the labels' decimals.
    step: f64,
}

/// Fraction of the data span added on each side so markers are not cut by the frame.
const PAD: f64 = 0.04;

impl Axis {
    /// An axis covering `values` (drawing space, finite), aiming at about `target` labels.
    /// With no values it covers `0..1` (linear) or `1..10` (log).
    pub fn covering(values: impl IntoIterator<Item = f64>, log: bool, target: usize) -> Self {
        let (mut lo, mut hi) = values
            .into_iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        } else if hi - lo <= f64::EPSILON * lo.abs().max(hi.abs()).max(f64::MIN_POSITIVE) {
            let half = if log {
                0.5
            } else if lo == 0.0 {
                1.0
            } else {
                0.1 * lo.abs()
            };
            (lo, hi) = (lo - half, hi + half);
        } else {
            let pad = PAD * (hi - lo);
            (lo, hi) = (lo - pad, hi + pad);
        }
        if !(hi - lo).is_finite() {
            // Data near ±f64::MAX: fall back to a range that can be subdivided.
            (lo, hi) = (lo.max(-f64::MAX / 4.0), hi.min(f64::MAX / 4.0));
        }
        let target = target.max(2);
        let (ticks, minor, step) = if log {
            let (ticks, minor) = log_ticks(lo, hi, target);
            (ticks, minor, 0.0)
        } else {
            let (ticks, step) = linear_ticks(lo, hi, target);
            (ticks, Vec::new(), step)
        };
        Self {
            log,
            lo,
            hi,
            ticks,
            minor,
            step,
        }
    }

    /// The label of the tick at `t` (drawing space).
    pub fn label(&self, t: f64) -> String {
        if self.log {
            fmt_num(10f64.powf(t))
        } else {
            fmt_linear(t, self.step, self.lo.abs().max(self.hi.abs()))
        }
    }
}

impl Axis {
    /// An axis over `lo..hi` with the given labelled ticks and no light grid (labels are the
    /// caller's, through its formatter).
    pub fn fixed(lo: f64, hi: f64, ticks: Vec<f64>) -> Self {
        Self {
            log: false,
            lo,
            hi,
            ticks,
            minor: Vec::new(),
            step: 0.0,
        }
    }
}

/// Plotters draws through this: a linear map of drawing space onto pixels, with our ticks as its
/// bold key points and `minor` as its light ones.
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value - self.lo) / (self.hi - self.lo);
        let pixels = f64::from(limit.1 - limit.0) * frac;
        limit.0 + pixels.round().clamp(-1e6, 1e6) as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// `raw` rounded up to 1, 2, 2.5 or 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    let base = 10f64.powf(raw.log10().floor());
    let m = raw / base;
    let nice = [1.0, 2.0, 2.5, 5.0]
        .into_iter()
        .find(|&n| m <= n * (1.0 + 1e-9))
        .unwrap_or(10.0);
    nice * base
}

/// Multiples of a nice step inside `[lo, hi]`, and the step.
fn linear_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let step = nice_step((hi - lo) / target as f64);
    if !(step.is_finite() && step > 0.0) {
        return (vec![lo, hi], hi - lo);
    }
    let first = (lo / step).ceil();
    let last = (hi / step).floor();
    if !(last - first).is_finite() || last - first > 1000.0 {
        return (vec![lo, hi], hi - lo);
    }
    let ticks = (0..=(last - first) as i64)
        .map(|k| (first + k as f64) * step)
        .collect();
    (ticks, step)
}

/// Ticks of a log axis over `[lo, hi]` (drawing space): labelled decades (every k-th when they
/// are many), or 1-2-5 ticks when fewer than three decades show, or linear ticks in value space
/// under one decade; light grid lines at the other multiples of each decade.
fn log_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, Vec<f64>) {
    let k_lo = lo.floor() as i64;
    let k_hi = hi.floor() as i64;
    let inside = |t: f64| t >= lo - 1e-12 && t <= hi + 1e-12;
    let multiples = |ms: &[f64]| -> Vec<f64> {
        (k_lo..=k_hi)
            .flat_map(|k| ms.iter().map(move |m| (m * 10f64.powi(k as i32)).log10()))
            .filter(|&t| inside(t))
            .collect()
    };
    let decades: Vec<i64> = (lo.ceil() as i64..=k_hi).collect();
    if decades.len() >= 3 {
        let every = decades.len().div_ceil(target).max(1) as i64;
        let (ticks, skipped): (Vec<i64>, Vec<i64>) =
            decades.iter().partition(|&&k| k.rem_euclid(every) == 0);
        let minor = if every == 1 && decades.len() <= 12 {
            multiples(&[2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
        } else {
            skipped.into_iter().map(|k| k as f64).collect()
        };
        return (ticks.into_iter().map(|k| k as f64).collect(), minor);
    }
    let one_two_five = multiples(&[1.0, 2.0, 5.0]);
    if one_two_five.len() >= 2 {
        return (one_two_five, multiples(&[3.0, 4.0, 6.0, 7.0, 8.0, 9.0]));
    }
    let (values, _) = linear_ticks(10f64.powf(lo), 10f64.powf(hi), target);
    let ticks = values
        .into_iter()
        .filter(|&v| v > 0.0)
        .map(f64::log10)
        .filter(|&t| inside(t))
        .collect();
    (ticks, Vec::new())
}

/// A short label: up to four significant digits, scientific (`2.5e-4`, `1e6`) outside
/// `[1e-3, 1e4)`.
pub(crate) fn fmt_num(v: f64) -> String {
    fmt_sig(v, 4)
}

/// `v` with at most `digits` significant digits (at least 1), trailing zeros dropped;
/// scientific outside `[1e-3, 1e4)`.
pub(super) fn fmt_sig(v: f64, digits: usize) -> String {
    let digits = digits.max(1);
    if v == 0.0 {
        return "0".to_owned();
    }
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-3..1e4).contains(&a) {
        let s = format!("{v:.prec$e}", prec = digits.min(3) - 1);
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim_zeros(mantissa));
    }
    let decimals = (digits as i32 - 1 - a.log10().floor() as i32).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}"))
}

/// The label of a linear-axis tick: the decimals the step needs, or [`fmt_num`] for very large
/// or very small scales.
fn fmt_linear(v: f64, step: f64, scale: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".to_owned();
    }
    if !(step >= 1e-3 && scale < 1e5) {
        return fmt_num(v);
    }
    let decimals = (0..=6)
        .find(|&d| {
            let s = step * 10f64.powi(d);
            (s - s.round()).abs() < 1e-6 * s.max(1.0)
        })
        .unwrap_or(6) as usize;
    format!("{v:.decimals$}")
}

fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<String> {
        axis.ticks.iter().map(|&t| axis.label(t)).collect()
    }

    #[test]
    fn log_axis_over_six_decades_labels_decades() {
        let axis = Axis::covering([0.0, 6.0], true, 10);
        assert_eq!(
            labels(&axis),
            ["1", "10", "100", "1000", "1e4", "1e5", "1e6"]
        );
        assert!(axis.minor.len() >= 6 * 8 - 2, "light lines at 2..9 × 10^k");
    }

    #[test]
    fn log_axis_over_many_decades_thins_its_labels() {
        let axis = Axis::covering([-10.0, 10.0], true, 5);
        assert!(axis.ticks.len() <= 6, "{:?}", labels(&axis));
        assert!(axis.ticks.contains(&0.0));
    }

    #[test]
    fn log_axis_under_three_decades_labels_one_two_five() {
        let axis = Axis::covering([2f64.log10(), 150f64.log10()], true, 8);
        assert_eq!(labels(&axis), ["2", "5", "10", "20", "50", "100"]);
    }

    #[test]
    fn log_axis_under_one_decade_still_has_ticks() {
        let axis = Axis::covering([3f64.log10(), 8f64.log10()], true, 6);
        assert!(axis.ticks.len() >= 2, "{:?}", labels(&axis));
        assert!(labels(&axis).contains(&"5".to_owned()));
    }

    #[test]
    fn linear_ticks_are_nice_and_labelled_with_the_step_decimals() {
        let axis = Axis::covering([0.0, 1.0], false, 5);
        assert_eq!(labels(&axis), ["0", "0.25", "0.50", "0.75", "1.00"]);
        let axis = Axis::covering([0.0, 5000.0], false, 6);
        assert_eq!(labels(&axis), ["0", "1000", "2000", "3000", "4000", "5000"]);
    }

    #[test]
    fn degenerate_and_empty_ranges_still_make_an_axis() {
        for (values, log) in [
            (vec![], false),
            (vec![], true),
            (vec![3.0], false),
            (vec![0.0], false),
            (vec![2.0], true),
        ] {
            let axis = Axis::covering(values, log, 5);
            assert!(axis.lo < axis.hi && axis.ticks.len() >= 2, "{axis:?}");
        }
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(fmt_num(1234.5678), "1235");
        assert_eq!(fmt_num(0.012346), "0.01235");
        assert_eq!(fmt_num(2.5e-4), "2.5e-4");
        assert_eq!(fmt_num(-3e6), "-3e6");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_sig(0.021057, 3), "0.0211");
        assert_eq!(fmt_sig(123_456.0, 3), "1.23e5");
    }

    #[test]
    fn drawing_space_skips_what_a_log_axis_cannot_show() {
        assert_eq!(to_draw(100.0, true), Some(2.0));
        assert_eq!(to_draw(0.0, true), None);
        assert_eq!(to_draw(-1.0, true), None);
        assert_eq!(to_draw(f64::NAN, false), None);
        assert_eq!(to_draw(f64::INFINITY, false), None);
        assert_eq!(to_draw(-1.0, false), Some(-1.0));
    }
}
