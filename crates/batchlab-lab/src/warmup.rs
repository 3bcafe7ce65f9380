//! The warmup stability experiment as pure code (docs/science.md#stability and
//! "Schedules and warmup"): which runs to train, what each run measured, and what the grid says.
//!
//! ```text
//!   λ_max(θ₀) by Lanczos ──► unit η₁ = 2/λ_max(θ₀)  (or the base rate, Unit::Lr)
//!   Grid: multiple k × warmup T_w × shape × momentum μ × seed ──► Cells, peak rate k·η₁
//!     (T_w = 0, the baseline, is one cell per (k, μ, seed) whatever the shapes)
//!   each cell: one run over the whole budget ──► CellRecord (status, final loss, steps to
//!     target, largest η·λ_max) from its summary and its per-step rows
//!   records ──► aggregate over seeds ──► StabilityMap per (shape, μ): largest stable k per T_w
//!                                    ──► Comparison of each T_w > 0 with T_w = 0 at the same k
//!                                        (rescues, stabilises, faster, slower, breaks)
//!                                    ──► representative pairs of runs for the plots
//! ```
//!
//! On a quadratic the edge does not move: gradient descent is stable iff `η < 2/λ_max`
//! (heavy ball: `η < 2(1+μ)/λ_max`) whatever the warmup, which only delays the divergence. Where
//! the sharpness falls early in training (MLPs), a warmup lets the run reach the flatter region
//! before the rate peaks, and rates that diverge without warmup train with it. On the plateau
//! `ln(1 + x²)` the gradient is tiny far away and warmup only slows the descent.
//!
//! Nothing here runs a model or touches a file: the binary executes the cells (in process or
//! elsewhere) and hands back each run's summary and rows.

use batchlab_core::stats;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use batchlab_core::schedule::WarmupShape;
use batchlab_core::train::{RunSummary, Status, StepMetrics};
use serde::{Deserialize, Serialize};

use crate::report::{self, Heatmap, Plot, Section, Series, Table, fmt_num};

/// A grid setting that cannot be run: names the setting, the value, and what is accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GridError {
    /// A value outside what the setting accepts.
    #[error("{field} {value}: expected {accepted}")]
    Invalid {
        /// The setting (the flag's name without dashes), e.g. `multiples`.
        field: &'static str,
        /// The offending value, as written.
        value: String,
        /// What would be accepted.
        accepted: String,
    },
    /// Rates in multiples of `2/λ_max(θ₀)` need a positive curvature at `θ₀`.
    #[error(
        "λ_max(θ₀) = {lambda_max:.4e}: the loss does not curve up at the initial point, so \
         2/λ_max is no rate: give the peak rates as multiples of the base rate instead"
    )]
    NoEdge {
        /// The measured top eigenvalue of the Hessian at `θ₀`.
        lambda_max: f64,
    },
}

fn invalid(field: &'static str, value: impl fmt::Display, accepted: &str) -> GridError {
    GridError::Invalid {
        field,
        value: value.to_string(),
        accepted: accepted.to_owned(),
    }
}

/// The warmup shape of a cell; `None` is the baseline without warmup (`T_w = 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// No warmup: the peak rate from the first step.
    None,
    /// `η_peak·min(1, (t+1)/T_w)`.
    Linear,
    /// `η_peak(3u² − 2u³)`, `u = t/T_w`: zero slope at both ends.
    Cubic,
}

impl Shape {
    /// The name as written on the command line and in the records.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Linear => "linear",
            Self::Cubic => "cubic",
        }
    }

    /// The schedule's warmup shape (any for `None`: its warmup has no steps).
    pub fn schedule(self) -> WarmupShape {
        match self {
            Self::None | Self::Linear => WarmupShape::Linear,
            Self::Cubic => WarmupShape::Cubic,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Shape {
    type Err = GridError;
    fn from_str(s: &str) -> Result<Self, GridError> {
        match s.trim() {
            "none" => Ok(Self::None),
            "linear" => Ok(Self::Linear),
            "cubic" => Ok(Self::Cubic),
            other => Err(invalid("shapes", other, "none, linear or cubic")),
        }
    }
}

/// What the multiples of the grid multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// `2/λ_max(θ₀)`: the largest stable rate of plain gradient descent at the initial point.
    Edge,
    /// The base configuration's rate.
    Lr,
}

impl FromStr for Unit {
    type Err = GridError;
    fn from_str(s: &str) -> Result<Self, GridError> {
        match s.trim() {
            "edge" => Ok(Self::Edge),
            "lr" => Ok(Self::Lr),
            other => Err(invalid("unit", other, "edge (2/λ_max at θ₀) or lr (--lr)")),
        }
    }
}

/// The rate a multiple of 1 stands for, and the curvature at `θ₀` it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// What the multiples multiply.
    pub unit: Unit,
    /// `λ_max(θ₀)`, the top eigenvalue of the Hessian at the initial point.
    pub lambda_max: f64,
    /// The rate of multiple 1.
    pub unit_lr: f64,
}

impl Reference {
    /// The reference for `unit`, from the measured `lambda_max` and the base rate `base_lr`.
    /// [`Unit::Edge`] needs `lambda_max > 0` (finite).
    pub fn new(unit: Unit, lambda_max: f64, base_lr: f64) -> Result<Self, GridError> {
        let unit_lr = match unit {
            Unit::Edge if lambda_max.is_finite() && lambda_max > 0.0 => 2.0 / lambda_max,
            Unit::Edge => return Err(GridError::NoEdge { lambda_max }),
            Unit::Lr if base_lr.is_finite() && base_lr > 0.0 => base_lr,
            Unit::Lr => return Err(invalid("lr", base_lr, "a finite rate > 0")),
        };
        Ok(Self {
            unit,
            lambda_max,
            unit_lr,
        })
    }

    /// The edge `2/λ_max(θ₀)` of plain gradient descent in multiples, where `λ_max(θ₀) > 0`;
    /// heavy ball's edge `2(1+μ)/λ_max(θ₀)` is `(1+μ)` times it.
    pub fn sgd_edge_multiple(&self) -> Option<f64> {
        (self.lambda_max.is_finite() && self.lambda_max > 0.0)
            .then(|| 2.0 / self.lambda_max / self.unit_lr)
    }

    /// How the unit reads in a label: `2/λ_max(θ₀)` or `the base rate`.
    pub fn describe(&self) -> &'static str {
        match self.unit {
            Unit::Edge => "2/λ_max(θ₀)",
            Unit::Lr => "the base rate",
        }
    }
}

/// The settings of a warmup grid, validated: sorted, without duplicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    /// Peak rates as multiples of the unit, ascending.
    pub multiples: Vec<f64>,
    /// Warmup lengths `T_w > 0`, ascending (the baseline `T_w = 0` is always run).
    pub warmups: Vec<u64>,
    /// Warmup shapes of the `T_w > 0` cells.
    pub shapes: Vec<Shape>,
    /// Momenta `μ`, ascending: 0 is plain SGD, `μ > 0` heavy ball.
    pub momenta: Vec<f64>,
    /// Sampler seeds (replicates).
    pub seeds: Vec<u64>,
}

fn sorted_unique(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

impl Grid {
    /// Validates the settings. Warmup 0 (and the shape `none`) name the baseline, which every
    /// grid runs; warmups `> 0` need at least one of the shapes `linear` and `cubic`.
    pub fn new(
        multiples: Vec<f64>,
        warmups: Vec<u64>,
        shapes: Vec<Shape>,
        momenta: Vec<f64>,
        seeds: Vec<u64>,
    ) -> Result<Self, GridError> {
        if multiples.is_empty() {
            return Err(invalid("multiples", "(none)", "at least one multiple"));
        }
        if let Some(m) = multiples.iter().find(|m| !(m.is_finite() && **m > 0.0)) {
            return Err(invalid("multiples", m, "finite multiples > 0"));
        }
        if let Some(mu) = momenta.iter().find(|m| !(0.0..1.0).contains(*m)) {
            return Err(invalid(
                "momentum",
                mu,
                "μ in [0, 1): 0 for plain SGD, μ > 0 for heavy ball",
            ));
        }
        if momenta.is_empty() {
            return Err(invalid("momentum", "(none)", "at least one μ in [0, 1)"));
        }
        if seeds.is_empty() {
            return Err(invalid("seeds", 0, "at least 1 seed"));
        }
        let mut warmups: Vec<u64> = warmups.into_iter().filter(|&w| w > 0).collect();
        warmups.sort_unstable();
        warmups.dedup();
        let mut ramps: Vec<Shape> = shapes.into_iter().filter(|&s| s != Shape::None).collect();
        ramps.sort_unstable();
        ramps.dedup();
        if ramps.is_empty() && !warmups.is_empty() {
            let list: Vec<String> = warmups.iter().map(u64::to_string).collect();
            return Err(invalid(
                "shapes",
                "none",
                &format!(
                    "linear or cubic as well, for the warmups {}",
                    list.join(",")
                ),
            ));
        }
        let mut seeds = seeds;
        seeds.sort_unstable();
        seeds.dedup();
        Ok(Self {
            multiples: sorted_unique(multiples),
            warmups,
            shapes: ramps,
            momenta: sorted_unique(momenta),
            seeds,
        })
    }

    /// Every cell: per momentum, shape and multiple, the baseline and each warmup, per seed.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &momentum in &self.momenta {
            for &multiple in &self.multiples {
                let mut push = |warmup_steps, shape| {
                    for &seed in &self.seeds {
                        cells.push(Cell {
                            multiple,
                            warmup_steps,
                            shape,
                            momentum,
                            seed,
                        });
                    }
                };
                push(0, Shape::None);
                for &shape in &self.shapes {
                    for &w in &self.warmups {
                        push(w, shape);
                    }
                }
            }
        }
        cells
    }
}

/// One point of the grid without its seed: what replicates share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CellKey {
    /// Peak rate in multiples of the unit.
    pub multiple: f64,
    /// Warmup length `T_w` (0 for none).
    pub warmup_steps: u64,
    /// Warmup shape (`none` for `T_w = 0`).
    pub shape: Shape,
    /// Momentum `μ` (0: plain SGD).
    pub momentum: f64,
}

impl CellKey {
    fn cmp_key(&self, o: &Self) -> Ordering {
        self.momentum
            .total_cmp(&o.momentum)
            .then(self.shape.cmp(&o.shape))
            .then(self.multiple.total_cmp(&o.multiple))
            .then(self.warmup_steps.cmp(&o.warmup_steps))
    }

    fn same(&self, o: &Self) -> bool {
        self.cmp_key(o) == Ordering::Equal
    }

    /// A short label, e.g. `×2, linear T_w=100, μ=0.9` or `×2, no warmup, μ=0`.
    pub fn label(&self) -> String {
        let warm = if self.warmup_steps == 0 {
            "no warmup".to_owned()
        } else {
            format!("{} T_w={}", self.shape, self.warmup_steps)
        };
        format!("×{}, {warm}, μ={}", fmt_num(self.multiple), self.momentum)
    }
}

/// One training run of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Peak rate in multiples of the unit.
    pub multiple: f64,
    /// Warmup length `T_w` (0 for none).
    pub warmup_steps: u64,
    /// Warmup shape (`none` for `T_w = 0`).
    pub shape: Shape,
    /// Momentum `μ` (0: plain SGD).
    pub momentum: f64,
    /// Sampler seed.
    pub seed: u64,
}

impl Cell {
    /// The cell without its seed.
    pub fn key(&self) -> CellKey {
        CellKey {
            multiple: self.multiple,
            warmup_steps: self.warmup_steps,
            shape: self.shape,
            momentum: self.momentum,
        }
    }

    /// The run's folder name inside the study, e.g. `mu0.9/x2-linear-w100-s0`.
    pub fn dir_name(&self) -> String {
        format!(
            "mu{}/x{}-{}-w{}-s{}",
            self.momentum, self.multiple, self.shape, self.warmup_steps, self.seed
        )
    }
}

/// What one cell's run measured; one row of `cells.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    /// Peak rate in multiples of the unit.
    pub multiple: f64,
    /// The peak rate `η_peak`.
    pub peak_lr: f64,
    /// Warmup length `T_w` (0 for none).
    pub warmup_steps: u64,
    /// Warmup shape (`none` for `T_w = 0`).
    pub shape: Shape,
    /// Momentum `μ` (0: plain SGD).
    pub momentum: f64,
    /// Sampler seed.
    pub seed: u64,
    /// INFEASIBLE: diverged; COMPLETE: reached the target and ended at or below it;
    /// INCOMPLETE: stable over the whole budget, but not (or no longer) at the target.
    pub status: Status,
    /// Updates applied (the budget unless the run diverged).
    pub steps: u64,
    /// The loss at the end (evaluation where there is one); absent when the run diverged.
    pub final_loss: Option<f64>,
    /// The lowest loss seen (evaluations where there are any), diverged runs included.
    pub min_loss: Option<f64>,
    /// The first step whose loss is at or below the target, for COMPLETE runs (a run that
    /// crossed the target and ended above it, or diverged, has none: see `min_loss`).
    pub steps_to_target: Option<u64>,
    /// The largest `η_t·λ_max(θ_t)` over the steps where the sharpness was measured (stability
    /// at those steps needs it below 2, or `2(1+μ)` with momentum).
    pub max_lr_sharpness: Option<f64>,
    /// The latest sharpness `λ_max` measured.
    pub final_sharpness: Option<f64>,
    /// The dead-ReLU fraction of the last step (MLP).
    pub final_dead_relu: Option<f64>,
}

/// The `(step, loss)` points a run's target is checked on: evaluations where the rows have
/// them, else the training loss.
fn loss_points(rows: &[StepMetrics]) -> Vec<(u64, f64)> {
    let evals: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| r.eval_loss.map(|l| (r.step, l)))
        .collect();
    if evals.is_empty() {
        rows.iter().map(|r| (r.step, r.train_loss)).collect()
    } else {
        evals
    }
}

/// The first step whose loss is at or below `target`, in `(step, loss)` points.
pub fn first_at_or_below(points: &[(u64, f64)], target: f64) -> Option<u64> {
    points.iter().find(|p| p.1 <= target).map(|p| p.0)
}

impl CellRecord {
    /// The record of `cell`'s finished run: its `summary`, its per-step `rows`, the `target`
    /// loss, and its peak rate.
    pub fn new(
        cell: &Cell,
        peak_lr: f64,
        summary: &RunSummary,
        rows: &[StepMetrics],
        target: f64,
    ) -> Self {
        let diverged = summary.status == Status::Infeasible;
        let mut points = loss_points(rows);
        // The evaluation after the last update is in the summary, not in a row.
        if let (false, Some(l)) = (diverged, summary.final_eval_loss)
            && points.last().is_none_or(|p| p.0 < summary.steps)
        {
            points.push((summary.steps, l));
        }
        let final_loss = if diverged {
            None
        } else {
            points.last().map(|p| p.1).filter(|l| l.is_finite())
        };
        // Reaching the target counts when the run ends there: a run that passes the target
        // early in its warmup and then degrades (dead units, a catapult) did not train.
        let held = final_loss.is_some_and(|l| l <= target);
        let steps_to_target = held.then(|| first_at_or_below(&points, target)).flatten();
        let finite_max = |f: &dyn Fn(&StepMetrics) -> Option<f64>| {
            rows.iter()
                .filter_map(f)
                .filter(|x| x.is_finite())
                .reduce(f64::max)
        };
        let status = match (diverged, steps_to_target) {
            (true, _) => Status::Infeasible,
            (false, Some(_)) => Status::Complete,
            (false, None) => Status::Incomplete,
        };
        Self {
            multiple: cell.multiple,
            peak_lr,
            warmup_steps: cell.warmup_steps,
            shape: cell.shape,
            momentum: cell.momentum,
            seed: cell.seed,
            status,
            steps: summary.steps,
            final_loss,
            min_loss: points
                .iter()
                .map(|p| p.1)
                .filter(|l| l.is_finite())
                .reduce(f64::min),
            steps_to_target,
            max_lr_sharpness: finite_max(&|r| r.sharpness.map(|l| l * r.lr)),
            final_sharpness: rows.iter().rev().find_map(|r| r.sharpness),
            final_dead_relu: rows.last().and_then(|r| r.dead_relu),
        }
    }

    /// The cell this record belongs to, without its seed.
    pub fn key(&self) -> CellKey {
        CellKey {
            multiple: self.multiple,
            warmup_steps: self.warmup_steps,
            shape: self.shape,
            momentum: self.momentum,
        }
    }
}

/// Orders records by momentum, shape, multiple, warmup and seed (the layout of `cells.csv`).
pub fn sort_records(records: &mut [CellRecord]) {
    records.sort_by(|a, b| a.key().cmp_key(&b.key()).then(a.seed.cmp(&b.seed)));
}

/// One cell over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    /// The cell.
    pub key: CellKey,
    /// Replicates.
    pub seeds: usize,
    /// Replicates that diverged; the cell is stable when none did.
    pub diverged: usize,
    /// Median steps to target over the seeds, a seed that did not reach it counting as
    /// infinitely many: absent unless more than half reached it.
    pub steps_to_target: Option<f64>,
    /// Mean final loss over the seeds that did not diverge.
    pub final_loss: Option<f64>,
}

impl CellSummary {
    /// No replicate diverged.
    pub fn stable(&self) -> bool {
        self.diverged == 0
    }
}

/// The median of `values`, `None` standing for `+∞` (the upper median for an even count).
fn median_with_infinity(values: &[Option<f64>]) -> Option<f64> {
    let v = stats::sorted(values.iter().map(|x| x.unwrap_or(f64::INFINITY)));
    stats::upper_median(&v).filter(|x| x.is_finite())
}

/// The records grouped by cell (seeds together), in the order of [`sort_records`].
pub fn aggregate(records: &[CellRecord]) -> Vec<CellSummary> {
    let mut sorted = records.to_vec();
    sort_records(&mut sorted);
    sorted
        .chunk_by(|a, b| a.key().same(&b.key()))
        .map(|group| {
            let finals: Vec<f64> = group.iter().filter_map(|r| r.final_loss).collect();
            let steps: Vec<Option<f64>> = group
                .iter()
                .map(|r| r.steps_to_target.map(|s| s as f64))
                .collect();
            CellSummary {
                key: group[0].key(),
                seeds: group.len(),
                diverged: group
                    .iter()
                    .filter(|r| r.status == Status::Infeasible)
                    .count(),
                steps_to_target: median_with_infinity(&steps),
                final_loss: (!finals.is_empty())
                    .then(|| finals.iter().sum::<f64>() / finals.len() as f64),
            }
        })
        .collect()
}

/// One warmup length of a [`StabilityMap`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilityRow {
    /// Warmup length (0: the baseline).
    pub warmup_steps: u64,
    /// The largest multiple none of whose seeds diverged.
    pub largest_stable: Option<f64>,
    /// The smallest multiple some seed of which diverged.
    pub smallest_diverged: Option<f64>,
    /// The largest multiple that reached the target (median over seeds).
    pub largest_reaching: Option<f64>,
    /// The multiple with the fewest steps to target, and those steps.
    pub fastest: Option<(f64, f64)>,
}

/// The stability of one (shape, momentum): per warmup length, where the runs diverge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilityMap {
    /// Warmup shape of the `T_w > 0` rows (`none` when the grid has no warmup at all).
    pub shape: Shape,
    /// Momentum `μ`.
    pub momentum: f64,
    /// The edge at `θ₀` in multiples: `2/λ_max(θ₀)` for SGD, `2(1+μ)/λ_max(θ₀)` for heavy ball.
    pub edge_at_init: Option<f64>,
    /// The baseline first, then each warmup length ascending.
    pub rows: Vec<StabilityRow>,
}

/// The cells of `(shape, momentum)`: the baseline's and the shape's, ascending in `T_w`.
fn cells_of(cells: &[CellSummary], shape: Shape, momentum: f64) -> Vec<&CellSummary> {
    cells
        .iter()
        .filter(|c| c.key.momentum == momentum && (c.key.warmup_steps == 0 || c.key.shape == shape))
        .collect()
}

/// The (shape, momentum) pairs of the grid's warmups; `(none, μ)` when there are none.
fn shape_momenta(cells: &[CellSummary]) -> Vec<(Shape, f64)> {
    let mut pairs: Vec<(Shape, f64)> = Vec::new();
    let momenta = sorted_unique(cells.iter().map(|c| c.key.momentum).collect());
    for mu in momenta {
        let mut shapes: Vec<Shape> = cells
            .iter()
            .filter(|c| c.key.momentum == mu && c.key.warmup_steps > 0)
            .map(|c| c.key.shape)
            .collect();
        shapes.sort_unstable();
        shapes.dedup();
        if shapes.is_empty() {
            shapes.push(Shape::None);
        }
        pairs.extend(shapes.into_iter().map(|s| (s, mu)));
    }
    pairs
}

/// Per (shape, momentum), the largest stable multiple and the fastest run per warmup length;
/// `sgd_edge` is `2/λ_max(θ₀)` in multiples (see [`Reference::sgd_edge_multiple`]).
pub fn stability_maps(cells: &[CellSummary], sgd_edge: Option<f64>) -> Vec<StabilityMap> {
    shape_momenta(cells)
        .into_iter()
        .map(|(shape, momentum)| {
            let mine = cells_of(cells, shape, momentum);
            let mut warmups: Vec<u64> = mine.iter().map(|c| c.key.warmup_steps).collect();
            warmups.sort_unstable();
            warmups.dedup();
            let rows = warmups
                .into_iter()
                .map(|w| {
                    let at: Vec<&&CellSummary> =
                        mine.iter().filter(|c| c.key.warmup_steps == w).collect();
                    let largest = |f: &dyn Fn(&CellSummary) -> bool| {
                        at.iter()
                            .filter(|c| f(c))
                            .map(|c| c.key.multiple)
                            .reduce(f64::max)
                    };
                    StabilityRow {
                        warmup_steps: w,
                        largest_stable: largest(&|c| c.stable()),
                        smallest_diverged: at
                            .iter()
                            .filter(|c| !c.stable())
                            .map(|c| c.key.multiple)
                            .reduce(f64::min),
                        largest_reaching: largest(&|c| c.stable() && c.steps_to_target.is_some()),
                        fastest: at
                            .iter()
                            .filter(|c| c.stable())
                            .filter_map(|c| c.steps_to_target.map(|s| (c.key.multiple, s)))
                            .min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.total_cmp(&a.0))),
                    }
                })
                .collect();
            StabilityMap {
                shape,
                momentum,
                edge_at_init: sgd_edge.map(|e| e * (1.0 + momentum)),
                rows,
            }
        })
        .collect()
}

/// What a warmup did to a run, compared with the same peak rate without warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Only the run with warmup reached the target.
    Rescues,
    /// The run without warmup diverged; the one with warmup stayed stable but did not reach
    /// the target.
    Stabilises,
    /// Both reached the target; warmup in fewer steps.
    Faster,
    /// Both reached the target in the same number of steps.
    Same,
    /// Both reached the target; warmup took more steps.
    Slower,
    /// Only the run without warmup reached the target.
    Breaks,
    /// Neither reached the target (and warmup did not turn a divergence into a stable run).
    Neither,
}

impl Effect {
    /// The effect of going from `without` to `with` warmup.
    pub fn of(without: &CellSummary, with: &CellSummary) -> Self {
        let reach = |c: &CellSummary| c.steps_to_target.filter(|_| c.stable());
        match (reach(without), reach(with)) {
            (Some(a), Some(b)) => match b.total_cmp(&a) {
                Ordering::Less => Self::Faster,
                Ordering::Equal => Self::Same,
                Ordering::Greater => Self::Slower,
            },
            (None, Some(_)) => Self::Rescues,
            (Some(_), None) => Self::Breaks,
            (None, None) if !without.stable() && with.stable() => Self::Stabilises,
            (None, None) => Self::Neither,
        }
    }

    /// In words, for tables.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Rescues => "rescues: only with warmup the target is reached",
            Self::Stabilises => "stabilises: diverges without warmup, stable with it",
            Self::Faster => "faster to target",
            Self::Same => "same steps to target",
            Self::Slower => "slower to target",
            Self::Breaks => "breaks: the target is reached only without warmup",
            Self::Neither => "neither reaches the target",
        }
    }
}

/// One warmup cell against the baseline at the same multiple and momentum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The cell with warmup.
    pub with: CellSummary,
    /// The baseline (`T_w = 0`) at the same multiple and momentum.
    pub without: CellSummary,
    /// What the warmup did.
    pub effect: Effect,
}

/// Every warmup cell compared with its baseline.
pub fn compare(cells: &[CellSummary]) -> Vec<Comparison> {
    cells
        .iter()
        .filter(|c| c.key.warmup_steps > 0)
        .filter_map(|with| {
            let base = CellKey {
                warmup_steps: 0,
                shape: Shape::None,
                ..with.key
            };
            let without = cells.iter().find(|c| c.key.same(&base))?;
            Some(Comparison {
                with: with.clone(),
                without: without.clone(),
                effect: Effect::of(without, with),
            })
        })
        .collect()
}

/// A pair of runs worth plotting: a warmup cell and its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Representative {
    /// Why this pair: the effect of the warmup.
    pub effect: Effect,
    /// The cell with warmup.
    pub with: CellKey,
    /// Its baseline.
    pub without: CellKey,
}

/// Per momentum, the pair that shows the most: the largest multiple that warmup rescues from
/// divergence (reaching the target first, then stable); else the smallest multiple that
/// diverges even at the longest warmup (on a quadratic: warmup only delays the divergence);
/// else the largest slow-down (where warmup hurts); else the largest multiple stable with and
/// without warmup, at its longest warmup.
pub fn representatives(comparisons: &[Comparison]) -> Vec<Representative> {
    let momenta = sorted_unique(comparisons.iter().map(|c| c.with.key.momentum).collect());
    momenta
        .into_iter()
        .filter_map(|mu| {
            let mine: Vec<&Comparison> = comparisons
                .iter()
                .filter(|c| c.with.key.momentum == mu)
                .collect();
            let multiple = |a: &&&Comparison, b: &&&Comparison| {
                a.with.key.multiple.total_cmp(&b.with.key.multiple)
            };
            let warmup = |a: &&&Comparison, b: &&&Comparison| {
                a.with.key.warmup_steps.cmp(&b.with.key.warmup_steps)
            };
            let rescued = mine
                .iter()
                .filter(|c| {
                    !c.without.stable() && matches!(c.effect, Effect::Rescues | Effect::Stabilises)
                })
                .max_by(|a, b| {
                    multiple(a, b)
                        .then((a.effect == Effect::Rescues).cmp(&(b.effect == Effect::Rescues)))
                        .then(warmup(b, a))
                });
            let delayed = || {
                mine.iter()
                    .filter(|c| !c.with.stable() && !c.without.stable())
                    .min_by(|a, b| multiple(a, b).then(warmup(b, a)))
            };
            let slowed = || {
                let delay = |c: &Comparison| {
                    c.with.steps_to_target.unwrap_or(0.0) - c.without.steps_to_target.unwrap_or(0.0)
                };
                mine.iter()
                    .filter(|c| c.effect == Effect::Slower)
                    .max_by(|a, b| delay(a).total_cmp(&delay(b)))
            };
            let stable = || {
                mine.iter()
                    .filter(|c| c.with.stable() && c.without.stable())
                    .max_by(|a, b| multiple(a, b).then(warmup(a, b)))
            };
            let any = || mine.first();
            rescued
                .or_else(delayed)
                .or_else(slowed)
                .or_else(stable)
                .or_else(any)
                .map(|c| Representative {
                    effect: c.effect,
                    with: c.with.key,
                    without: c.without.key,
                })
        })
        .collect()
}

/// Everything the analysis of a warmup grid found; written as `analysis.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupAnalysis {
    /// The rate of multiple 1 and the curvature at `θ₀`.
    pub reference: Reference,
    /// The target loss.
    pub target: f64,
    /// Every cell over its seeds.
    pub cells: Vec<CellSummary>,
    /// Per (shape, momentum), the largest stable multiple per warmup length.
    pub maps: Vec<StabilityMap>,
    /// Every warmup cell against its baseline.
    pub comparisons: Vec<Comparison>,
    /// Pairs of runs to plot.
    pub representatives: Vec<Representative>,
}

/// Analyses a grid's records.
pub fn analyse(records: &[CellRecord], reference: Reference, target: f64) -> WarmupAnalysis {
    let cells = aggregate(records);
    let maps = stability_maps(&cells, reference.sgd_edge_multiple());
    let comparisons = compare(&cells);
    let representatives = representatives(&comparisons);
    WarmupAnalysis {
        reference,
        target,
        cells,
        maps,
        comparisons,
        representatives,
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), fmt_num)
}

/// The status as the records write it: `COMPLETE`, `INCOMPLETE`, `INFEASIBLE`.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Complete => "COMPLETE",
        Status::Incomplete => "INCOMPLETE",
        Status::Infeasible => "INFEASIBLE",
    }
}

/// The terminal summary: per (shape, momentum) and warmup length, the largest stable multiple,
/// the smallest diverged one, the largest reaching the target, and the fastest.
pub fn summary_table(maps: &[StabilityMap]) -> Table {
    let mut rows = Vec::new();
    for m in maps {
        for r in &m.rows {
            rows.push(vec![
                if r.warmup_steps == 0 {
                    "none".to_owned()
                } else {
                    m.shape.to_string()
                },
                m.momentum.to_string(),
                r.warmup_steps.to_string(),
                opt(r.largest_stable),
                opt(r.smallest_diverged),
                opt(m.edge_at_init),
                opt(r.largest_reaching),
                r.fastest.map_or_else(
                    || "-".to_owned(),
                    |(k, s)| format!("{s:.0} at ×{}", fmt_num(k)),
                ),
            ]);
        }
    }
    Table {
        header: [
            "shape",
            "μ",
            "T_w",
            "largest stable ×",
            "smallest diverged ×",
            "edge at θ₀ ×",
            "largest to target ×",
            "fastest to target",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

/// What the report says when [`effects_table`] is empty.
pub const NO_EFFECT: &str = "No warmup cell changed its outcome against its baseline (a cell \
    counts as stable only when none of its seeds diverged)";

/// The comparisons whose effect is not `same` or `neither`: where warmup mattered, the
/// rescues first, then what it stabilised, broke, slowed down and sped up.
pub fn effects_table(comparisons: &[Comparison]) -> Table {
    let rank = |e: Effect| match e {
        Effect::Rescues => 0,
        Effect::Stabilises => 1,
        Effect::Breaks => 2,
        Effect::Slower => 3,
        Effect::Faster => 4,
        Effect::Same | Effect::Neither => 5,
    };
    let mut notable: Vec<&Comparison> = comparisons
        .iter()
        .filter(|c| !matches!(c.effect, Effect::Same | Effect::Neither))
        .collect();
    notable.sort_by_key(|c| rank(c.effect));
    let steps = |c: &CellSummary| {
        if c.seeds > 1 && !c.stable() {
            format!("diverged {}/{}", c.diverged, c.seeds)
        } else if !c.stable() {
            "diverged".to_owned()
        } else {
            c.steps_to_target
                .map_or_else(|| "not reached".to_owned(), |s| format!("{s:.0}"))
        }
    };
    Table {
        header: [
            "×",
            "μ",
            "shape",
            "T_w",
            "without warmup",
            "with warmup",
            "effect",
        ]
        .map(String::from)
        .to_vec(),
        rows: notable
            .into_iter()
            .map(|c| {
                vec![
                    fmt_num(c.with.key.multiple),
                    c.with.key.momentum.to_string(),
                    c.with.key.shape.to_string(),
                    c.with.key.warmup_steps.to_string(),
                    steps(&c.without),
                    steps(&c.with),
                    c.effect.describe().to_owned(),
                ]
            })
            .collect(),
    }
}

/// Every record, one row each.
pub fn cells_table(records: &[CellRecord]) -> Table {
    Table {
        header: [
            "×",
            "peak lr",
            "T_w",
            "shape",
            "μ",
            "seed",
            "status",
            "steps",
            "final loss",
            "min loss",
            "steps to target",
            "max η·λ",
            "λ_max at end",
            "dead ReLU",
        ]
        .map(String::from)
        .to_vec(),
        rows: records
            .iter()
            .map(|r| {
                vec![
                    fmt_num(r.multiple),
                    fmt_num(r.peak_lr),
                    r.warmup_steps.to_string(),
                    r.shape.to_string(),
                    r.momentum.to_string(),
                    r.seed.to_string(),
                    status_name(r.status).to_owned(),
                    r.steps.to_string(),
                    opt(r.final_loss),
                    opt(r.min_loss),
                    r.steps_to_target
                        .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    opt(r.max_lr_sharpness),
                    opt(r.final_sharpness),
                    opt(r.final_dead_relu),
                ]
            })
            .collect(),
    }
}

/// The stability map of `(shape, momentum)` as a heatmap: columns the warmup lengths (the
/// baseline first), rows the multiples, colour the final loss, diverged cells marked.
pub fn stability_heatmap(
    records: &[CellRecord],
    map: &StabilityMap,
    reference: &Reference,
) -> Heatmap {
    let trials: Vec<(u64, f64, Option<f64>)> = records
        .iter()
        .filter(|r| r.momentum == map.momentum && (r.warmup_steps == 0 || r.shape == map.shape))
        .map(|r| {
            let loss = (r.status != Status::Infeasible)
                .then_some(r.final_loss)
                .flatten();
            (r.warmup_steps, r.multiple, loss)
        })
        .collect();
    let mut h = report::warmup_map(&trials);
    h.title = format!("Stability map: {} warmup, μ = {}", map.shape, map.momentum);
    h.y_label = format!(
        "peak rate in multiples of {} = {}",
        reference.describe(),
        fmt_num(reference.unit_lr)
    );
    h.x_label = "warmup steps T_w (0: none)".to_owned();
    h
}

/// One run's per-step rows, for the curves of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCurves {
    /// Legend text.
    pub label: String,
    /// Momentum of the run (for the `2(1+μ)/η` threshold).
    pub momentum: f64,
    /// The rows, as `metrics.csv` holds them.
    pub rows: Vec<StepMetrics>,
}

fn points(rows: &[StepMetrics], f: impl Fn(&StepMetrics) -> Option<f64>) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| f(r).map(|y| (r.step as f64, y)))
        .collect()
}

/// Sharpness of one run against `2/η(t)` (and `2(1+μ)/η(t)` with momentum).
pub fn sharpness_plot(run: &RunCurves) -> Plot {
    let sharp = points(&run.rows, |r| r.sharpness);
    let two = points(&run.rows, |r| Some(2.0 / r.lr));
    let mu = (run.momentum > 0.0)
        .then(|| points(&run.rows, |r| Some(2.0 * (1.0 + run.momentum) / r.lr)));
    let mut p = report::sharpness_vs_two_over_lr(&sharp, &two, mu.as_deref());
    p.title = format!("Sharpness and 2/η(t): {}", run.label);
    p
}

fn curves_plot(
    runs: &[RunCurves],
    title: &str,
    y_label: &str,
    log_y: bool,
    f: impl Fn(&StepMetrics) -> Option<f64>,
) -> Plot {
    Plot {
        title: title.to_owned(),
        x_label: "step".to_owned(),
        y_label: y_label.to_owned(),
        log_y,
        lines: runs
            .iter()
            .map(|r| Series::new(r.label.clone(), points(&r.rows, &f)))
            .collect(),
        ..Plot::default()
    }
}

/// Loss curves: each run's evaluation loss, and its training loss where the evaluations
/// cover fewer than half of the steps; the target as a dashed line.
pub fn loss_plot(runs: &[RunCurves], target: f64) -> Plot {
    let mut lines = Vec::new();
    for r in runs {
        let eval = points(&r.rows, |x| x.eval_loss);
        if eval.len() * 2 < r.rows.len() {
            lines.push(Series::new(
                format!("{} (train)", r.label),
                points(&r.rows, |x| Some(x.train_loss)),
            ));
        }
        if !eval.is_empty() {
            lines.push(Series::new(format!("{} (eval)", r.label), eval));
        }
    }
    Plot {
        title: "Loss curves".to_owned(),
        x_label: "step".to_owned(),
        y_label: "loss".to_owned(),
        log_y: true,
        lines,
        hlines: vec![(target, format!("target {}", fmt_num(target)))],
        ..Plot::default()
    }
}

/// The report's sections: the stability maps with the summary table, where warmup mattered,
/// sharpness against `2/η(t)`, the cosine between consecutive gradients, the dead-ReLU
/// fraction (when the runs have one), loss curves, and every cell. `runs` are the
/// representative runs' rows.
pub fn report_sections(
    analysis: &WarmupAnalysis,
    records: &[CellRecord],
    runs: &[RunCurves],
) -> Vec<Section> {
    let (w, h) = (720, 440);
    let reference = &analysis.reference;
    let mut sections = Vec::new();
    let edge_text = match reference.sgd_edge_multiple() {
        Some(e) => format!(
            "At θ₀, λ_max = {}: plain gradient descent is stable below ×{} (2/λ_max), heavy ball \
             below ×{}·(1+μ) (2(1+μ)/λ_max). ",
            fmt_num(reference.lambda_max),
            fmt_num(e),
            fmt_num(e)
        ),
        None => format!(
            "At θ₀, λ_max = {}: no direction curves up there, so θ₀ sets no edge. ",
            fmt_num(reference.lambda_max)
        ),
    };
    sections.push(Section {
        title: "Stability maps".into(),
        text: format!(
            "{edge_text}Each cell is one run over the whole budget; its colour is the final \
             loss, diverged cells are marked. The warmup-0 column is the same baseline in every \
             map of a momentum."
        ),
        figures: analysis
            .maps
            .iter()
            .map(|m| report::heatmap_svg(&stability_heatmap(records, m, reference), w, h))
            .collect(),
        table: Some(summary_table(&analysis.maps)),
    });
    let effects = effects_table(&analysis.comparisons);
    sections.push(Section {
        title: "Where warmup mattered".into(),
        text: if effects.rows.is_empty() {
            format!("{NO_EFFECT}.")
        } else {
            "Each warmup cell against the same peak rate without warmup (steps to target, \
             median over seeds)."
                .into()
        },
        figures: vec![],
        table: (!effects.rows.is_empty()).then_some(effects),
    });
    if !runs.is_empty() {
        sections.push(Section {
            title: "Sharpness and the stability threshold".into(),
            text: "λ_max (Lanczos) during the run, against 2/η(t) (and 2(1+μ)/η(t) \
                   with momentum): a run is locally unstable where λ_max lies above its \
                   threshold."
                .into(),
            figures: runs
                .iter()
                .map(|r| report::svg(&sharpness_plot(r), w, h))
                .collect(),
            table: None,
        });
        let mut figures = vec![report::svg(
            &curves_plot(
                runs,
                "Cosine between consecutive gradients",
                "cos(g_t, g_{t−1})",
                false,
                |r| r.grad_cosine.filter(|c| c.is_finite()),
            ),
            w,
            h,
        )];
        let has_dead = runs
            .iter()
            .any(|r| r.rows.iter().any(|x| x.dead_relu.is_some()));
        if has_dead {
            figures.push(report::svg(
                &curves_plot(
                    runs,
                    "Dead-ReLU fraction",
                    "units zero on a whole microbatch",
                    false,
                    |r| r.dead_relu,
                ),
                w,
                h,
            ));
        }
        sections.push(Section {
            title: "Gradients and units".into(),
            text: "A cosine near −1 is a step that overshoots and bounces across a valley; \
                   dead ReLUs are units that no sample of a microbatch activates."
                .into(),
            figures,
            table: None,
        });
        sections.push(Section {
            title: "Loss curves".into(),
            text: "The evaluation loss (the target's), and the training loss of the batch where \
                   evaluations are sparse."
                .into(),
            figures: vec![report::svg(&loss_plot(runs, analysis.target), w, h)],
            table: None,
        });
    }
    sections.push(Section {
        title: "Every cell".into(),
        text: String::new(),
        figures: vec![],
        table: Some(cells_table(records)),
    });
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        Grid::new(
            vec![2.0, 0.5, 1.0, 2.0],
            vec![100, 0, 10],
            vec![Shape::Cubic, Shape::None, Shape::Linear],
            vec![0.9, 0.0],
            vec![0, 1],
        )
        .unwrap()
    }

    #[test]
    fn the_grid_runs_one_baseline_per_multiple_and_every_shape_per_warmup() {
        let g = grid();
        assert_eq!(g.multiples, [0.5, 1.0, 2.0], "sorted, no duplicates");
        assert_eq!(g.warmups, [10, 100], "0 is the baseline, always run");
        assert_eq!(g.shapes, [Shape::Linear, Shape::Cubic]);
        assert_eq!(g.momenta, [0.0, 0.9]);
        let cells = g.cells();
        // Per (μ, multiple, seed): the baseline + 2 shapes × 2 warmups.
        assert_eq!(cells.len(), 2 * 3 * 2 * (1 + 2 * 2));
        let baselines: Vec<&Cell> = cells.iter().filter(|c| c.warmup_steps == 0).collect();
        assert_eq!(baselines.len(), 2 * 3 * 2);
        assert!(baselines.iter().all(|c| c.shape == Shape::None));
        assert!(
            cells
                .iter()
                .filter(|c| c.warmup_steps > 0)
                .all(|c| c.shape != Shape::None)
        );
        let mut names: Vec<String> = cells.iter().map(Cell::dir_name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cells.len(), "every run has its own folder");
        assert!(names.contains(&"mu0.9/x0.5-cubic-w100-s1".to_owned()));
        assert!(names.contains(&"mu0/x2-none-w0-s0".to_owned()));
    }

    #[test]
    fn bad_settings_name_the_value_and_what_is_accepted() {
        let e = "foo".parse::<Shape>().unwrap_err().to_string();
        assert_eq!(e, "shapes foo: expected none, linear or cubic");
        let e = "steps".parse::<Unit>().unwrap_err().to_string();
        assert!(e.starts_with("unit steps: expected edge"), "{e}");
        let new = |m: Vec<f64>, w: Vec<u64>, s: Vec<Shape>, mu: Vec<f64>| {
            Grid::new(m, w, s, mu, vec![0]).unwrap_err().to_string()
        };
        let e = new(vec![1.0, -1.0], vec![0], vec![Shape::Linear], vec![0.0]);
        assert_eq!(e, "multiples -1: expected finite multiples > 0");
        let e = new(vec![f64::NAN], vec![0], vec![Shape::Linear], vec![0.0]);
        assert!(e.starts_with("multiples NaN"), "{e}");
        let e = new(vec![1.0], vec![0], vec![Shape::Linear], vec![1.0]);
        assert!(e.starts_with("momentum 1: expected μ in [0, 1)"), "{e}");
        let e = new(vec![1.0], vec![0, 10, 100], vec![Shape::None], vec![0.0]);
        assert_eq!(
            e,
            "shapes none: expected linear or cubic as well, for the warmups 10,100"
        );
        // The baseline alone is a grid.
        let g = Grid::new(vec![1.0], vec![0], vec![Shape::None], vec![0.0], vec![0]).unwrap();
        assert_eq!(g.cells().len(), 1);
        let e = Reference::new(Unit::Edge, -0.0194, 0.5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("λ_max(θ₀) = -1.9400e-2") && e.contains("multiples of the base rate"),
            "{e}"
        );
    }

    #[test]
    fn the_reference_puts_the_edge_where_the_closed_form_does() {
        // λ_max = 4: 2/λ = 0.5. In multiples of the edge, SGD's edge is 1 and heavy ball's 1+μ.
        let r = Reference::new(Unit::Edge, 4.0, 9.0).unwrap();
        assert_eq!(r.unit_lr, 0.5);
        assert_eq!(r.sgd_edge_multiple(), Some(1.0));
        // In multiples of a base rate 0.1, the edge 0.5 is ×5.
        let r = Reference::new(Unit::Lr, 4.0, 0.1).unwrap();
        approx::assert_relative_eq!(r.sgd_edge_multiple().unwrap(), 5.0);
        // A concave start has no edge in either unit.
        assert_eq!(
            Reference::new(Unit::Lr, -0.02, 0.1)
                .unwrap()
                .sgd_edge_multiple(),
            None
        );
    }

    fn row(step: u64, lr: f64, eval: Option<f64>) -> StepMetrics {
        StepMetrics {
            step,
            samples: (step + 1) * 8,
            lr,
            train_loss: eval.unwrap_or(1.0),
            grad_norm_sq: 1.0,
            micro_norm_sq: 1.0,
            g2_est: 1.0,
            param_norm: 1.0,
            momentum_energy: 1.0,
            modified_loss: 1.0,
            eval_loss: eval,
            ..StepMetrics::default()
        }
    }

    fn summary(status: Status, steps: u64, final_eval: Option<f64>) -> RunSummary {
        RunSummary {
            status,
            steps,
            samples: steps * 8,
            message: String::new(),
            batch: 8,
            micro: 1,
            peak_lr: 1.0,
            final_eval_loss: final_eval,
            final_eval_accuracy: None,
            final_train_loss: None,
            final_b_simple: None,
            last_sharpness: None,
            final_b_simple_exact: None,
            final_b_noise_exact: None,
            params_digest: String::new(),
        }
    }

    fn cell(multiple: f64, w: u64, seed: u64) -> Cell {
        Cell {
            multiple,
            warmup_steps: w,
            shape: if w == 0 { Shape::None } else { Shape::Linear },
            momentum: 0.0,
            seed,
        }
    }

    #[test]
    fn a_record_reads_steps_to_target_and_sharpness_from_the_rows() {
        let mut rows: Vec<StepMetrics> = [4.0, 3.0, 0.9, 0.5]
            .iter()
            .enumerate()
            .map(|(t, &l)| row(t as u64, 0.1 * (t + 1) as f64, Some(l)))
            .collect();
        // λ_max measured at steps 1 (η = 0.2) and 3 (η = 0.4); a stale product at step 2
        // (the latest sharpness times the current rate) does not count.
        rows[1].sharpness = Some(8.0);
        rows[2].lr_sharpness = Some(9.0);
        rows[3].sharpness = Some(6.0);
        rows[3].dead_relu = Some(0.25);
        let c = cell(2.0, 10, 3);
        let r = CellRecord::new(
            &c,
            0.4,
            &summary(Status::Incomplete, 4, Some(0.4)),
            &rows,
            1.0,
        );
        assert_eq!(r.status, Status::Complete);
        assert_eq!(
            r.steps_to_target,
            Some(2),
            "the first loss ≤ 1.0 is at step 2"
        );
        assert_eq!(
            r.final_loss,
            Some(0.4),
            "the evaluation after the last update"
        );
        assert_eq!(r.min_loss, Some(0.4));
        approx::assert_relative_eq!(r.max_lr_sharpness.unwrap(), 0.4 * 6.0);
        assert_eq!(r.final_sharpness, Some(6.0));
        assert_eq!(r.final_dead_relu, Some(0.25));
        // The final evaluation alone can reach the target.
        let r = CellRecord::new(
            &c,
            0.4,
            &summary(Status::Incomplete, 4, Some(0.1)),
            &rows,
            0.2,
        );
        assert_eq!(r.steps_to_target, Some(4));
        // A run that reached the target and then diverged is no success.
        let r = CellRecord::new(
            &c,
            0.4,
            &summary(Status::Infeasible, 3, Some(0.9)),
            &rows,
            1.0,
        );
        assert_eq!(r.status, Status::Infeasible);
        assert_eq!((r.steps_to_target, r.final_loss), (None, None));
        assert_eq!(r.min_loss, Some(0.5));
        // Never below the target: INCOMPLETE.
        let r = CellRecord::new(
            &c,
            0.4,
            &summary(Status::Incomplete, 4, Some(0.4)),
            &rows,
            0.1,
        );
        assert_eq!((r.status, r.steps_to_target), (Status::Incomplete, None));
        // Below the target at step 3, above it at the end: not held, INCOMPLETE.
        let r = CellRecord::new(
            &c,
            0.4,
            &summary(Status::Incomplete, 4, Some(2.0)),
            &rows,
            1.0,
        );
        assert_eq!((r.status, r.steps_to_target), (Status::Incomplete, None));
        assert_eq!((r.final_loss, r.min_loss), (Some(2.0), Some(0.5)));
    }

    /// A record with the given outcome: `None` steps = not reached, `diverged` = INFEASIBLE.
    fn rec(multiple: f64, w: u64, seed: u64, steps: Option<u64>, diverged: bool) -> CellRecord {
        let c = cell(multiple, w, seed);
        CellRecord {
            multiple,
            peak_lr: multiple,
            warmup_steps: w,
            shape: c.shape,
            momentum: 0.0,
            seed,
            status: match (diverged, steps) {
                (true, _) => Status::Infeasible,
                (false, Some(_)) => Status::Complete,
                (false, None) => Status::Incomplete,
            },
            steps: 100,
            final_loss: (!diverged).then_some(0.5),
            min_loss: Some(0.5),
            steps_to_target: steps.filter(|_| !diverged),
            max_lr_sharpness: None,
            final_sharpness: None,
            final_dead_relu: None,
        }
    }

    #[test]
    fn seeds_aggregate_to_a_median_where_missing_counts_as_infinite() {
        let recs = [
            rec(1.0, 0, 0, Some(30), false),
            rec(1.0, 0, 1, Some(10), false),
            rec(1.0, 0, 2, None, false),
            rec(2.0, 0, 0, Some(5), false),
            rec(2.0, 0, 1, None, true),
            rec(2.0, 0, 2, None, false),
        ];
        let cells = aggregate(&recs);
        assert_eq!(cells.len(), 2);
        // (10, 30, ∞) → 30.
        assert_eq!(cells[0].steps_to_target, Some(30.0));
        assert!(cells[0].stable());
        // (5, ∞, ∞) → not reached; one seed diverged: unstable.
        assert_eq!(cells[1].steps_to_target, None);
        assert_eq!((cells[1].diverged, cells[1].seeds), (1, 3));
        assert_eq!(cells[1].final_loss, Some(0.5), "mean over the stable seeds");
        // With warmup every seed of ×2 reaches the target: the table says how many diverged.
        let mut with = recs.to_vec();
        with.extend((0..3).map(|s| rec(2.0, 10, s, Some(8), false)));
        let table = effects_table(&compare(&aggregate(&with)));
        assert_eq!(table.rows.len(), 1);
        assert_eq!(table.rows[0][4..6], ["diverged 1/3", "8"]);
    }

    /// The grid of a quadratic-like landscape where warmup rescues ×4 and ×8 at T_w = 100
    /// (×8 only stabilised), ×2 is stable everywhere, and warmup slows ×1 down.
    fn example() -> Vec<CellRecord> {
        vec![
            rec(1.0, 0, 0, Some(50), false),
            rec(1.0, 10, 0, Some(55), false),
            rec(1.0, 100, 0, Some(100), false),
            rec(2.0, 0, 0, Some(30), false),
            rec(2.0, 10, 0, Some(30), false),
            rec(2.0, 100, 0, Some(80), false),
            rec(4.0, 0, 0, None, true),
            rec(4.0, 10, 0, None, true),
            rec(4.0, 100, 0, Some(90), false),
            rec(8.0, 0, 0, None, true),
            rec(8.0, 10, 0, None, true),
            rec(8.0, 100, 0, None, false),
        ]
    }

    #[test]
    fn the_map_finds_the_largest_stable_multiple_per_warmup() {
        let cells = aggregate(&example());
        let maps = stability_maps(&cells, Some(1.0));
        assert_eq!(maps.len(), 1);
        let m = &maps[0];
        assert_eq!(
            (m.shape, m.momentum, m.edge_at_init),
            (Shape::Linear, 0.0, Some(1.0))
        );
        // (T_w, largest stable, smallest diverged, largest reaching the target).
        let by_w: Vec<_> = m
            .rows
            .iter()
            .map(|r| {
                (
                    r.warmup_steps,
                    r.largest_stable,
                    r.smallest_diverged,
                    r.largest_reaching,
                )
            })
            .collect();
        assert_eq!(
            by_w,
            [
                (0, Some(2.0), Some(4.0), Some(2.0)),
                (10, Some(2.0), Some(4.0), Some(2.0)),
                (100, Some(8.0), None, Some(4.0)),
            ]
        );
        assert_eq!(m.rows[0].fastest, Some((2.0, 30.0)));
        assert_eq!(m.rows[2].fastest, Some((2.0, 80.0)));
        // Heavy ball's edge is (1+μ) times SGD's.
        let mut mu = example();
        mu.iter_mut().for_each(|r| r.momentum = 0.5);
        let maps = stability_maps(&aggregate(&mu), Some(1.0));
        assert_eq!(maps[0].edge_at_init, Some(1.5));
    }

    #[test]
    fn comparisons_say_where_warmup_helps_and_where_it_hurts() {
        let comps = compare(&aggregate(&example()));
        let effect = |k: f64, w: u64| {
            comps
                .iter()
                .find(|c| c.with.key.multiple == k && c.with.key.warmup_steps == w)
                .map(|c| c.effect)
                .unwrap()
        };
        assert_eq!(effect(1.0, 10), Effect::Slower);
        assert_eq!(effect(2.0, 10), Effect::Same);
        assert_eq!(effect(4.0, 10), Effect::Neither);
        assert_eq!(effect(4.0, 100), Effect::Rescues);
        assert_eq!(effect(8.0, 100), Effect::Stabilises);
        assert_eq!(comps.len(), 8, "every warmup cell has its baseline");
        // Reached only without warmup.
        let b = aggregate(&[rec(1.0, 0, 0, Some(5), false), rec(1.0, 10, 0, None, false)]);
        assert_eq!(compare(&b)[0].effect, Effect::Breaks);
        let table = effects_table(&comps);
        assert_eq!(table.rows.len(), 8 - 3, "same and neither are left out");
        assert!(
            table
                .rows
                .iter()
                .any(|r| r[4] == "diverged" && r[5] == "90")
        );
    }

    #[test]
    fn representatives_prefer_a_rescue_then_a_delayed_divergence_then_a_slowdown() {
        let comps = compare(&aggregate(&example()));
        let reps = representatives(&comps);
        assert_eq!(reps.len(), 1);
        // ×8 is only stabilised, ×4 rescued: the larger multiple wins.
        assert_eq!(reps[0].effect, Effect::Stabilises);
        assert_eq!(
            (reps[0].with.multiple, reps[0].with.warmup_steps),
            (8.0, 100)
        );
        assert_eq!(
            (reps[0].without.multiple, reps[0].without.warmup_steps),
            (8.0, 0)
        );
        // Without divergence anywhere: the largest slow-down (the plateau case).
        let plateau = aggregate(&[
            rec(1.0, 0, 0, Some(50), false),
            rec(1.0, 10, 0, Some(55), false),
            rec(1.0, 100, 0, Some(100), false),
        ]);
        let reps = representatives(&compare(&plateau));
        assert_eq!(
            (reps[0].effect, reps[0].with.warmup_steps),
            (Effect::Slower, 100)
        );
        // A quadratic: above the edge every warmup diverges; the smallest such multiple at
        // the longest warmup shows 2/η(t) crossing λ_max.
        let quadratic = aggregate(&[
            rec(0.9, 0, 0, Some(30), false),
            rec(0.9, 100, 0, Some(80), false),
            rec(1.1, 0, 0, None, true),
            rec(1.1, 10, 0, None, true),
            rec(1.1, 100, 0, None, true),
            rec(2.0, 100, 0, None, true),
            rec(2.0, 0, 0, None, true),
        ]);
        let reps = representatives(&compare(&quadratic));
        assert_eq!(reps[0].effect, Effect::Neither);
        assert_eq!(
            (reps[0].with.multiple, reps[0].with.warmup_steps),
            (1.1, 100)
        );
    }

    #[test]
    fn the_report_has_a_map_per_shape_and_momentum_and_the_curves_of_the_pair() {
        let mut recs = example();
        let mut cubic: Vec<CellRecord> = recs
            .iter()
            .filter(|r| r.warmup_steps > 0)
            .cloned()
            .map(|mut r| {
                r.shape = Shape::Cubic;
                r
            })
            .collect();
        recs.append(&mut cubic);
        let reference = Reference::new(Unit::Edge, 1.0, 0.1).unwrap();
        let a = analyse(&recs, reference, 0.1);
        assert_eq!(a.maps.len(), 2);
        let heat = stability_heatmap(&recs, &a.maps[1], &reference);
        assert_eq!(heat.x_ticks, ["0", "10", "100"]);
        assert_eq!(heat.y_ticks, ["1", "2", "4", "8"]);
        assert!(
            heat.cells[2][0].is_some_and(f64::is_infinite),
            "×4 diverges without warmup"
        );
        assert_eq!(
            heat.cells[2][2],
            Some(0.5),
            "and trains with 100 steps of it"
        );
        let mut rows: Vec<StepMetrics> = (0..20)
            .map(|t| row(t, 0.05 * (t + 1) as f64, Some(1.0)))
            .collect();
        rows[0].sharpness = Some(1.0);
        rows[0].dead_relu = Some(0.1);
        let runs = [RunCurves {
            label: "×8".into(),
            momentum: 0.9,
            rows,
        }];
        let sharp = sharpness_plot(&runs[0]);
        assert_eq!(sharp.lines.len(), 3, "λ_max, 2/η, 2(1+μ)/η");
        approx::assert_relative_eq!(sharp.lines[1].points[1].1, 2.0 / 0.1);
        approx::assert_relative_eq!(sharp.lines[2].points[1].1, 3.8 / 0.1);
        // Evaluations on every step: no training-loss line.
        let loss = loss_plot(&runs, 0.1);
        assert_eq!(loss.lines.len(), 1);
        assert_eq!(loss.hlines[0].0, 0.1);
        let sections = report_sections(&a, &recs, &runs);
        let titles: Vec<&str> = sections.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Stability maps",
                "Where warmup mattered",
                "Sharpness and the stability threshold",
                "Gradients and units",
                "Loss curves",
                "Every cell"
            ]
        );
        assert_eq!(sections[0].figures.len(), 2);
        assert_eq!(sections[3].figures.len(), 2, "cosine and dead ReLUs");
        let page = report::html_page("warmup", "", &sections);
        assert!(page.contains("Stability map: cubic warmup, μ = 0"));
    }
}
