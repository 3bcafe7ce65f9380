//! Reports: self-contained HTML pages with SVG plots drawn in Rust, and terminal summaries.
//!
//! The report layer takes plain data ([`Plot`], [`Heatmap`], [`Table`], [`Section`]) and never
//! depends on how runs were executed. Plots are drawn by `plotters` into SVG strings; pages embed
//! them inline with inline CSS, so `report.html` is one file with no scripts and no external assets.
//!
//! ```text
//!  trial records, step rows ──► builders (steps_vs_batch, warmup_map, …) ──► Plot / Heatmap
//!                                                                              │ svg / heatmap_svg
//!  Table ──► terminal_table (stdout)          Section { text, figures, table } ◄┘
//!                                                      │ html_page
//!                                                      ▼
//!                                           report.html (inline SVG + CSS)
//! ```
//!
//! Log axes draw the base-10 logarithm of the data: values that are non-finite, or `≤ 0` on a
//! log axis, are skipped and counted in a note under the legend; a plot with nothing to draw
//! says "no data" instead of failing.

mod axis;
mod builders;
mod color;
mod heatmap;
mod html;
mod plot;

use serde::{Deserialize, Serialize};

pub(crate) use axis::fmt_num;
pub use builders::{
    LossAxis, NestedCurve, PerBatch, b_simple_over_training, best_rate_vs_batch, loss_curves,
    loss_vs_rate, nested_noise, samples_vs_batch, sharpness_vs_two_over_lr, steps_vs_batch,
    trials_table, warmup_map,
};
pub use heatmap::heatmap_svg;
pub use html::{html_page, terminal_table};
pub use plot::svg;

/// One named curve or point set: `(x, y)` pairs in the caller's order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// The points, drawn in this order (a line joins consecutive points; points that cannot be
    /// drawn are left out and the line joins their neighbours).
    pub points: Vec<(f64, f64)>,
    /// Series with the same group share one colour (a batch's measured points and the curve
    /// fitted to them); `None`: a colour of its own.
    #[serde(default)]
    pub group: Option<String>,
    /// Drawn dashed (a line series), e.g. an exact curve beside its measured one.
    #[serde(default)]
    pub dashed: bool,
}

impl Series {
    /// A series from a label and its points, in a colour of its own, solid.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
            group: None,
            dashed: false,
        }
    }

    /// The series in the colour of `group` (see [`Series::group`]).
    #[must_use]
    pub fn in_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The series drawn as a dashed line.
    #[must_use]
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// How a [`Plot`] colours its series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Palette {
    /// Unordered series: distinct hues (Tableau 10; more hues around the wheel beyond ten).
    #[default]
    Categorical,
    /// Ordered series (batch sizes, in the order given): viridis sampled evenly over the number
    /// of colours, dark to light, so neighbours look alike and the ends look most different.
    /// Reference lines take accent colours outside viridis.
    Sequential,
}

/// A 2-D plot: lines, scatter points and labelled reference lines, on linear or log axes.
///
/// Every series group (a series, or the series sharing a [`Series::group`]) gets a colour of
/// its own from the [`palette`](Plot::palette), and every reference line one more; each series
/// and reference line that has something to draw gets a legend entry. A series with no point
/// to draw (none finite, or none `> 0` on a log axis) is left out of the legend and named in
/// the note under the plot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plot {
    /// Caption above the plot.
    pub title: String,
    /// Horizontal axis description.
    pub x_label: String,
    /// Vertical axis description.
    pub y_label: String,
    /// Logarithmic horizontal axis (points with `x ≤ 0` are skipped).
    pub log_x: bool,
    /// Logarithmic vertical axis (points with `y ≤ 0` are skipped).
    pub log_y: bool,
    /// Series drawn as polylines.
    pub lines: Vec<Series>,
    /// Series drawn as markers.
    pub scatter: Vec<Series>,
    /// Vertical reference lines `x = value` (e.g. `B_crit`), dashed, with their legend text.
    pub vlines: Vec<(f64, String)>,
    /// Horizontal reference lines `y = value` (e.g. a target loss), dashed, with their legend text.
    pub hlines: Vec<(f64, String)>,
    /// How the series are coloured.
    #[serde(default)]
    pub palette: Palette,
}

/// A grid of coloured cells: one value per `(row, column)`, e.g. the warmup stability map.
///
/// `cells[row][col]`: `None` is an empty cell (not run, nothing drawn); `Some(v)` with `v`
/// finite is coloured by value; `Some(v)` with `v` non-finite is drawn in the "diverged"
/// colour. Row 0 is drawn at the bottom, so increasing `y_ticks` read upwards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// Caption above the map.
    pub title: String,
    /// Horizontal axis description.
    pub x_label: String,
    /// Vertical axis description.
    pub y_label: String,
    /// One label per column.
    pub x_ticks: Vec<String>,
    /// One label per row, bottom row first.
    pub y_ticks: Vec<String>,
    /// Values, `cells[row][col]`; rows may be shorter than `x_ticks` (missing cells are empty).
    pub cells: Vec<Vec<Option<f64>>>,
    /// What the colour encodes (the colour bar's caption), e.g. "final loss".
    pub value_label: String,
    /// Colour by `log10(value)`; ignored (linear) when some finite value is `≤ 0`.
    pub log_color: bool,
}

/// A table of text cells, for the terminal and for HTML.
///
/// A cell that ends in a space and a known footnote mark (`" †"`: a negative `B_simple`, see
/// `trials_table`) refers to that footnote: the table shows its text once below the rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells; a short row is padded with empty cells.
    pub rows: Vec<Vec<String>>,
}

/// One part of a report page: a heading, a few paragraphs, figures and an optional table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// The heading.
    pub title: String,
    /// Plain text (escaped when rendered); blank lines separate paragraphs.
    pub text: String,
    /// SVG documents, as returned by [`svg`] and [`heatmap_svg`], embedded as they are.
    pub figures: Vec<String>,
    /// A table under the figures.
    pub table: Option<Table>,
}
