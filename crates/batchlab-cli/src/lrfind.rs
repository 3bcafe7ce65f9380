//! `batchlab lr-find`: the learning-rate finder. The rate rises exponentially every step; `α*`
//! is the largest rate before the loss blows up, and `2/α*` (for SGD) estimates the sharpness
//! `λ_max`, printed beside the Lanczos `λ_max` (and `λ_min`) at `θ₀`. The rule and its lag are in
//! `batchlab_lab::lrfind`.
//!
//! ```text
//!   OUT/seed{s}/      the ramp run of sampler seed s: config.toml, metrics.*, summary.json
//!   OUT/lr_find.csv   seed, step, lr, loss, smoothed_loss: the loss after the step at lr
//!   OUT/lr_find.json  α*, the suggested rate, the λ_max estimates, per-seed results, settings
//!   OUT/report.html   loss against the rate, α*, the edge from the Lanczos λ_max, suggestion
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use batchlab_core::Scratch;
use batchlab_core::train::{RunSummary, Status, StepMetrics, TrainConfig};
use batchlab_lab::lrfind::{self, Cause, LossSource, RampConfig, Rule};
use batchlab_lab::report::{self, Section, Table};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::exec::{ExecArgs, Executor};
use crate::train::TrainArgs;

/// Flags of `batchlab lr-find`.
#[derive(Args, Debug)]
#[command(after_long_help = LR_FIND_HELP)]
#[command(mut_arg("out", |a| a.help("Output folder: lr_find.csv, lr_find.json, report.html and each ramp's metrics (seed{s}/). Default: runs/lr-find-{task}")))]
pub struct LrFindArgs {
    /// The run (task, optimizer, batch): every train flag applies, but the ramp replaces
    /// --lr, --lr-scaling, --steps, --target-loss and the whole schedule.
    #[command(flatten)]
    train: TrainArgs,
    /// First rate of the ramp, η_lo.
    #[arg(long, default_value_t = 1e-3)]
    lr_min: f64,
    /// Last rate of the ramp, η_hi.
    #[arg(long, default_value_t = 10.0)]
    lr_max: f64,
    /// Steps of the ramp, T: step t runs at η_lo·(η_hi/η_lo)^{t/(T−1)}.
    #[arg(long, default_value_t = 1000)]
    ramp_steps: u64,
    /// Number of seeds: one ramp per sampler seed, --seed, --seed + 1, …; α* is their median.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    #[command(flatten)]
    exec: ExecArgs,
}

const LR_FIND_HELP: &str = "\
The default: the noisy quadratic model (d = 100, h_i = c_i = 1/i, so λ_max = 1), SGD at
B = 256, 1000 steps from 1e-3 to 10; a few seconds. Expect 2/α* to read λ_max within about 15%
(on a quadratic the ramp overshoots the edge 2/λ_max by a few steps before the loss has grown
4-fold: about 7% at this ramp; the lag printed is its closed form). On networks the sharpness
changes during the ramp: past 2/λ_max(θ₀) it typically falls to track 2/η (edge of stability)
until the loss blows up, so 2/α* reads the sharpness near α*, not at θ₀; --set
sharpness_every=25 measures it along the ramp and prints the last value before α*.

Rule: the loss after each step (the held-out loss where every step is evaluated, the default
for tasks with a closed-form population loss: nqm, plateau, linreg on a stream; else the
training loss), smoothed by a running median over 1% of the ramp plus 4(1/(1 − μ) − 1) steps
(μ: the momentum, β₁ for Adam); blow-up when it exceeds 4× its smallest value at rates ≥ half
the current one (or is not finite, or the run stops on its divergence bound); α* is the rate
of the step before. Suggested rate: α*/10.

Outputs (in --out, default runs/lr-find-{task}):
  lr_find.csv    seed, step, lr, loss, smoothed_loss
  lr_find.json   α*, suggestion, 2/α*, λ_max and λ_min at θ₀ (Lanczos), per-seed results, settings
  report.html    loss vs rate (log-log) with α*, the Lanczos λ_max's edge and the suggestion
  seed{s}/       each ramp's config.toml, metrics.csv, summary.json

Examples:
  batchlab lr-find
  batchlab lr-find --seeds 3 --ramp-steps 2000
  batchlab lr-find --task linreg
  batchlab lr-find --task mlp --lr-min 1e-3 --lr-max 30 --ramp-steps 500
  batchlab lr-find --optimizer momentum --set optimizer.momentum=0.9   # prints 2(1+μ)/α* too";

/// The command's own defaults, under the config file and the flags: the noisy quadratic of
/// d = 100 (its kind named, so that --task replaces the table) at a batch where the loss is
/// smooth, evaluated only at the end (tasks with a closed-form loss are evaluated every step,
/// see `run`).
const BASE: &[&str] = &[
    "task.kind=\"nqm\"",
    "task.dim=100",
    "batch=256",
    "eval_every=0",
];

/// One seed's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeedResult {
    seed: u64,
    alpha_star: Option<f64>,
    suggestion: Option<f64>,
    /// The step whose loss (after it) first counted as blown up.
    blowup_step: Option<u64>,
    cause: Option<Cause>,
    /// The rate of the smallest smoothed loss before the blow-up.
    min_loss_lr: Option<f64>,
    /// The last sharpness measured during the ramp (`sharpness_every > 0`) at or before the
    /// step of `α*`.
    sharpness_near_alpha: Option<SharpnessAt>,
    status: Status,
    message: String,
}

/// A sharpness measured during the ramp.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SharpnessAt {
    step: u64,
    lr: f64,
    lambda_max: f64,
}

/// `lr_find.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LrFindDoc {
    task: String,
    optimizer: String,
    /// Median of the seeds' `α*` (log space).
    alpha_star: Option<f64>,
    suggestion: Option<f64>,
    two_over_alpha_star: Option<f64>,
    /// The optimizer's stability edge solved for `λ_max` (`2/α*` for SGD).
    edge_formula: String,
    edge_lambda_max: Option<f64>,
    /// `λ_max` at `θ₀`, the largest algebraic Hessian eigenvalue, by the Lanczos method (the
    /// key keeps its name from when power iteration measured it).
    lambda_max_power: Option<f64>,
    /// `λ_min` at `θ₀`, the most negative Hessian eigenvalue, by the same Lanczos run.
    #[serde(default)]
    lambda_min: Option<f64>,
    /// The rate at which the optimizer's edge lies for `lambda_max_power`.
    edge_rate_power: Option<f64>,
    /// `edge_lambda_max / lambda_max_power`.
    ratio: Option<f64>,
    /// `α*·λ/2` expected on a quadratic from the ramp's lag (closed form for GD, `δ = ½`).
    quadratic_lag: f64,
    loss_source: LossSource,
    seeds: Vec<SeedResult>,
    settings: Settings,
    /// The first seed's run configuration.
    config: TrainConfig,
}

/// The finder's settings, as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settings {
    lr_min: f64,
    lr_max: f64,
    ramp_steps: u64,
    /// The factor between consecutive rates.
    ratio: f64,
    /// The blow-up rule: `k`, `span`, the median's half width.
    factor: f64,
    span: f64,
    half_width: usize,
    seeds: Vec<u64>,
}

/// A row of `lr_find.csv`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CsvRow {
    seed: u64,
    step: u64,
    lr: f64,
    loss: f64,
    smoothed_loss: f64,
}

/// Runs one ramp on `exec` (this process or the cluster's workers) and writes its folder
/// (`dir`); returns its summary and rows.
fn run_ramp(
    exec: &Executor,
    cfg: &TrainConfig,
    dir: &Path,
) -> Result<(RunSummary, Vec<StepMetrics>)> {
    let rows = std::cell::RefCell::new(Vec::new());
    let done = exec.run(cfg, dir, false, crate::output::Rows::Every, &|row| {
        rows.borrow_mut().push(row.clone())
    })?;
    Ok((done.summary, rows.into_inner()))
}

/// A number for the terminal and the report: 4 decimals in [0.01, 10⁴), else scientific.
fn num(x: f64) -> String {
    if (0.01..1e4).contains(&x.abs()) {
        format!("{x:.4}")
    } else {
        format!("{x:.4e}")
    }
}

fn opt_num(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_string(), num)
}

/// Runs `batchlab lr-find`.
pub fn run(args: LrFindArgs) -> Result<()> {
    let ramp = RampConfig {
        lr_min: args.lr_min,
        lr_max: args.lr_max,
        steps: args.ramp_steps,
    }
    .build()
    .context("invalid ramp (--lr-min, --lr-max, --ramp-steps)")?;
    if args.seeds == 0 {
        bail!("--seeds 0: expected at least 1 seed");
    }
    let mut cfg = args.train.load(BASE)?;
    ramp.configure(&mut cfg);
    let plan = cfg.build().context("invalid config")?;
    if plan.task.closed_form().is_some() {
        // Such tasks evaluate cheaply and without minibatch noise (nqm, plateau: the exact
        // population loss, whereas nqm's training loss can even be negative): read the held-out
        // loss after every step.
        cfg.eval_every = 1;
    }
    if args.train.print_config_requested() {
        return crate::train::print_config(&cfg);
    }
    let source = if cfg.eval_every == 1 {
        LossSource::Eval
    } else {
        LossSource::Train
    };
    let task = plan.task.name();
    let out = args
        .train
        .out_dir()
        .cloned()
        .unwrap_or_else(|| PathBuf::from(format!("runs/lr-find-{task}")));
    args.exec.check_workers(
        cfg.batch / plan.micro,
        &format!("batch = {}, micro = {}", cfg.batch, plan.micro),
    )?;
    let _lock = crate::output::FolderLock::acquire(&out, "batchlab lr-find")?;
    crate::exec::stop_between_runs(&out);

    let ends = plan.replica().spectrum_ends(&mut Scratch::new());
    let lambda_power = ends.top.is_finite().then_some(ends.top);
    let lambda_min = ends.bottom.is_finite().then_some(ends.bottom);
    let rule = Rule::for_ramp(
        ramp.config().steps,
        lrfind::optimizer_memory(&cfg.optimizer),
    );
    let seeds: Vec<u64> = (0..args.seeds).map(|i| cfg.seed + i).collect();
    tracing::info!(
        task,
        batch = cfg.batch,
        lr_min = args.lr_min,
        lr_max = args.lr_max,
        steps = args.ramp_steps,
        seeds = seeds.len(),
        out = %out.display(),
        "lr-find"
    );

    let exec = Executor::start(&args.exec)?;
    let mut ramps = Vec::new();
    for &seed in &seeds {
        let mut c = cfg.clone();
        c.seed = seed;
        match run_ramp(&exec, &c, &out.join(format!("seed{seed}"))) {
            Ok(r) => ramps.push((seed, r)),
            Err(e) => {
                exec.close(Some(&e));
                return Err(e);
            }
        }
    }
    exec.close(None);
    let mut results = Vec::new();
    let mut csv_rows = Vec::new();
    for (seed, (summary, rows)) in ramps {
        let points = lrfind::points(&rows, source, &summary);
        let finding = lrfind::find(&points, summary.status == Status::Infeasible, &rule)
            .with_context(|| format!("reading the ramp of seed {seed}"))?;
        csv_rows.extend(points.iter().zip(&finding.smoothed).map(|(p, &s)| CsvRow {
            seed,
            step: p.step,
            lr: p.lr,
            loss: p.loss,
            smoothed_loss: s,
        }));
        let alpha_step = finding
            .blowup
            .and_then(|b| b.index.checked_sub(1))
            .map(|i| points[i].step);
        let sharpness_near_alpha = alpha_step.and_then(|s| {
            rows.iter().rev().filter(|r| r.step <= s).find_map(|r| {
                r.sharpness.map(|l| SharpnessAt {
                    step: r.step,
                    lr: r.lr,
                    lambda_max: l,
                })
            })
        });
        results.push(SeedResult {
            seed,
            sharpness_near_alpha,
            alpha_star: finding.alpha_star,
            suggestion: finding.suggestion,
            blowup_step: finding.blowup.map(|b| points[b.index].step),
            cause: finding.blowup.map(|b| b.cause),
            min_loss_lr: finding.min_index.map(|i| points[i].lr),
            status: summary.status,
            message: summary.message,
        });
    }

    let alphas: Vec<f64> = results.iter().filter_map(|r| r.alpha_star).collect();
    let alpha_star = lrfind::median_rate(&alphas);
    let (edge_formula, _) = lrfind::edge_sharpness(1.0, &cfg.optimizer); // its name
    let edge_lambda = alpha_star.map(|a| lrfind::edge_sharpness(a, &cfg.optimizer).1);
    let doc = LrFindDoc {
        task: task.to_string(),
        optimizer: cfg.optimizer.kind.name().to_string(),
        alpha_star,
        suggestion: alpha_star.map(|a| a / lrfind::SUGGESTION_DIVISOR),
        two_over_alpha_star: alpha_star.map(|a| 2.0 / a),
        edge_formula: edge_formula.to_string(),
        edge_lambda_max: edge_lambda,
        lambda_max_power: lambda_power,
        lambda_min,
        // The optimizer's own edge for that sharpness (coupled weight decay included); Adam's
        // depends on its preconditioner: plain GD's 2/λ as a reference.
        edge_rate_power: lambda_power.map(|l| {
            cfg.optimizer
                .build(0)
                .ok()
                .and_then(|o| o.stable_lr(l))
                .unwrap_or(2.0 / l)
        }),
        ratio: edge_lambda.zip(lambda_power).map(|(e, p)| e / p),
        quadratic_lag: lrfind::quadratic_lag(ramp.ratio(), rule.factor(), 0.5),
        loss_source: source,
        seeds: results,
        settings: Settings {
            lr_min: args.lr_min,
            lr_max: args.lr_max,
            ramp_steps: args.ramp_steps,
            ratio: ramp.ratio(),
            factor: rule.factor(),
            span: rule.span(),
            half_width: rule.half_width(),
            seeds,
        },
        config: cfg,
    };

    let mut w = csv::Writer::from_path(out.join("lr_find.csv"))
        .with_context(|| format!("creating {}/lr_find.csv", out.display()))?;
    for r in &csv_rows {
        w.serialize(r)?;
    }
    w.flush()?;
    std::fs::write(
        out.join("lr_find.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )
    .with_context(|| format!("writing {}/lr_find.json", out.display()))?;
    print_summary(&doc);
    // The page is drawn from the files just written, as `report` draws it again later.
    report(&out)
}

/// The per-seed table.
fn seed_table(doc: &LrFindDoc) -> Table {
    Table {
        header: [
            "seed",
            "α*",
            "2/α*",
            "blow-up step",
            "cause",
            "min-loss rate",
            "run",
        ]
        .map(String::from)
        .to_vec(),
        rows: doc
            .seeds
            .iter()
            .map(|r| {
                vec![
                    r.seed.to_string(),
                    opt_num(r.alpha_star),
                    opt_num(r.alpha_star.map(|a| 2.0 / a)),
                    r.blowup_step.map_or_else(|| "—".into(), |s| s.to_string()),
                    r.cause
                        .map_or("none", |c| match c {
                            Cause::Rise => "4× rise",
                            Cause::NonFinite => "non-finite",
                            Cause::RunDiverged => "run's bound",
                        })
                        .to_string(),
                    opt_num(r.min_loss_lr),
                    serde_json::to_value(r.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                ]
            })
            .collect(),
    }
}

/// What the finder found, in a few lines (the terminal and the report's text).
fn summary_lines(doc: &LrFindDoc) -> Vec<String> {
    let s = &doc.settings;
    let mut lines = vec![format!(
        "{} with {}, B = {}: {} steps from {} to {} (×{:.5} per step), {} seed{}, {} loss",
        doc.task,
        doc.optimizer,
        doc.config.batch,
        s.ramp_steps,
        num(s.lr_min),
        num(s.lr_max),
        s.ratio,
        s.seeds.len(),
        if s.seeds.len() == 1 { "" } else { "s" },
        match doc.loss_source {
            LossSource::Eval => "held-out",
            LossSource::Train => "training",
        }
    )];
    let Some(alpha) = doc.alpha_star else {
        let blew_at_once = doc
            .seeds
            .iter()
            .any(|r| r.cause.is_some() && r.alpha_star.is_none());
        lines.push(if blew_at_once {
            format!(
                "α*: none, the loss blew up at the first step: lower --lr-min (now {})",
                num(s.lr_min)
            )
        } else {
            format!(
                "α*: none, the loss did not blow up below --lr-max {}: raise it",
                num(s.lr_max)
            )
        });
        if let Some(p) = doc.lambda_max_power {
            lines.push(format!(
                "Lanczos at θ₀: λ_max = {}, λ_min = {}",
                num(p),
                opt_num(doc.lambda_min)
            ));
        }
        return lines;
    };
    lines.push(format!(
        "α* = {} (median over {} seed{}), suggested rate α*/10 = {}",
        num(alpha),
        doc.seeds.iter().filter(|r| r.alpha_star.is_some()).count(),
        if s.seeds.len() == 1 { "" } else { "s" },
        opt_num(doc.suggestion)
    ));
    let mut est = format!("λ_max estimates: 2/α* = {}", num(2.0 / alpha));
    if doc.edge_formula != "2/α*" {
        est += &format!(", {} = {}", doc.edge_formula, opt_num(doc.edge_lambda_max));
    }
    est += &format!(
        "; Lanczos at θ₀: λ_max = {} (λ_min = {})",
        opt_num(doc.lambda_max_power),
        opt_num(doc.lambda_min)
    );
    if let Some(r) = doc.ratio {
        est += &format!("; ratio {} / Lanczos = {r:.3}", doc.edge_formula);
    }
    lines.push(est);
    if let Some(first) = doc.seeds.iter().find_map(|r| r.sharpness_near_alpha) {
        lines.push(format!(
            "Lanczos during the ramp (sharpness_every), seed {}: λ_max = {} at step {} \
             (η = {}, 2/η = {}), the last measurement up to α*",
            doc.seeds
                .iter()
                .find(|r| r.sharpness_near_alpha.is_some())
                .map_or(0, |r| r.seed),
            num(first.lambda_max),
            first.step,
            num(first.lr),
            num(2.0 / first.lr)
        ));
    }
    if doc.optimizer == "sgd" {
        lines.push(format!(
            "(on a quadratic this ramp overshoots the edge by ×{:.3} before the loss has grown \
             {}-fold: closed form for GD)",
            doc.quadratic_lag, s.factor
        ));
    }
    lines
}

fn print_summary(doc: &LrFindDoc) {
    let lines = summary_lines(doc);
    println!("{}", lines[0]);
    print!("{}", report::terminal_table(&seed_table(doc)));
    for l in &lines[1..] {
        println!("{l}");
    }
}

/// Writes `report.html` from the document and the curves.
fn render(dir: &Path, doc: &LrFindDoc, rows: &[CsvRow]) -> Result<PathBuf> {
    let mut curves = Vec::new();
    for &seed in &doc.settings.seeds {
        let of = |f: fn(&CsvRow) -> f64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.seed == seed)
                .map(|r| (r.lr, f(r)))
                .collect()
        };
        curves.push((format!("loss, seed {seed}"), of(|r| r.loss)));
        curves.push((format!("smoothed, seed {seed}"), of(|r| r.smoothed_loss)));
    }
    let mut marks = Vec::new();
    if let Some(a) = doc.alpha_star {
        marks.push((a, format!("α* = {}", num(a))));
    }
    if let Some(rate) = doc.edge_rate_power {
        // λ_p: the Lanczos λ_max at θ₀ (legend entries are short).
        // The edge's rate for λ_p: with coupled weight decay the optimizer sees λ_p + wd.
        let formula = match doc.edge_formula.strip_suffix(" − wd") {
            Some(f) => f.replace("α*", "(λ_p + wd)"),
            None => doc.edge_formula.replace("α*", "λ_p"),
        };
        marks.push((rate, format!("{formula} = {}", num(rate))));
    }
    if let Some(s) = doc.suggestion {
        marks.push((s, format!("suggested α*/10 = {}", num(s))));
    }
    let plot = report::loss_vs_rate(&curves, &marks);
    let text = summary_lines(doc).join("\n\n")
        + "\n\nThe loss after each step is plotted against that step's rate; λ_p is the Lanczos \
           λ_max at θ₀, and the line it marks is where the edge would lie if the \
           sharpness stayed λ_p (on a quadratic α* lies one ramp lag above it). Blow-up: the \
           running median of the loss exceeds 4× its smallest value at rates at least half the \
           current one (or a loss is not finite, or the run stopped on its own divergence \
           bound); α* is the rate of the step before.";
    let sections = vec![
        Section {
            title: "Loss against the learning rate".into(),
            text,
            figures: vec![report::svg(&plot, 760, 460)],
            table: None,
        },
        Section {
            title: "Per seed".into(),
            text: String::new(),
            figures: vec![],
            table: Some(seed_table(doc)),
        },
    ];
    let page = report::html_page(
        "batchlab lr-find",
        "Learning-rate finder: the rate rises exponentially every step; α* is the largest rate \
         before the loss blows up, and the stability edge of the optimizer (2/λ_max for SGD) \
         turns it into an estimate of the sharpness.",
        &sections,
    );
    let path = dir.join("report.html");
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Renders `report.html` of an lr-find folder from its `lr_find.json` and `lr_find.csv` (after
/// every run, and again on demand).
pub fn report(dir: &Path) -> Result<()> {
    let json = dir.join("lr_find.json");
    let doc: LrFindDoc = serde_json::from_str(
        &std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?,
    )
    .with_context(|| format!("parsing {}", json.display()))?;
    let csv_path = dir.join("lr_find.csv");
    let rows = csv::Reader::from_path(&csv_path)
        .with_context(|| format!("reading {}", csv_path.display()))?
        .deserialize()
        .collect::<Result<Vec<CsvRow>, _>>()
        .with_context(|| format!("parsing {}", csv_path.display()))?;
    let page = render(dir, &doc, &rows)?;
    println!(
        "report: {} (the study: {})",
        page.display(),
        crate::output::folder_size(dir)
    );
    Ok(())
}
