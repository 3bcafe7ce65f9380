//! `batchlab warmup`: the warmup stability grid (peak rate × warmup length × shape ×
//! momentum), planned and analysed by `batchlab_lab::warmup`, executed here.
//!
//! ```text
//!   base config ──► λ_max(θ₀) by Lanczos ──► unit 2/λ_max(θ₀) (or --lr), target
//!        │
//!   Grid::cells ──► queue ──► --jobs threads: cached? else the executor ──► run folder
//!                                             read back summary + metrics.csv ──► CellRecord
//!   records ──► cells.csv, cells.json, analysis.json, report.html, the terminal table
//! ```
//!
//! The study is a folder:
//!
//! ```text
//!   OUT/study.json                      "experiment": crate::output::Experiment::Warmup, grid, λ_max(θ₀), unit, target, base
//!   OUT/runs/mu0.9/x2-linear-w100-s0/   config.toml, metrics.csv, summary.json
//!   OUT/cells.csv, cells.json           every run's record
//!   OUT/analysis.json                   stability per warmup, effects, representative runs
//!   OUT/report.html                     maps, sharpness vs 2/η(t), cosines, dead ReLUs, losses
//! ```
//!
//! A cell whose folder holds a summary of the same configuration is not run again, so an
//! interrupted grid resumes where it stopped; the report is built from the folder alone
//! (`batchlab report OUT`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use batchlab_core::optim::OptimizerKind;
use batchlab_core::schedule::Scaling;
use batchlab_core::train::{TrainConfig, default_micro};
use batchlab_lab::report::{html_page, terminal_table};
use batchlab_lab::warmup::{
    self, Cell, CellRecord, Grid, GridError, Reference, RunCurves, Shape, Unit, WarmupAnalysis,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exec::{ExecArgs, Executor};
use crate::output::{cached_summary, read_rows};
use crate::train::{Prepared, TrainArgs};

/// Flags of `batchlab warmup`.
#[derive(Args, Debug)]
#[command(after_long_help = WARMUP_HELP)]
#[command(mut_arg("out", |a| a.help("The study's folder: study.json, runs/ (one folder per run), cells.csv, cells.json, analysis.json, report.html. Default: runs/warmup-{task}")))]
pub struct WarmupArgs {
    /// The base run (task, batch, step budget, schedule decay): every train flag applies.
    #[command(flatten)]
    train: TrainArgs,
    /// Peak rates, comma-separated, as multiples of the unit (--unit): by default of
    /// 2/λ_max(θ₀), the largest stable rate of gradient descent at the initial point.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.5,0.9,1.1,1.5,2,3",
        allow_negative_numbers = true
    )]
    multiples: Vec<f64>,
    /// Warmup lengths in steps, comma-separated; 0 = no warmup (always run: every warmup cell
    /// is compared with it).
    #[arg(long, value_delimiter = ',', default_value = "0,10,100")]
    warmups: Vec<u64>,
    /// Warmup shapes of the warmups > 0: linear (η·min(1, (t+1)/T_w)), cubic (η(3u² − 2u³),
    /// u = t/T_w); none = the no-warmup baseline alone.
    #[arg(long, value_delimiter = ',', default_value = "linear,cubic")]
    shapes: Vec<String>,
    /// Momenta, comma-separated: 0 = plain SGD, μ > 0 = heavy ball (optimizer kind
    /// "momentum" with optimizer.momentum = μ).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.9",
        allow_negative_numbers = true
    )]
    momentum: Vec<f64>,
    /// What the multiples multiply: edge (2/λ_max at θ₀, measured first) or lr (--lr).
    #[arg(long, default_value = "edge")]
    unit: String,
    /// Replicates per cell: seeds --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Target as a fraction of the initial eval loss (ignored when --target-loss is given).
    /// Runs do not stop there: every run trains the whole budget, so that a divergence after
    /// the target still counts.
    #[arg(long, default_value_t = 0.05)]
    target_fraction: f64,
    /// Measure the sharpness λ_max every this many steps in every run (0 = never). Default:
    /// --set sharpness_every when given, else 100 measurements per run where the task's
    /// curvature is in closed form (nqm, plateau, linreg) and 4 otherwise (an MLP's costs
    /// 2 × sharpness_iters gradients of 2048 samples).
    #[arg(long)]
    sharpness_every: Option<u64>,
    /// Parallel runs in this process (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    #[command(flatten)]
    exec: ExecArgs,
}

const WARMUP_HELP: &str = "\
The default grid: noisy quadratic model (d = 100, h_i = c_i = 1/i, θ₀ = 1), B = 256, 300
steps; peak rates ×0.5, 0.9, 1.1, 1.5, 2, 3 of 2/λ_max(θ₀) = 2; no warmup, and linear and cubic
warmups of 10 and 100 steps; plain SGD and heavy ball μ = 0.9; target 5% of the initial loss.
It is the control experiment, in seconds: on a quadratic the curvature never changes, so the
edge stays at 2/λ_max (SGD) and 2(1+μ)/λ_max (heavy ball) whatever the warmup, which only
delays the divergence (and the descent).

Where warmup helps: the sharpness of an MLP falls early in training, so a rate that diverges
from θ₀ trains once a warmup has carried the run into a flatter region. Where warmup hurts:
on the plateau ln(1 + x²) far from 0 the gradient is tiny, and a small early rate only delays
the descent (λ_max(θ₀) < 0 there, so give rates in multiples of --lr).

Outputs (in --out, default runs/warmup-{task}): study.json, runs/mu{μ}/x{multiple}-{shape}-
w{T_w}-s{seed}/ (each run's config, metrics and summary), cells.csv and cells.json (status,
final loss, steps to target, largest η·λ_max per run), analysis.json, report.html (stability
maps, sharpness against 2/η(t) and 2(1+μ)/η(t), gradient cosines, dead ReLUs, loss curves).
Finished runs are reused; `batchlab report DIR` renders the report again.

Examples:
  batchlab warmup                                          # NQM control, ~5 s
  batchlab warmup --task plateau --unit lr --lr 0.5 --multiples 1 --warmups 0,50,150 \\
                  --momentum 0 --steps 400                 # warmup slows the descent
  batchlab warmup --task mlp --batch 128 --steps 100 --multiples 16,32,64,128 \\
                  --warmups 0,50 --shapes linear --momentum 0 --target-fraction 0.7 \\
                  --sharpness-every 50 --set sharpness_iters=10
                  # 784-256-256-10 on teacher data, a few minutes on 2 cores: ×128 diverges
                  # at step 1 without warmup and trains with 50 steps of it
  batchlab warmup --multiples 0.9,1.1 --warmups 0,50 --shapes cubic --momentum 0 --seeds 3";

/// The default grid's base overrides (flags and --config win).
const BASE: &[&str] = &[
    "task.kind=\"nqm\"",
    "task.dim=100",
    "batch=256",
    "steps=300",
];

/// Measurements of λ_max per run where the task's curvature is cheap (closed form).
const SHARPNESS_PER_RUN_EXACT: u64 = 100;
/// Measurements of λ_max per run otherwise.
const SHARPNESS_PER_RUN: u64 = 4;

/// Everything a warmup grid needs, validated.
struct Study {
    base: TrainConfig,
    grid: Grid,
    reference: Reference,
    target: f64,
    initial_loss: f64,
    sharpness_every: u64,
    /// The task's evaluation is its closed-form population loss (cheap: every step).
    exact_eval: bool,
    out: PathBuf,
}

/// A grid error as the command line names it.
fn flag_error(e: GridError) -> anyhow::Error {
    match e {
        GridError::Invalid { .. } => anyhow!("--{e}"),
        GridError::NoEdge { .. } => anyhow!("{e} (--unit lr --lr RATE)"),
    }
}

impl WarmupArgs {
    fn build(&self) -> Result<Option<Study>> {
        let Some(p) = self.train.prepare_with_base("warmup", BASE)? else {
            return Ok(None);
        };
        let Prepared { cfg, plan, .. } = p;
        match cfg.optimizer.kind {
            OptimizerKind::Sgd | OptimizerKind::Momentum => {}
            other => bail!(
                "--optimizer {other}: the warmup grid trains with sgd (--momentum 0) or heavy-ball \
                 momentum (--momentum μ > 0); its stability edge 2(1+μ)/λ_max is what the grid tests"
            ),
        }
        let shapes = self
            .shapes
            .iter()
            .map(|s| s.parse::<Shape>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(flag_error)?;
        let unit: Unit = self.unit.parse().map_err(flag_error)?;
        if self.seeds == 0 {
            bail!("--seeds 0: expected at least 1 seed");
        }
        let grid = Grid::new(
            self.multiples.clone(),
            self.warmups.clone(),
            shapes,
            self.momentum.clone(),
            (0..self.seeds).map(|k| cfg.seed + k).collect(),
        )
        .map_err(flag_error)?;
        let mut scratch = batchlab_core::Scratch::new();
        let init = plan
            .task
            .evaluate(&plan.task.init_params(), &mut scratch)
            .loss;
        let target = match cfg.target_loss {
            Some(t) => t,
            None => {
                if !(self.target_fraction > 0.0 && self.target_fraction < 1.0) {
                    bail!(
                        "--target-fraction {}: expected a fraction in (0, 1)",
                        self.target_fraction
                    );
                }
                self.target_fraction * init
            }
        };
        let started = Instant::now();
        let lambda_max = plan.replica().sharpness(&mut scratch);
        tracing::info!(
            lambda_max,
            max_iterations = cfg.sharpness_iters,
            seconds = started.elapsed().as_secs_f64(),
            "sharpness at θ₀"
        );
        let reference = Reference::new(unit, lambda_max, plan.peak_lr).map_err(flag_error)?;
        let exact_eval = plan.task.closed_form().is_some();
        let sharpness_every = match (self.sharpness_every, cfg.sharpness_every) {
            (Some(s), _) => s,
            (None, s) if s > 0 => s,
            (None, _) => {
                let per_run = if exact_eval {
                    SHARPNESS_PER_RUN_EXACT
                } else {
                    SHARPNESS_PER_RUN
                };
                cfg.steps.div_ceil(per_run).max(1)
            }
        };
        let out = self
            .train
            .out_dir()
            .cloned()
            .unwrap_or_else(|| PathBuf::from(format!("runs/warmup-{}", plan.task.name())));
        Ok(Some(Study {
            base: cfg,
            grid,
            reference,
            target,
            initial_loss: init,
            sharpness_every,
            exact_eval,
            out,
        }))
    }
}

impl Study {
    /// The configuration of one cell's run.
    fn cell_config(&self, c: &Cell) -> TrainConfig {
        let mut t = self.base.clone();
        t.lr = c.multiple * self.reference.unit_lr;
        t.lr_scaling = Scaling::None;
        t.base_batch = None;
        t.seed = c.seed;
        t.schedule.warmup_steps = c.warmup_steps;
        t.schedule.warmup_shape = c.shape.schedule();
        if c.momentum == 0.0 {
            t.optimizer.kind = OptimizerKind::Sgd;
        } else {
            t.optimizer.kind = OptimizerKind::Momentum;
        }
        t.optimizer.momentum = c.momentum;
        // Every run trains its whole budget: the target is read from its rows afterwards.
        t.target_loss = None;
        t.stop_stalled = false;
        t.sharpness_every = self.sharpness_every;
        if self.exact_eval {
            t.eval_every = 1;
        }
        t
    }

    fn cell_dir(&self, c: &Cell) -> PathBuf {
        self.out.join("runs").join(c.dir_name())
    }

    /// The `study.json` document: what `batchlab report` needs to analyse the folder again.
    fn document(&self) -> serde_json::Value {
        serde_json::json!({
            "experiment": crate::output::Experiment::Warmup,
            "grid": self.grid,
            "reference": self.reference,
            "target_loss": self.target,
            "initial_loss": self.initial_loss,
            "sharpness_every": self.sharpness_every,
            "base": self.base,
        })
    }
}

/// A cell's record: its run reused or trained, then read back from its folder.
fn cell_record(study: &Study, exec: &Executor, cell: &Cell) -> Result<(CellRecord, bool)> {
    let cfg = study.cell_config(cell);
    let dir = study.cell_dir(cell);
    let (summary, cached) = match cached_summary(&dir, &cfg) {
        Some(s) => (s, true),
        None => (
            exec.run(&cfg, &dir, false, crate::output::Rows::Every, &|_| {})
                .with_context(|| format!("run {}", dir.display()))?
                .summary,
            false,
        ),
    };
    let rows = read_rows(&dir)?;
    let record = CellRecord::new(cell, cfg.lr, &summary, &rows, study.target);
    Ok((record, cached))
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Runs `batchlab warmup`.
pub fn run(args: WarmupArgs) -> Result<()> {
    let Some(study) = args.build()? else {
        return Ok(());
    };
    let micro = study
        .base
        .micro
        .unwrap_or_else(|| default_micro(study.base.batch));
    args.exec.check_workers(
        study.base.batch / micro,
        &format!("batch = {}, micro = {micro}", study.base.batch),
    )?;
    let _lock = crate::output::FolderLock::acquire(&study.out, "batchlab warmup")?;
    crate::exec::stop_between_runs(&study.out);
    write_json(&study.out.join("study.json"), &study.document())?;
    print_reference(&study);
    let cells = study.grid.cells();
    let bar = progress_bar(cells.len() as u64);
    let queue = Mutex::new(cells.into_iter().rev().collect::<Vec<Cell>>());
    let records = Mutex::new(Vec::new());
    let (ran, reused) = (AtomicU64::new(0), AtomicU64::new(0));
    let exec = Executor::start(&args.exec)?;
    let jobs = exec.jobs(args.jobs);
    let result = std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let Some(cell) = queue.lock().expect("poisoned").pop() else {
                            return Ok(());
                        };
                        let (rec, cached) = cell_record(&study, &exec, &cell)?;
                        let counter = if cached { &reused } else { &ran };
                        counter.fetch_add(1, Ordering::Relaxed);
                        bar.inc(1);
                        bar.set_message(format!(
                            "{}: {}",
                            cell.key().label(),
                            warmup::status_name(rec.status)
                        ));
                        records.lock().expect("poisoned").push(rec);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a warmup thread panicked"))??;
        }
        Ok(())
    });
    exec.close(result.as_ref().err());
    result?;
    bar.finish_and_clear();
    let mut records = records.into_inner().expect("poisoned");
    warmup::sort_records(&mut records);
    write_records(&study.out, &records)?;
    println!(
        "{} runs ({} run, {} reused) in {}",
        records.len(),
        ran.into_inner(),
        reused.into_inner(),
        study.out.display()
    );
    let analysis = analyse_and_print(&study.out, &records, study.reference, study.target)?;
    let report = write_report(&study.out, &analysis, &records, study.grid.seeds[0])?;
    println!(
        "report: {} (the study: {})",
        report.display(),
        crate::output::folder_size(&study.out)
    );
    Ok(())
}

fn print_reference(s: &Study) {
    let r = &s.reference;
    print!("λ_max(θ₀) = {:.4e} (Lanczos)", r.lambda_max);
    if r.lambda_max > 0.0 {
        print!(": 2/λ_max = {:.4e}", 2.0 / r.lambda_max);
        for &mu in s.grid.momenta.iter().filter(|&&m| m > 0.0) {
            print!(
                ", 2(1+μ)/λ_max = {:.4e} for μ = {mu}",
                2.0 * (1.0 + mu) / r.lambda_max
            );
        }
    }
    println!();
    let lo = s.grid.multiples.first().copied().unwrap_or(0.0);
    let hi = s.grid.multiples.last().copied().unwrap_or(0.0);
    println!(
        "peak rates ×{lo}..×{hi} of {} = {:.4e}: {:.4e}..{:.4e}; target loss {:.4e} ({:.3}× the initial {:.4e}); λ_max every {} steps",
        r.describe(),
        r.unit_lr,
        lo * r.unit_lr,
        hi * r.unit_lr,
        s.target,
        s.target / s.initial_loss,
        s.initial_loss,
        s.sharpness_every
    );
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn write_records(out: &Path, records: &[CellRecord]) -> Result<()> {
    let path = out.join("cells.csv");
    let mut w =
        csv::Writer::from_path(&path).with_context(|| format!("writing {}", path.display()))?;
    for r in records {
        w.serialize(r)?;
    }
    w.flush()?;
    write_json(&out.join("cells.json"), &records)
}

/// Most rows of the effects table printed on the terminal (the report has them all).
const EFFECT_ROWS: usize = 12;

/// Analyses the records, writes `analysis.json`, and prints the summary tables.
fn analyse_and_print(
    out: &Path,
    records: &[CellRecord],
    reference: Reference,
    target: f64,
) -> Result<WarmupAnalysis> {
    let a = warmup::analyse(records, reference, target);
    write_json(&out.join("analysis.json"), &a)?;
    println!(
        "per shape, momentum and warmup: multiples of {} (target loss {:.4e})",
        reference.describe(),
        target
    );
    print!("{}", terminal_table(&warmup::summary_table(&a.maps)));
    let mut effects = warmup::effects_table(&a.comparisons);
    if effects.rows.is_empty() {
        println!("{}", warmup::NO_EFFECT);
    } else {
        let more = effects.rows.len().saturating_sub(EFFECT_ROWS);
        effects.rows.truncate(EFFECT_ROWS);
        println!("where warmup mattered (steps to target, median over seeds):");
        print!("{}", terminal_table(&effects));
        if more > 0 {
            println!("… and {more} more in report.html");
        }
    }
    Ok(a)
}

/// Writes `report.html` from the analysis, the records and the representative runs' rows
/// (read from their folders, first seed).
fn write_report(
    out: &Path,
    a: &WarmupAnalysis,
    records: &[CellRecord],
    seed: u64,
) -> Result<PathBuf> {
    let mut runs = Vec::new();
    for rep in &a.representatives {
        for key in [rep.with, rep.without] {
            let cell = Cell {
                multiple: key.multiple,
                warmup_steps: key.warmup_steps,
                shape: key.shape,
                momentum: key.momentum,
                seed,
            };
            let dir = out.join("runs").join(cell.dir_name());
            runs.push(RunCurves {
                label: key.label(),
                momentum: key.momentum,
                rows: read_rows(&dir)?,
            });
        }
    }
    let r = &a.reference;
    let intro = format!(
        "Peak rates in multiples of {} = {:.4e} (λ_max(θ₀) = {:.4e}); target loss {:.4e}. \
         Every run trains its whole budget; INFEASIBLE = diverged, COMPLETE = reached the \
         target and ended at or below it, INCOMPLETE = stable otherwise.",
        r.describe(),
        r.unit_lr,
        r.lambda_max,
        a.target
    );
    let page = html_page(
        "batchlab warmup",
        &intro,
        &warmup::report_sections(a, records, &runs),
    );
    let path = out.join("report.html");
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs `batchlab report DIR` on a warmup study: analyses its records again and renders
/// `report.html`.
pub fn report(dir: &Path) -> Result<()> {
    let read = |name: &str| -> Result<serde_json::Value> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let study = read("study.json")?;
    let records: Vec<CellRecord> =
        serde_json::from_value(read("cells.json")?).context("cells.json: records")?;
    let reference: Reference =
        serde_json::from_value(study["reference"].clone()).context("study.json: reference")?;
    let grid: Grid = serde_json::from_value(study["grid"].clone()).context("study.json: grid")?;
    let target = study["target_loss"]
        .as_f64()
        .context("study.json: target_loss is not a number")?;
    let a = analyse_and_print(dir, &records, reference, target)?;
    let seed = grid.seeds.first().copied().unwrap_or(0);
    let path = write_report(dir, &a, &records, seed)?;
    println!(
        "report: {} (the study: {})",
        path.display(),
        crate::output::folder_size(dir)
    );
    Ok(())
}
