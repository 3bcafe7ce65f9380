//! Colours: the viridis colormap (heatmaps, ordered series) and the palettes that give every
//! series of a plot a colour of its own.
//!
//! ```text
//!  Palette::Categorical  n ≤ 10: Tableau 10        n > 10: n hues around the wheel
//!  Palette::Sequential   viridis sampled evenly on [0, SEQUENTIAL_END]: dark purple … green
//!                        (ordered series, e.g. batch sizes, read as ordered)
//! ```

use plotters::style::RGBColor;

use super::Palette;

/// Viridis at nine evenly spaced stops: perceptually uniform, readable in grey.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 45, 123),
    (59, 82, 139),
    (44, 114, 142),
    (33, 145, 140),
    (40, 174, 128),
    (94, 201, 98),
    (173, 220, 48),
    (253, 231, 37),
];

/// Where the sequential palette stops on viridis: beyond it the yellow is too pale for a thin
/// line on a white page.
const SEQUENTIAL_END: f64 = 0.85;

/// Tableau 10: distinguishable colours, also in print.
const TABLEAU: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Colours of reference lines beside a sequential palette: hues viridis never takes (red,
/// orange, pink) and a grey, so a dashed `B_crit` is not read as one more series.
const ACCENTS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(120, 120, 120),
    RGBColor(255, 127, 14),
    RGBColor(227, 119, 194),
];

/// Viridis at `t ∈ [0, 1]` (clamped), linearly interpolated between stops.
pub(super) fn viridis(t: f64) -> RGBColor {
    let x = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) } * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |a: u8, b: u8| (f64::from(a) + f * (f64::from(b) - f64::from(a))).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// `n` colours in order: viridis sampled evenly from its dark end to `SEQUENTIAL_END`, so the
/// first and the last are the farthest apart and neighbours differ by the same step.
pub(super) fn sequential(n: usize) -> Vec<RGBColor> {
    match n {
        0 => Vec::new(),
        1 => vec![viridis(0.0)],
        _ => (0..n)
            .map(|i| viridis(SEQUENTIAL_END * i as f64 / (n - 1) as f64))
            .collect(),
    }
}

/// `n` unordered colours: Tableau 10 while it lasts; beyond, `n` hues evenly around the colour
/// wheel, alternately darker and lighter so that neighbours differ in two ways.
pub(super) fn categorical(n: usize) -> Vec<RGBColor> {
    if n <= TABLEAU.len() {
        return TABLEAU[..n].to_vec();
    }
    (0..n)
        .map(|i| {
            let lightness = if i % 2 == 0 { 0.42 } else { 0.58 };
            hsl(360.0 * i as f64 / n as f64, 0.7, lightness)
        })
        .collect()
}

/// The `i`-th reference line's colour beside a sequential palette (cycling after four).
pub(super) fn accent(i: usize) -> RGBColor {
    ACCENTS[i % ACCENTS.len()]
}

impl Palette {
    /// `n` colours of this palette, one per series group, in order.
    pub(super) fn colors(self, n: usize) -> Vec<RGBColor> {
        match self {
            Self::Categorical => categorical(n),
            Self::Sequential => sequential(n),
        }
    }
}

/// The colour of hue `h` (degrees), saturation `s` and lightness `l` (both in `[0, 1]`).
fn hsl(h: f64, s: f64, l: f64) -> RGBColor {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h.rem_euclid(360.0) / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let byte = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    RGBColor(byte(r), byte(g), byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Euclidean distance in RGB bytes: a crude but sufficient check that two colours differ
    /// visibly, not only in the last bit.
    fn distance(a: RGBColor, b: RGBColor) -> f64 {
        let d = |x: u8, y: u8| (f64::from(x) - f64::from(y)).powi(2);
        (d(a.0, b.0) + d(a.1, b.1) + d(a.2, b.2)).sqrt()
    }

    fn assert_distinct(colors: &[RGBColor], min_distance: f64, what: &str) {
        for (i, &a) in colors.iter().enumerate() {
            for &b in &colors[i + 1..] {
                assert!(
                    distance(a, b) >= min_distance,
                    "{what}, {} colours: {a:?} and {b:?} too close",
                    colors.len()
                );
            }
        }
    }

    #[test]
    fn every_palette_gives_n_distinct_colours_up_to_32() {
        for n in 1..=32 {
            for palette in [Palette::Categorical, Palette::Sequential] {
                let colors = palette.colors(n);
                assert_eq!(colors.len(), n);
                // 32 colours along one colormap are close, but never equal.
                assert_distinct(&colors, 4.0, &format!("{palette:?}"));
                if n > 1 {
                    assert_ne!(colors[0], colors[n - 1], "first and last, {n}");
                }
            }
        }
        // The sweep's eleven batch sizes: far enough apart to tell neighbours.
        assert_distinct(&sequential(11), 20.0, "sequential");
        assert_distinct(&categorical(11), 20.0, "categorical");
    }

    #[test]
    fn sequential_colours_are_ordered_dark_to_light() {
        // Viridis rises monotonically in lightness; the relative luminance of the samples must
        // too, so B = 1 … 1024 reads as an order.
        let luminance = |c: RGBColor| {
            let lin = |v: u8| {
                let v = f64::from(v) / 255.0;
                if v <= 0.04045 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * lin(c.0) + 0.7152 * lin(c.1) + 0.0722 * lin(c.2)
        };
        for n in [2, 5, 11, 32] {
            let l: Vec<f64> = sequential(n).into_iter().map(luminance).collect();
            assert!(l.windows(2).all(|w| w[0] < w[1]), "{n}: {l:?}");
        }
        // Neither end is the pale yellow that vanishes on white.
        assert!(luminance(sequential(11)[10]) < 0.7);
    }

    #[test]
    fn viridis_ends_and_middle_are_its_stops() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(0.5), RGBColor(33, 145, 140));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }

    #[test]
    fn hsl_matches_known_colours() {
        assert_eq!(hsl(0.0, 1.0, 0.5), RGBColor(255, 0, 0));
        assert_eq!(hsl(120.0, 1.0, 0.5), RGBColor(0, 255, 0));
        assert_eq!(hsl(240.0, 1.0, 0.25), RGBColor(0, 0, 128));
        assert_eq!(hsl(60.0, 0.0, 0.5), RGBColor(128, 128, 128));
    }

    #[test]
    fn accents_are_not_viridis_hues() {
        // A reference line must not look like one of the series.
        for i in 0..4 {
            for c in sequential(32) {
                assert!(distance(accent(i), c) > 60.0, "{:?} near {c:?}", accent(i));
            }
        }
    }
}
