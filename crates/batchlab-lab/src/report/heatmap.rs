//! [`heatmap_svg`]: a [`Heatmap`] as an SVG grid of coloured cells with a colour bar.
//!
//! ```text
//!        title
//!  y   ┌────┬────┬────┐   value label
//!  tick│0.12│0.30│ ×  │   ██ hi
//!  tick│0.05│    │0.90│   ██
//!      └────┴────┴────┘   ██ lo
//!       tick tick tick    ▬ diverged   (blank: not run)
//! ```

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Heatmap;
use super::axis::{Axis, fmt_sig};
use super::color::viridis;
use super::plot::{
    CHAR_WIDTH, DESC_FONT, LEGEND_FONT, NOTE, NOTE_FONT, TICK_FONT, TITLE_FONT, render, text_width,
    truncate,
};

/// Colour of cells whose value is not finite (diverged runs).
const DIVERGED: RGBColor = RGBColor(200, 30, 45);
/// Width of the colour-bar column.
const LEGEND_W: u32 = 130;
/// Colour-bar steps.
const BAR_STEPS: usize = 48;

/// Maps finite values onto `[0, 1]`, by value or by its logarithm.
struct Scale {
    log: bool,
    lo: f64,
    hi: f64,
}

impl Scale {
    fn new(h: &Heatmap) -> Option<Self> {
        let finite: Vec<f64> = h
            .cells
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let log = h.log_color && finite.iter().all(|&v| v > 0.0);
        let f = |v: f64| if log { v.log10() } else { v };
        let lo = finite.iter().map(|&v| f(v)).reduce(f64::min)?;
        let hi = finite.iter().map(|&v| f(v)).reduce(f64::max)?;
        Some(Self { log, lo, hi })
    }

    fn t(&self, v: f64) -> f64 {
        let x = if self.log { v.log10() } else { v };
        if self.hi > self.lo {
            (x - self.lo) / (self.hi - self.lo)
        } else {
            0.5
        }
    }

    /// The value at `t`.
    fn value(&self, t: f64) -> f64 {
        let x = self.lo + t * (self.hi - self.lo);
        if self.log { 10f64.powf(x) } else { x }
    }
}

/// The map as an SVG document, `width × height` pixels (at least 240 × 180): one filled
/// `<rect>` per non-empty cell (after the white background), values written in cells that have
/// room, and a colour bar with the value range, the "diverged" colour and a note on blank cells.
/// Tick labels that would overlap are thinned. An empty grid says "no data".
pub fn heatmap_svg(h: &Heatmap, width: u32, height: u32) -> String {
    render((width.max(240), height.max(180)), |root| draw(root, h))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, h: &Heatmap) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (w, _) = root.dim_in_pixel();
    let rows = h.cells.len().max(h.y_ticks.len());
    let cols = h
        .cells
        .iter()
        .map(Vec::len)
        .chain([h.x_ticks.len()])
        .max()
        .unwrap_or(0);
    let scale = Scale::new(h);
    let (chart_area, legend_area) = root.split_horizontally(w - LEGEND_W.min(w / 3));

    let y_label_w = h
        .y_ticks
        .iter()
        .map(|t| text_width(t, TICK_FONT))
        .fold(0.0, f64::max);
    let x_label_w = h
        .x_ticks
        .iter()
        .map(|t| text_width(t, TICK_FONT))
        .fold(0.0, f64::max);
    let title_chars =
        (f64::from(chart_area.dim_in_pixel().0) / (TITLE_FONT / 1.24 * CHAR_WIDTH)) as usize;
    let centres = |n: usize| (0..n).map(|i| i as f64 + 0.5).collect::<Vec<_>>();
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(
            truncate(&h.title, title_chars),
            ("sans-serif", TITLE_FONT)
                .into_font()
                .style(FontStyle::Bold),
        )
        .margin(10)
        .x_label_area_size(44)
        .y_label_area_size((y_label_w + 34.0) as u32)
        .build_cartesian_2d(
            Axis::fixed(0.0, cols.max(1) as f64, centres(cols)),
            Axis::fixed(0.0, rows.max(1) as f64, centres(rows)),
        )
        .map_err(err)?;
    let (plot_w, plot_h) = chart.plotting_area().dim_in_pixel();
    let (cell_w, cell_h) = (
        f64::from(plot_w) / cols.max(1) as f64,
        f64::from(plot_h) / rows.max(1) as f64,
    );
    // Show every k-th tick label when they would overlap.
    let x_every = ((x_label_w + 8.0) / cell_w).ceil().max(1.0) as usize;
    let y_every = (18.0 / cell_h).ceil().max(1.0) as usize;
    let tick = |ticks: &[String], every: usize, t: f64| {
        let i = t.floor().max(0.0) as usize;
        if i.is_multiple_of(every) {
            ticks.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let x_fmt = |t: &f64| tick(&h.x_ticks, x_every, *t);
    let y_fmt = |t: &f64| tick(&h.y_ticks, y_every, *t);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(h.x_label.as_str())
        .y_desc(h.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", TICK_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
        .draw()
        .map_err(err)?;

    if rows == 0 || cols == 0 || h.cells.iter().flatten().all(Option::is_none) {
        chart
            .plotting_area()
            .draw(&Text::new(
                "no data",
                (cols.max(1) as f64 / 2.0, rows.max(1) as f64 / 2.0),
                ("sans-serif", TITLE_FONT)
                    .into_font()
                    .color(&NOTE)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(err)?;
    }
    let gap = (1.0 / cell_w, 1.0 / cell_h);
    let mut any_blank = cols * rows > h.cells.iter().flatten().filter(|c| c.is_some()).count();
    let mut any_diverged = false;
    for (r, row) in h.cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let Some(v) = *cell else {
                any_blank = true;
                continue;
            };
            let (x0, y0) = (c as f64, r as f64);
            let (color, text, dark) = match &scale {
                Some(s) if v.is_finite() => {
                    let t = s.t(v);
                    (viridis(t), fmt_sig(v, 3), t < 0.6)
                }
                _ => {
                    any_diverged = true;
                    let word = "diverged";
                    let fits = cell_w >= text_width(word, LEGEND_FONT) + 8.0;
                    (DIVERGED, if fits { word } else { "×" }.to_owned(), true)
                }
            };
            chart
                .draw_series([Rectangle::new(
                    [
                        (x0 + gap.0, y0 + gap.1),
                        (x0 + 1.0 - gap.0, y0 + 1.0 - gap.1),
                    ],
                    color.filled(),
                )])
                .map_err(err)?;
            if cell_w >= text_width(&text, LEGEND_FONT) + 8.0 && cell_h >= 18.0 {
                let ink = if dark { WHITE } else { BLACK };
                chart
                    .plotting_area()
                    .draw(&Text::new(
                        text,
                        (x0 + 0.5, y0 + 0.5),
                        ("sans-serif", LEGEND_FONT)
                            .into_font()
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))
                    .map_err(err)?;
            }
        }
    }
    draw_color_bar(
        &legend_area,
        h,
        scale.as_ref(),
        any_diverged,
        any_blank && rows * cols > 0,
    )
}

/// The colour bar (high values on top), then the "diverged" swatch and the blank-cell note.
fn draw_color_bar(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    h: &Heatmap,
    scale: Option<&Scale>,
    diverged: bool,
    blank: bool,
) -> Result<(), String> {
    let (w, height) = area.dim_in_pixel();
    let max_chars = ((f64::from(w) - 10.0) / (NOTE_FONT / 1.24 * CHAR_WIDTH)) as usize;
    let small = |color: &RGBColor| {
        ("sans-serif", NOTE_FONT)
            .into_font()
            .color(color)
            .pos(Pos::new(HPos::Left, VPos::Center))
    };
    let mut y = 52;
    if let Some(s) = scale {
        area.draw(&Text::new(
            truncate(&h.value_label, max_chars),
            (6, y),
            small(&BLACK),
        ))
        .map_err(err)?;
        y += 16;
        let bar_h = (height as i32 - y - 90).clamp(40, 240);
        let step = bar_h as f64 / BAR_STEPS as f64;
        for i in 0..BAR_STEPS {
            let t = 1.0 - (i as f64 + 0.5) / BAR_STEPS as f64;
            let yy = y + ((i as f64 + 0.5) * step).round() as i32;
            area.draw(&PathElement::new(
                vec![(8, yy), (24, yy)],
                viridis(t).stroke_width(step.ceil() as u32 + 1),
            ))
            .map_err(err)?;
        }
        for (t, at) in [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)] {
            let label = fmt_sig(s.value(t), 3);
            let yy = y + (at * bar_h as f64).round() as i32;
            area.draw(&Text::new(label, (30, yy), small(&BLACK)))
                .map_err(err)?;
        }
        y += bar_h + 26;
    }
    if diverged {
        area.draw(&PathElement::new(
            vec![(8, y), (24, y)],
            DIVERGED.stroke_width(12),
        ))
        .map_err(err)?;
        area.draw(&Text::new("diverged", (30, y), small(&BLACK)))
            .map_err(err)?;
        y += 22;
    }
    if blank {
        area.draw(&Text::new("blank: not run", (8, y), small(&NOTE)))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plot::tests::{assert_balanced, elements, num};

    fn map(cells: Vec<Vec<Option<f64>>>) -> Heatmap {
        Heatmap {
            title: "Warmup stability".into(),
            x_label: "warmup steps".into(),
            y_label: "peak rate".into(),
            x_ticks: ["0", "10", "100", "1000"].map(String::from).to_vec(),
            y_ticks: ["0.1", "0.3", "1"].map(String::from).to_vec(),
            cells,
            value_label: "final loss".into(),
            log_color: true,
        }
    }

    /// Filled cells: every `<rect>` but the full-size white background.
    fn cell_rects(svg: &str, (w, h): (f64, f64)) -> usize {
        elements(svg, "rect")
            .into_iter()
            .filter(|r| {
                !(num(r, "x") == 0.0
                    && num(r, "y") == 0.0
                    && num(r, "width") == w
                    && num(r, "height") == h)
            })
            .count()
    }

    #[test]
    fn one_rect_per_non_empty_cell() {
        let cells = vec![
            vec![Some(0.02), Some(0.05), None, Some(f64::INFINITY)],
            vec![Some(0.3), None, Some(f64::NAN)],
            vec![None, None, None, None],
        ];
        let h = map(cells);
        let out = heatmap_svg(&h, 640, 420);
        assert!(out.starts_with("<svg"));
        assert_balanced(&out);
        assert_eq!(cell_rects(&out, (640.0, 420.0)), 5);
        for text in [
            "Warmup stability",
            "warmup steps",
            "peak rate",
            "final loss",
            "diverged",
            "blank: not run",
            "1000",
        ] {
            assert!(out.contains(text), "missing {text}");
        }
        assert_eq!(elements(&out, "rect").len(), 6, "background and cells only");
    }

    #[test]
    fn colours_follow_the_value() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        let s = Scale::new(&map(vec![vec![Some(0.01), Some(1.0)]])).expect("values");
        assert!((s.t(0.1) - 0.5).abs() < 1e-12, "log colour scale");
        let s = Scale::new(&Heatmap {
            log_color: true,
            ..map(vec![vec![Some(-1.0), Some(1.0)]])
        })
        .expect("values");
        assert!(
            !s.log && (s.t(0.0) - 0.5).abs() < 1e-12,
            "linear when some value is ≤ 0"
        );
    }

    #[test]
    fn empty_maps_say_no_data() {
        for h in [Heatmap::default(), map(vec![]), map(vec![vec![None]])] {
            let out = heatmap_svg(&h, 300, 200);
            assert!(out.contains("no data"));
            assert_eq!(cell_rects(&out, (300.0, 200.0)), 0);
            assert_balanced(&out);
        }
    }
}
