//! [`svg`]: a [`Plot`] drawn by plotters into an SVG string.
//!
//! ```text
//!  ┌──────────── width ─────────────────────┐
//!  │        title                 │ legend  │
//!  │  y ┌────────────────────────┐│ ── a    │
//!  │  l │  lines, markers,       ││ ●  b    │
//!  │  a │  dashed reference lines││ -- ref  │
//!  │  b └────────────────────────┘│         │
//!  │          x label             │         │
//!  │ n points not drawn             (only when some were skipped)
//!  │ no point to draw: a, b, …       (only when some series have none)
//!  └────────────────────────────────────────┘
//! ```
//!
//! Colours: series sharing a [`Series::group`] share one. Each group, in order of first
//! appearance among the lines then the scatter series, takes the next colour of the plot's
//! [`Palette`] sampled over the number of groups that have something to draw, so no two groups
//! look alike however many there are. Reference lines follow (beside a sequential palette they
//! take accent colours that viridis never takes).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{Axis, to_draw};
use super::color::accent;
use super::html::escape;
use super::{Palette, Plot, Series};

/// Smallest drawn size: below it, labels and legend no longer fit.
const MIN_SIZE: (u32, u32) = (240, 180);
/// Plotters font sizes are 1.24 × the SVG `font-size` it writes; these give 17, 13.7, 12.1,
/// 12.9 and 11.3 px.
pub(super) const TITLE_FONT: f64 = 21.0;
pub(super) const DESC_FONT: f64 = 17.0;
pub(super) const TICK_FONT: f64 = 15.0;
pub(super) const LEGEND_FONT: f64 = 16.0;
pub(super) const NOTE_FONT: f64 = 14.0;
/// Estimated width of one character, as a fraction of the SVG font size: sans-serif text
/// measures about 0.5 in browsers; the margin keeps estimates on the safe side.
pub(super) const CHAR_WIDTH: f64 = 0.55;
/// Legend row height in pixels.
const LEGEND_ROW: i32 = 22;
/// Height in pixels of a line of the note under the plot.
const NOTE_ROW: u32 = 18;
/// Most points drawn per line: longer series keep each bucket's extremes (see [`decimate`]).
const MAX_LINE_POINTS: usize = 4000;

/// Light grey of the labelled grid lines.
pub(super) const GRID: RGBColor = RGBColor(215, 215, 215);
const LIGHT_GRID: RGBColor = RGBColor(238, 238, 238);
pub(super) const NOTE: RGBColor = RGBColor(110, 110, 110);

/// Width in pixels of `text` at plotters font size `font`, estimated.
pub(super) fn text_width(text: &str, font: f64) -> f64 {
    text.chars().count() as f64 * font / 1.24 * CHAR_WIDTH
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The plot as an SVG document (`<svg …>…</svg>`), `width × height` pixels (at least 240 × 180).
///
/// Points that are non-finite, or `≤ 0` on a log axis, are skipped and counted in a note; with
/// nothing to draw the plot says "no data". Lines longer than 4000 points keep the lowest and
/// highest point of each of 2000 consecutive buckets, so spikes survive. Never panics: were
/// plotters to fail, the SVG carries its error message instead of the plot.
pub fn svg(plot: &Plot, width: u32, height: u32) -> String {
    let size = (width.max(MIN_SIZE.0), height.max(MIN_SIZE.1));
    render(size, |root| draw(root, plot)).replace(DASH_SENTINEL, DASH_ATTRIBUTES)
}

/// Dashed lines are drawn as one polyline each with an SVG dash pattern, which plotters cannot
/// write: they are drawn with this opacity, which nothing else has, and the attribute is then
/// replaced by the pattern. (Plotters' own dashed series writes one element per dash: on a
/// noisy curve of thousands of points, tens of thousands of them.)
const DASH_ALPHA: f64 = 0.999;
/// How plotters writes [`DASH_ALPHA`].
const DASH_SENTINEL: &str = " opacity=\"0.999\"";
/// What replaces it: 8 px dashes, 5 px gaps.
const DASH_ATTRIBUTES: &str = " opacity=\"1\" stroke-dasharray=\"8 5\"";

/// Runs `draw` on a white SVG canvas of `size` and returns the document, or an SVG that shows
/// the error.
pub(super) fn render(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
) -> String {
    let mut buf = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        draw(&root).and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match drawn {
        Ok(()) => buf,
        Err(message) => format!(
            "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
             xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"20\">plot failed: {}</text></svg>\n",
            escape(&message),
            w = size.0,
            h = size.1
        ),
    }
}

/// How a legend entry's swatch is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Swatch {
    Line,
    Marker,
    Dashed,
}

struct Entry<'a> {
    label: &'a str,
    color: RGBColor,
    swatch: Swatch,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One series in drawing space, with what its legend entry needs.
struct Drawn<'a> {
    label: &'a str,
    points: Vec<(f64, f64)>,
    swatch: Swatch,
    /// Index of its colour group; `None` when it has no point to draw.
    group: Option<usize>,
}

/// The plot's series (lines, then scatter) in drawing space, each with its colour group: the
/// series sharing a `group` key share an index, every other series has one of its own.
/// Indices count from 0 in order of first appearance among the series with a point to draw,
/// so a series with nothing to draw takes no colour.
fn drawn_series(plot: &Plot) -> Vec<Drawn<'_>> {
    let keep = |&(x, y): &(f64, f64)| Some((to_draw(x, plot.log_x)?, to_draw(y, plot.log_y)?));
    let swatch = |s: &Series, line: bool| match (line, s.dashed) {
        (false, _) => Swatch::Marker,
        (true, false) => Swatch::Line,
        (true, true) => Swatch::Dashed,
    };
    let all = plot
        .lines
        .iter()
        .map(|s| (s, true))
        .chain(plot.scatter.iter().map(|s| (s, false)));
    let mut keys: Vec<Option<&str>> = Vec::new();
    let mut out = Vec::new();
    for (s, line) in all {
        let points: Vec<(f64, f64)> = s.points.iter().filter_map(keep).collect();
        let key = s.group.as_deref();
        let group = if points.is_empty() {
            None
        } else if let Some(i) = key.and_then(|k| keys.iter().position(|&g| g == Some(k))) {
            Some(i)
        } else {
            keys.push(key);
            Some(keys.len() - 1)
        };
        out.push(Drawn {
            label: &s.label,
            points,
            swatch: swatch(s, line),
            group,
        });
    }
    out
}

/// The colours of `groups` series groups and of `refs` reference lines.
fn colors(palette: Palette, groups: usize, refs: usize) -> (Vec<RGBColor>, Vec<RGBColor>) {
    match palette {
        Palette::Categorical => {
            let mut all = palette.colors(groups + refs);
            let refs = all.split_off(groups);
            (all, refs)
        }
        Palette::Sequential => (palette.colors(groups), (0..refs).map(accent).collect()),
    }
}

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, plot: &Plot) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (w, h) = root.dim_in_pixel();

    // Everything in drawing space (log10 on log axes); what cannot be drawn is counted.
    let series = drawn_series(plot);
    let refs = |lines: &[(f64, String)], log: bool| -> Vec<Option<f64>> {
        lines.iter().map(|(v, _)| to_draw(*v, log)).collect()
    };
    let vlines = refs(&plot.vlines, plot.log_x);
    let hlines = refs(&plot.hlines, plot.log_y);
    let ref_lines: Vec<(&str, Option<f64>)> = plot
        .vlines
        .iter()
        .chain(&plot.hlines)
        .zip(vlines.iter().chain(&hlines))
        .map(|((_, label), &v)| (label.as_str(), v))
        .collect();
    let given = plot
        .lines
        .iter()
        .chain(&plot.scatter)
        .map(|s| s.points.len())
        .sum::<usize>()
        + ref_lines.len();
    let kept = series.iter().map(|s| s.points.len()).sum::<usize>()
        + ref_lines.iter().filter(|r| r.1.is_some()).count();
    let has_data = series.iter().any(|s| s.group.is_some());

    // Colours: one per group with something to draw, then one per drawn reference line.
    let groups = series
        .iter()
        .filter_map(|s| s.group)
        .max()
        .map_or(0, |g| g + 1);
    let drawn_refs = ref_lines.iter().filter(|r| r.1.is_some()).count();
    let (group_colors, ref_colors) = colors(plot.palette, groups, drawn_refs);
    let color_of = |s: &Drawn<'_>| {
        s.group
            .and_then(|g| group_colors.get(g).copied())
            .unwrap_or(BLACK)
    };
    let mut next_ref_color = ref_colors.iter().copied();
    let ref_color: Vec<Option<RGBColor>> = ref_lines
        .iter()
        .map(|r| r.1.and_then(|_| next_ref_color.next()))
        .collect();

    // Legend: every series and reference line that shows something; series sharing a group
    // stand together, groups in their order, then the reference lines.
    let mut shown: Vec<&Drawn<'_>> = series.iter().filter(|s| s.group.is_some()).collect();
    shown.sort_by_key(|s| s.group);
    let entries: Vec<Entry<'_>> = shown
        .iter()
        .map(|s| Entry {
            label: s.label,
            color: color_of(s),
            swatch: s.swatch,
        })
        .chain(
            ref_lines
                .iter()
                .zip(&ref_color)
                .filter_map(|(r, c)| c.map(|color| (r.0, color)))
                .map(|(label, color)| Entry {
                    label,
                    color,
                    swatch: Swatch::Dashed,
                }),
        )
        .collect();
    // What has nothing to draw is named in the note instead.
    let omitted: Vec<&str> = series
        .iter()
        .filter(|s| s.group.is_none())
        .map(|s| s.label)
        .chain(ref_lines.iter().filter(|r| r.1.is_none()).map(|r| r.0))
        .collect();
    let legend_w = if entries.is_empty() {
        0
    } else {
        let longest = entries
            .iter()
            .map(|e| text_width(e.label, LEGEND_FONT))
            .fold(0.0, f64::max);
        (longest + 44.0).max(90.0).min(0.36 * f64::from(w)) as u32
    };

    // The note: a line for the points not drawn, one naming what has nothing to draw.
    let skipped = given - kept;
    let mut notes = Vec::new();
    if skipped > 0 {
        let why = if plot.log_x || plot.log_y {
            "non-finite, or ≤ 0 on a log axis"
        } else {
            "non-finite"
        };
        let s = if skipped == 1 { "" } else { "s" };
        notes.push(format!("{skipped} point{s} not drawn ({why})"));
    }
    if !omitted.is_empty() {
        notes.push(format!(
            "no point to draw, left out of the legend: {}",
            omitted.join(", ")
        ));
    }
    let note_h = NOTE_ROW * notes.len() as u32;
    let (main, note_area) = root.split_vertically(h - note_h);
    let (chart_area, legend_area) = main.split_horizontally(w - legend_w);

    // Axes: tick counts from the space they get.
    let xs = series.iter().flat_map(|s| &s.points).map(|p| p.0);
    let ys = series.iter().flat_map(|s| &s.points).map(|p| p.1);
    // About one x label per 60 px (50 px for the short decade labels of a log axis) and one y
    // label per 45 px of the frame.
    let y = Axis::covering(ys.chain(hlines.iter().flatten().copied()), plot.log_y, {
        ((h - note_h) as usize / 45).clamp(2, 10)
    });
    let y_label_w = y
        .ticks
        .iter()
        .map(|&t| text_width(&y.label(t), TICK_FONT))
        .fold(0.0, f64::max);
    let frame_w = f64::from(w - legend_w) - y_label_w - 54.0;
    let x = Axis::covering(xs.chain(vlines.iter().flatten().copied()), plot.log_x, {
        let spacing = if plot.log_x { 50.0 } else { 60.0 };
        (frame_w / spacing).clamp(2.0, 12.0) as usize
    });
    let title_chars = (f64::from(w - legend_w) / (TITLE_FONT / 1.24 * CHAR_WIDTH)) as usize;

    let mut chart = ChartBuilder::on(&chart_area)
        .caption(
            truncate(&plot.title, title_chars),
            ("sans-serif", TITLE_FONT)
                .into_font()
                .style(FontStyle::Bold),
        )
        .margin(10)
        // Room for half of the last x tick label.
        .margin_right(if legend_w == 0 { 26 } else { 10 })
        .x_label_area_size(44)
        .y_label_area_size((y_label_w + 34.0) as u32)
        .build_cartesian_2d(x.clone(), y.clone())
        .map_err(err)?;
    let x_fmt = |t: &f64| x.label(*t);
    let y_fmt = |t: &f64| y.label(*t);
    chart
        .configure_mesh()
        .x_desc(plot.x_label.as_str())
        .y_desc(plot.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", TICK_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
        .bold_line_style(GRID)
        .light_line_style(LIGHT_GRID)
        .draw()
        .map_err(err)?;

    for s in &series {
        let color = color_of(s);
        match (s.swatch, s.points.len()) {
            (_, 0) => {}
            (Swatch::Marker, _) | (_, 1) => {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(err)?;
            }
            (Swatch::Line, _) => {
                chart
                    .draw_series(LineSeries::new(
                        decimate(&s.points, MAX_LINE_POINTS),
                        color.stroke_width(2),
                    ))
                    .map_err(err)?;
            }
            (Swatch::Dashed, _) => {
                chart
                    .draw_series(LineSeries::new(
                        decimate(&s.points, MAX_LINE_POINTS),
                        color.mix(DASH_ALPHA).stroke_width(2),
                    ))
                    .map_err(err)?;
            }
        }
    }
    let vertical = vlines.iter().map(|v| v.map(|v| [(v, y.lo), (v, y.hi)]));
    let horizontal = hlines.iter().map(|v| v.map(|v| [(x.lo, v), (x.hi, v)]));
    for (ends, color) in vertical.chain(horizontal).zip(&ref_color) {
        if let (Some(ends), Some(color)) = (ends, *color) {
            chart
                .draw_series(LineSeries::new(ends, color.mix(DASH_ALPHA).stroke_width(2)))
                .map_err(err)?;
        }
    }
    if !has_data {
        chart
            .plotting_area()
            .draw(&Text::new(
                "no data",
                ((x.lo + x.hi) / 2.0, (y.lo + y.hi) / 2.0),
                ("sans-serif", TITLE_FONT)
                    .into_font()
                    .color(&NOTE)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(err)?;
    }

    draw_legend(&legend_area, &entries)?;
    let max_chars = ((f64::from(w) - 20.0) / (NOTE_FONT / 1.24 * CHAR_WIDTH)) as usize;
    for (i, note) in notes.iter().enumerate() {
        note_area
            .draw(&Text::new(
                truncate(note, max_chars),
                (10, 2 + NOTE_ROW as i32 * i as i32),
                ("sans-serif", NOTE_FONT).into_font().color(&NOTE),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// The legend, one row per entry from the top of `area`; rows that do not fit become "+ n more".
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[Entry<'_>],
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let (w, h) = area.dim_in_pixel();
    let top = 52;
    let rows = ((h as i32 - top - 10) / LEGEND_ROW).max(1) as usize;
    let shown = if entries.len() > rows {
        rows - 1
    } else {
        entries.len()
    };
    let max_chars = ((f64::from(w) - 42.0) / (LEGEND_FONT / 1.24 * CHAR_WIDTH)).max(3.0) as usize;
    let style = ("sans-serif", LEGEND_FONT)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, e) in entries.iter().take(shown).enumerate() {
        let y = top + i as i32 * LEGEND_ROW;
        let stroke = e.color.stroke_width(2);
        match e.swatch {
            Swatch::Line => area.draw(&PathElement::new(vec![(6, y), (30, y)], stroke)),
            Swatch::Marker => area.draw(&Circle::new((18, y), 4, e.color.filled())),
            Swatch::Dashed => area
                .draw(&PathElement::new(vec![(6, y), (14, y)], stroke))
                .and_then(|()| area.draw(&PathElement::new(vec![(20, y), (28, y)], stroke))),
        }
        .map_err(err)?;
        area.draw(&Text::new(
            truncate(e.label, max_chars),
            (36, y),
            style.clone(),
        ))
        .map_err(err)?;
    }
    if shown < entries.len() {
        let y = top + shown as i32 * LEGEND_ROW;
        area.draw(&Text::new(
            format!("+ {} more", entries.len() - shown),
            (36, y),
            style.color(&NOTE),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// At most about `max` points: the series cut into `max/2` runs of consecutive points, each
/// keeping its lowest and highest point in their original order (so spikes and divergences stay
/// visible).
fn decimate(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let run = points.len().div_ceil((max / 2).max(1));
    let mut out = Vec::with_capacity(max);
    for chunk in points.chunks(run) {
        let by_y = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let position = |p: &(f64, f64)| chunk.iter().position(|q| std::ptr::eq(q, p));
        let lowest = chunk.iter().min_by(by_y).and_then(position);
        let highest = chunk.iter().max_by(by_y).and_then(position);
        if let (Some(a), Some(b)) = (lowest, highest) {
            out.push(chunk[a.min(b)]);
            if a != b {
                out.push(chunk[a.max(b)]);
            }
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::report::Series;

    /// The `name="…"` attribute of the element starting at `tag`.
    pub(crate) fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(&tag[start..start + tag[start..].find('"')?])
    }

    /// Every `<name …>` element's opening tag.
    pub(crate) fn elements<'a>(svg: &'a str, name: &str) -> Vec<&'a str> {
        svg.match_indices(&format!("<{name} "))
            .map(|(i, _)| &svg[i..i + svg[i..].find('>').unwrap_or(svg.len() - i)])
            .collect()
    }

    pub(crate) fn num(tag: &str, name: &str) -> f64 {
        attr(tag, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// The coordinate lists of all polylines.
    pub(crate) fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        elements(svg, "polyline")
            .into_iter()
            .map(|tag| {
                attr(tag, "points")
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|pair| {
                        let (x, y) = pair.split_once(',').expect("x,y");
                        (x.parse().expect("x"), y.parse().expect("y"))
                    })
                    .collect()
            })
            .collect()
    }

    /// Every element is closed, in order: `<a><b/></a>` yes, `<a><b></a>` no.
    pub(crate) fn assert_balanced(svg: &str) {
        let mut open = Vec::new();
        for (i, _) in svg.match_indices('<') {
            let tag = &svg[i + 1..i + svg[i..].find('>').expect("unclosed tag")];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name.trim()), "closing tag out of order");
            } else if !tag.ends_with('/') && !tag.starts_with('!') && !tag.starts_with('?') {
                open.push(tag.split_whitespace().next().unwrap_or(""));
            }
        }
        assert!(open.is_empty(), "unclosed elements {open:?}");
    }

    /// The text of every `<text>` element, trimmed.
    pub(crate) fn texts(svg: &str) -> Vec<String> {
        svg.match_indices("<text")
            .filter_map(|(i, _)| {
                let body = &svg[i + svg[i..].find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_owned())
            })
            .collect()
    }

    /// The stroke colour of every solid polyline with `n` points, in order.
    pub(crate) fn strokes_of_polylines_with(svg: &str, n: usize) -> Vec<String> {
        elements(svg, "polyline")
            .into_iter()
            .filter(|tag| attr(tag, "stroke-dasharray").is_none())
            .filter(|tag| attr(tag, "points").unwrap_or("").split_whitespace().count() == n)
            .filter_map(|tag| attr(tag, "stroke").map(str::to_owned))
            .collect()
    }

    /// The stroke colour of every dashed polyline, in order.
    pub(crate) fn dashed_strokes(svg: &str) -> Vec<String> {
        elements(svg, "polyline")
            .into_iter()
            .filter(|tag| attr(tag, "stroke-dasharray").is_some())
            .filter_map(|tag| attr(tag, "stroke").map(str::to_owned))
            .collect()
    }

    /// How many filled circles have colour `fill`.
    pub(crate) fn circles_filled(svg: &str, fill: &str) -> usize {
        elements(svg, "circle")
            .into_iter()
            .filter(|tag| attr(tag, "fill") == Some(fill))
            .count()
    }

    fn series(label: &str, points: &[(f64, f64)]) -> Series {
        Series::new(label, points.to_vec())
    }

    #[test]
    fn svg_has_a_polyline_per_line_series_and_all_its_labels() {
        let plot = Plot {
            title: "Steps to target".into(),
            x_label: "batch size B".into(),
            y_label: "steps S".into(),
            lines: vec![
                series(
                    "seven <points>",
                    &[
                        (1.0, 1.0),
                        (2.0, 4.0),
                        (3.0, 9.0),
                        (4.0, 16.0),
                        (5.0, 25.0),
                        (6.0, 36.0),
                        (7.0, 49.0),
                    ],
                ),
                series(
                    "five",
                    &[(1.0, 3.0), (2.0, 3.0), (3.0, 5.0), (4.0, 2.0), (5.0, 8.0)],
                ),
            ],
            scatter: vec![series("measured", &[(1.5, 2.0), (2.5, 7.0), (3.5, 12.0)])],
            vlines: vec![(3.2, "B_crit".into())],
            hlines: vec![(20.0, "target".into())],
            ..Plot::default()
        };
        let out = svg(&plot, 640, 400);
        assert!(out.starts_with("<svg"), "{}", &out[..40]);
        assert!(out.trim_end().ends_with("</svg>"));
        assert_balanced(&out);
        let mut sizes: Vec<usize> = polylines(&out)
            .iter()
            .map(Vec::len)
            .filter(|&n| n > 2)
            .collect();
        sizes.sort_unstable();
        assert_eq!(
            sizes,
            [5, 7],
            "one polyline per line series, every point drawn"
        );
        // Three scatter markers, one legend marker.
        assert_eq!(elements(&out, "circle").len(), 3 + 1);
        for text in [
            "Steps to target",
            "batch size B",
            "steps S",
            "seven &lt;points&gt;",
            "five",
            "measured",
            "B_crit",
            "target",
        ] {
            assert!(out.contains(text), "missing {text}");
        }
        assert!(!out.contains("no data") && !out.contains("not drawn"));
    }

    #[test]
    fn log_axis_puts_64_halfway_between_1_and_4096() {
        let points: Vec<(f64, f64)> = (0..=12).map(|k| (2f64.powi(k), 1.0 + k as f64)).collect();
        let plot = Plot {
            log_x: true,
            log_y: true,
            lines: vec![series("powers of two", &points)],
            ..Plot::default()
        };
        let out = svg(&plot, 800, 500);
        let line = polylines(&out)
            .into_iter()
            .find(|l| l.len() == 13)
            .expect("the series");
        let (x1, x64, x4096) = (line[0].0, line[6].0, line[12].0);
        assert!(
            x4096 - x1 > 400.0,
            "the series spans the plot: {x1}..{x4096}"
        );
        assert!(
            (x64 - (x1 + x4096) / 2.0).abs() <= 1.0,
            "{x1} {x64} {x4096}"
        );
        // On the log y axis, 1 + k is not evenly spaced: y(7) sits above the midpoint.
        assert!(line[6].1 < (line[0].1 + line[12].1) / 2.0 - 10.0);
    }

    #[test]
    fn log_axis_spanning_six_decades_draws_every_point() {
        let points: Vec<(f64, f64)> = (0..=60)
            .map(|k| (10f64.powf(k as f64 / 10.0), 1e6 / (1.0 + k as f64)))
            .collect();
        let plot = Plot {
            log_x: true,
            log_y: true,
            lines: vec![series("wide", &points)],
            ..Plot::default()
        };
        let out = svg(&plot, 640, 400);
        assert!(polylines(&out).iter().any(|l| l.len() == 61));
        for label in [">1<", ">100<", ">1e4<", ">1e6<"] {
            assert!(out.replace('\n', "").contains(label), "tick {label}");
        }
    }

    #[test]
    fn points_a_log_axis_cannot_show_are_skipped_and_counted() {
        let bad = [
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (0.0, 1.0),
            (-2.0, 3.0),
            (2.0, -1.0),
        ];
        let good = [
            (1.0, 1.0),
            (2.0, 2.0),
            (4.0, 3.0),
            (8.0, 5.0),
            (16.0, 8.0),
            (32.0, 13.0),
        ];
        let mixed: Vec<_> = good.iter().chain(&bad).copied().collect();
        let plot = Plot {
            log_x: true,
            log_y: true,
            lines: vec![series("line", &mixed)],
            scatter: vec![series("dots", &mixed)],
            vlines: vec![(0.0, "at zero".into())],
            ..Plot::default()
        };
        let out = svg(&plot, 640, 400);
        assert!(polylines(&out).iter().any(|l| l.len() == good.len()));
        assert!(!polylines(&out).iter().any(|l| l.len() > good.len()));
        assert_eq!(
            elements(&out, "circle").len(),
            good.len() + 1,
            "markers, and the legend's"
        );
        assert!(
            out.contains("11 points not drawn"),
            "5 + 5 points and the vline"
        );
        // On linear axes only the non-finite ones go.
        let linear = Plot {
            log_x: false,
            log_y: false,
            ..plot
        };
        let out = svg(&linear, 640, 400);
        assert!(polylines(&out).iter().any(|l| l.len() == good.len() + 3));
    }

    #[test]
    fn empty_plots_say_no_data() {
        let empty_series = Plot {
            title: "nothing".into(),
            log_x: true,
            lines: vec![series("empty", &[])],
            scatter: vec![series("only bad", &[(-1.0, 1.0)])],
            ..Plot::default()
        };
        for plot in [Plot::default(), empty_series] {
            let out = svg(&plot, 640, 400);
            assert!(out.starts_with("<svg") && out.contains("no data"));
            assert_balanced(&out);
        }
    }

    #[test]
    fn tiny_and_degenerate_plots_do_not_panic() {
        let plot = Plot {
            title: "a very long title that cannot possibly fit into such a small picture at all"
                .into(),
            lines: vec![
                series("one point", &[(5.0, 5.0)]),
                series("flat", &[(1.0, 2.0), (1.0, 2.0)]),
            ],
            vlines: (0..30)
                .map(|i| (f64::from(i), format!("line {i}")))
                .collect(),
            ..Plot::default()
        };
        for (w, h) in [(0, 0), (1, 1), (240, 180), (2000, 120)] {
            let out = svg(&plot, w, h);
            assert!(
                out.contains("more"),
                "legend rows that do not fit are counted"
            );
            assert_balanced(&out);
        }
    }

    #[test]
    fn a_series_with_nothing_to_draw_is_left_out_of_the_legend() {
        let nan = f64::NAN;
        let plot = Plot {
            log_y: true,
            lines: vec![
                // The two-batch estimate at m = 1: undefined at every step.
                series("B=1", &[(0.0, nan), (1.0, nan), (2.0, nan)]),
                series("B=2", &[(0.0, 5.0), (1.0, nan), (2.0, 7.0), (3.0, 8.0)]),
                series("B=4", &[(0.0, 3.0), (1.0, 4.0), (2.0, 5.0), (3.0, 6.0)]),
                series("B=8", &[]),
                // Nothing > 0 on the log axis.
                series("B=16", &[(0.0, -1.0), (1.0, 0.0)]),
            ],
            hlines: vec![(-3.0, "below zero".into()), (6.5, "target".into())],
            ..Plot::default()
        };
        let out = svg(&plot, 640, 400);
        assert_balanced(&out);
        let texts = texts(&out);
        for absent in ["B=1", "B=8", "B=16", "below zero"] {
            assert!(
                !texts.iter().any(|t| t == absent),
                "{absent} has no legend entry"
            );
        }
        for present in ["B=2", "B=4", "target"] {
            assert!(
                texts.iter().any(|t| t == present),
                "{present} in the legend"
            );
        }
        assert!(texts.iter().any(|t| t.starts_with("7 points not drawn")));
        assert!(
            texts
                .iter()
                .any(|t| t.ends_with(": B=1, B=8, B=16, below zero")),
            "the note names what has nothing to draw: {texts:?}"
        );
        // B=2 draws its three finite points, joined; B=4 all four.
        let lines = polylines(&out);
        assert!(lines.iter().any(|l| l.len() == 3) && lines.iter().any(|l| l.len() == 4));
        // The series left out take no colour: the two drawn lines are the palette's first two.
        let strokes: Vec<String> = [3, 4]
            .iter()
            .flat_map(|&n| strokes_of_polylines_with(&out, n))
            .collect();
        assert_eq!(strokes, ["#1F77B4", "#FF7F0E"]);
    }

    #[test]
    fn every_series_gets_its_own_colour_however_many() {
        for (palette, n) in [
            (Palette::Categorical, 11),
            (Palette::Sequential, 11),
            (Palette::Categorical, 24),
            (Palette::Sequential, 32),
        ] {
            let lines: Vec<Series> = (0..n)
                .map(|i| {
                    let pts: Vec<(f64, f64)> = (0..5)
                        .map(|t| (f64::from(t), f64::from(t) + i as f64))
                        .collect();
                    series(&format!("series {i}"), &pts)
                })
                .collect();
            let plot = Plot {
                lines,
                vlines: vec![(2.5, "mark".into())],
                palette,
                ..Plot::default()
            };
            let out = svg(&plot, 900, 900);
            let strokes = strokes_of_polylines_with(&out, 5);
            assert_eq!(strokes.len(), n, "{palette:?}");
            let mut distinct = strokes.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), n, "{palette:?} {n}: {strokes:?}");
            assert_ne!(strokes[0], strokes[n - 1]);
            // The reference line, dashed, takes a colour no series has.
            let dashed = dashed_strokes(&out);
            assert_eq!(dashed.len(), 1, "{palette:?} {n}");
            assert!(!strokes.contains(&dashed[0]), "{palette:?} {n}: {dashed:?}");
        }
    }

    #[test]
    fn grouped_series_share_a_colour_and_stand_together_in_the_legend() {
        let line = |k: f64| vec![(1.0, k), (2.0, k + 1.0), (3.0, k + 2.0), (4.0, k + 3.0)];
        let plot = Plot {
            lines: vec![
                Series::new("a fit", line(1.0)).in_group("a"),
                Series::new("b fit", line(5.0)).in_group("b"),
                Series::new("b exact", line(6.0)).in_group("b").dashed(),
            ],
            scatter: vec![
                Series::new("a points", vec![(1.5, 2.0), (2.5, 3.0), (3.5, 4.0)]).in_group("a"),
                Series::new("loner", vec![(2.0, 9.0)]),
            ],
            ..Plot::default()
        };
        let out = svg(&plot, 640, 400);
        let fits = strokes_of_polylines_with(&out, 4);
        assert_eq!(fits.len(), 2, "two solid lines");
        let (a, b) = (&fits[0], &fits[1]);
        assert_ne!(a, b);
        assert_eq!(
            circles_filled(&out, a),
            3 + 1,
            "a's points and their legend marker in a's colour"
        );
        // The dashed line, in b's colour.
        assert_eq!(dashed_strokes(&out), std::slice::from_ref(b));
        // Three groups, three colours.
        let loner = elements(&out, "circle")
            .into_iter()
            .filter_map(|t| attr(t, "fill"))
            .find(|f| f != a)
            .expect("the loner's marker");
        assert!(loner != b);
        let legend: Vec<String> = texts(&out)
            .into_iter()
            .filter(|t| t.contains("fit") || t.contains("points") || t.contains("exact"))
            .collect();
        assert_eq!(legend, ["a fit", "a points", "b fit", "b exact"]);
    }

    #[test]
    fn long_lines_keep_their_extremes() {
        let mut points: Vec<(f64, f64)> = (0..100_000)
            .map(|i| (f64::from(i), (f64::from(i) * 0.01).sin()))
            .collect();
        points[54_321].1 = 50.0;
        let kept = decimate(&points, 4000);
        assert!(kept.len() <= 4000 && kept.len() > 3000, "{}", kept.len());
        assert!(kept.contains(&(54_321.0, 50.0)));
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0), "order is kept");
        assert_eq!(decimate(&points[..10], 4000), points[..10]);
    }
}
