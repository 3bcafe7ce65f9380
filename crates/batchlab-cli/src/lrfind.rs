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
use batchlab_lab::lrfind::study::{
    self, CsvRow, LrFindDoc, SeedResult, Settings, SharpnessAt, seed_table, summary_lines,
};
use batchlab_lab::lrfind::{self, LossSource, RampConfig, Rule};
use batchlab_lab::report;
use clap::Args;

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
    // What `batchlab report` reads first: which experiment wrote the folder.
    crate::output::write_atomic(
        &out.join("study.json"),
        &(serde_json::json!({ "experiment": crate::output::Experiment::LrFind }).to_string()
            + "\n"),
    )?;
    print_summary(&doc);
    // The page is drawn from the files just written, as `report` draws it again later.
    report(&out)
}

fn print_summary(doc: &LrFindDoc) {
    let lines = summary_lines(doc);
    println!("{}", lines[0]);
    print!("{}", report::terminal_table(&seed_table(doc)));
    for l in &lines[1..] {
        println!("{l}");
    }
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
    let path = dir.join("report.html");
    std::fs::write(&path, study::page(&doc, &rows))
        .with_context(|| format!("writing {}", path.display()))?;
    let page = path;
    println!(
        "report: {} (the study: {})",
        page.display(),
        crate::output::folder_size(dir)
    );
    Ok(())
}
