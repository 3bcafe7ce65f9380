//! `batchlab sweep`: steps and samples to a target loss over a batch-size sweep, the critical
//! batch size, and the noise scale near the target.
//!
//! The study is a folder, one sub-folder per batch size and one per trial inside it (as Shallue
//! et al. 2018 lay their data out):
//!
//! ```text
//!   OUT/study.json                  the sweep's settings
//!   OUT/B00064/lr2.500000e-1-s0/    summary.json (the trial: its key and the seeds' mean)
//!       seed0/                      config.toml, metrics.csv, summary.json (the first seed)
//!   OUT/trials.csv, trials.json     every trial's record
//!   OUT/analysis.json, report.html  the fit, the noise scale, the plots
//! ```
//!
//! Only the first seed of a trial keeps a per-step table (the others count through the mean):
//! every step for the trials the study reports (held-out measurements, fixed-rate policies),
//! about [`SELECTION_ROWS`] for selection trials. The default sweep's folder is under 20 MB.
//!
//! A trial whose folder already holds a summary of the same configuration is not run again, so
//! an interrupted sweep resumes where it stopped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use batchlab_core::train::{RunSummary, TrainConfig, default_micro};
use batchlab_lab::study::TrialRecord;
use batchlab_lab::sweep::{LrPolicy, RateSearch, TrialPlan, powers_of_two};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::exec::{ExecArgs, Executor};
use crate::output::{Experiment, FolderLock, Rows, cached_summary};

/// Per-step rows kept by a selection trial (plus its last): enough to plot it, a fraction of
/// its steps (the default sweep wrote 1.7 GB keeping them all).
const SELECTION_ROWS: u64 = 100;
use crate::train::TrainArgs;

/// Flags of `batchlab sweep`.
#[derive(Args, Debug)]
#[command(after_long_help = SWEEP_HELP)]
#[command(mut_arg("out", |a| a.help("The study's folder: study.json, one folder per batch size and trial, trials.csv, trials.json, analysis.json, report.html. Default: runs/sweep-{task}-{lr-policy}")))]
pub struct SweepArgs {
    /// The base run (task, optimizer, schedule, step budget): every train flag applies.
    #[command(flatten)]
    train: TrainArgs,
    /// Batch sizes, comma-separated (default: powers of two from --min-batch to --max-batch).
    #[arg(long, value_delimiter = ',')]
    batches: Vec<u64>,
    /// Smallest batch size of the power-of-two range.
    #[arg(long, default_value_t = 1)]
    min_batch: u64,
    /// Largest batch size of the power-of-two range.
    #[arg(long, default_value_t = 1024)]
    max_batch: u64,
    /// Learning rate per batch size: tuned (best of --lr-grid), linear, sqrt or none (from
    /// --lr at --base-batch).
    #[arg(long, default_value = "tuned")]
    lr_policy: String,
    /// Rate grid of the tuned policy: LO:HI:N, N rates log-spaced from LO to HI.
    #[arg(long, default_value = "0.001:1.99:24")]
    lr_grid: String,
    /// Tuned search: stop after this many rates in a row lost to the best.
    #[arg(long, default_value_t = 3)]
    patience: usize,
    /// Tuned search: after the grid, this many rounds of the geometric midpoints between the
    /// best rate and its neighbours, each halving the spacing (2 rounds: a quarter of the
    /// grid's spacing in ln η; a coarse grid costs large batches a few percent of steps and
    /// biases B_crit low).
    #[arg(long, default_value_t = 2)]
    refine: u32,
    /// Number of seeds (replicates) per batch size: seeds 0..N. With the tuned policy these
    /// choose the rate (4: with 2, rates whose loss only grazes the target won by chance at
    /// some batch sizes of the default study), and --held-out-seeds measure it.
    #[arg(long, default_value_t = 4)]
    seeds: u64,
    /// Target as a fraction of the initial loss (ignored when --target-loss is given).
    #[arg(long, default_value_t = 0.01)]
    target_fraction: f64,
    /// Steps to target are taken on the mean eval loss over the last fraction of the run (see
    /// target_window in --print-config); 0 = the latest evaluation alone.
    #[arg(long, default_value_t = 0.05)]
    target_window: f64,
    /// Tuned search with held-out seeds: the window of the selection trials' target check,
    /// as a fraction of the run (a wider window than --target-window ranks rates on a
    /// smoother curve: a rate whose loss only grazes the target wins less often by chance;
    /// the lag it adds is alike for every rate and does not enter the reported, held-out
    /// steps).
    #[arg(long, default_value_t = 0.25)]
    selection_window: f64,
    /// What reaches the target: `mean` (the loss averaged over the seeds, run in lock step: the
    /// expected loss that closed forms describe) or `each` (every seed's own run, as Shallue et
    /// al. 2018 measure).
    #[arg(long, default_value = "mean")]
    target_on: String,
    /// Samples of the noise probe at the end of every trial that reaches the target (64
    /// microbatches × 16 batches; 0 = no probe, B_simple from the training-time EMA, which
    /// lags and reads low on short runs: a warning says so).
    #[arg(long, default_value_t = 65536)]
    probe_samples: u64,
    /// Tuned policy: measure each batch size's chosen rate again on this many fresh seeds
    /// (N..N+M for --seeds N; with --target-on each, seed s again on seed s+N), evaluated
    /// every step, and report those steps: the crossing of their mean loss, and of each
    /// pair's for the interval (16: 8 pairs, the design whose coverage was measured). The best
    /// of noisy trials is biased low (winner's curse), and a first passage of a mean over few
    /// seeds is early by chance (docs/science.md#selection-bias). 0: report the selection's
    /// best, as studies before this option did (no interval).
    #[arg(long, default_value_t = 16)]
    held_out_seeds: u64,
    /// Parallel trials in this process (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    #[command(flatten)]
    exec: ExecArgs,
}

const SWEEP_HELP: &str = "\
The default study: noisy quadratic model (d = 100, h_i = c_i = 1/i), SGD with a tuned constant
rate chosen on the mean loss of 4 seeds and measured again on 16 held-out seeds, batch sizes
1..1024, target 1% of the initial loss.

Examples:
  batchlab sweep
  batchlab sweep --set task.dim=1000 --max-batch 4096 --seeds 3
  batchlab sweep --task mlp --batches 32,64,128,256,512 --target-loss 0.5 --steps 3000
  batchlab sweep --lr-policy linear --lr 0.05 --base-batch 32";

/// The default study's base overrides (flags and --config win).
/// The task kind comes first, so that `--task mlp` (or a config file naming another kind) starts
/// its table afresh instead of inheriting `dim`.
const BASE: &[&str] = &["task.kind=\"nqm\"", "task.dim=100", "steps=30000"];

/// Everything a sweep needs, validated.
struct Sweep {
    base: TrainConfig,
    target: f64,
    batches: Vec<u64>,
    seeds: Vec<u64>,
    policy: LrPolicy,
    grid: Vec<f64>,
    patience: usize,
    refine: u32,
    out: PathBuf,
    /// The task's evaluation is its closed-form population loss.
    exact_eval: bool,
    /// Fraction of the run whose mean eval loss is checked against the target.
    target_window: f64,
    /// The same for the selection trials of a tuned search with held-out seeds.
    selection_window: f64,
    /// The target is checked on the mean over the seeds' runs.
    seed_mean: bool,
    /// Noise-probe samples per finished trial (0 = none).
    probe_samples: u64,
    /// Seeds of the held-out measurements (empty: none).
    held_out_seeds: Vec<u64>,
}

fn parse_grid(s: &str) -> Result<Vec<f64>> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad =
        || anyhow!("--lr-grid {s}: expected LO:HI:N with 0 < LO ≤ HI and N ≥ 1, e.g. 0.001:2:24");
    let [lo, hi, n] = parts[..] else {
        return Err(bad());
    };
    let (lo, hi, n): (f64, f64, usize) = (
        lo.parse().map_err(|_| bad())?,
        hi.parse().map_err(|_| bad())?,
        n.parse().map_err(|_| bad())?,
    );
    if !(lo > 0.0 && hi >= lo && n >= 1 && hi.is_finite()) {
        return Err(bad());
    }
    Ok(batchlab_core::theory::log_grid(lo, hi, n))
}

impl SweepArgs {
    fn build(&self) -> Result<Option<Sweep>> {
        let batches = if self.batches.is_empty() {
            powers_of_two(self.min_batch, self.max_batch)
        } else {
            self.batches.clone()
        };
        if batches.is_empty() || batches.contains(&0) {
            bail!("batch sizes {batches:?}: expected at least one, all ≥ 1");
        }
        if let Some(b) = self.train.batch_flag() {
            bail!(
                "--batch {b}: a sweep takes its batch sizes from --batches (or --min-batch and \
                 --max-batch); --base-batch names the batch size --lr was chosen at"
            );
        }
        // The base configuration is built without --micro, which must instead divide every
        // batch size of the sweep (not the base's own batch, which no trial uses).
        let mut cfg = self.train.load(BASE)?;
        let micro = cfg.micro.take();
        if let Some(m) = micro {
            let bad: Vec<u64> = batches
                .iter()
                .copied()
                .filter(|b| m == 0 || b % m != 0)
                .collect();
            if !bad.is_empty() {
                bail!(
                    "--micro {m}: expected a divisor of every batch size of the sweep; it does \
                     not divide {bad:?} (give batch sizes that are multiples of {m}, or leave \
                     --micro out: each batch size then splits into up to 16 microbatches)"
                );
            }
        }
        if self.train.print_config_requested() {
            cfg.micro = micro;
            crate::train::print_config(&cfg)?;
            print!("{}", self.settings_comment(&batches));
            return Ok(None);
        }
        let plan = cfg.build().context("invalid config")?;
        cfg.micro = micro;
        let policy: LrPolicy = self
            .lr_policy
            .parse()
            .map_err(|e: String| anyhow!("--lr-policy: {e}"))?;
        if self.seeds == 0 {
            bail!("--seeds 0: expected at least 1 seed");
        }
        if !(0.0..=1.0).contains(&self.selection_window) {
            bail!(
                "--selection-window {}: expected a fraction of the run in [0, 1]",
                self.selection_window
            );
        }
        let target = match cfg.target_loss {
            Some(t) => t,
            None => {
                if !(self.target_fraction > 0.0 && self.target_fraction < 1.0) {
                    bail!(
                        "--target-fraction {}: expected a fraction in (0, 1)",
                        self.target_fraction
                    );
                }
                let init = plan
                    .task
                    .evaluate(&plan.task.init_params(), &mut batchlab_core::Scratch::new());
                self.target_fraction * init.loss
            }
        };
        let out = self.train_out().unwrap_or_else(|| {
            PathBuf::from(format!(
                "runs/sweep-{}-{}",
                plan.task.name(),
                self.lr_policy
            ))
        });
        let held_out = self.held_out_seeds > 0 && policy == LrPolicy::Tuned;
        Ok(Some(Sweep {
            base: cfg,
            target,
            batches,
            seeds: (0..self.seeds).collect(),
            held_out_seeds: if held_out {
                (self.seeds..self.seeds + self.held_out_seeds).collect()
            } else {
                Vec::new()
            },
            policy,
            grid: parse_grid(&self.lr_grid)?,
            patience: self.patience,
            refine: self.refine,
            out,
            exact_eval: plan.task.closed_form().is_some(),
            target_window: self.target_window,
            selection_window: self.selection_window,
            probe_samples: self.probe_samples,
            seed_mean: match self.target_on.as_str() {
                "mean" => true,
                "each" => false,
                other => bail!("--target-on {other}: expected mean or each"),
            },
        }))
    }

    /// The sweep's own settings (flags, not config fields) as TOML comments, for
    /// `--print-config`.
    fn settings_comment(&self, batches: &[u64]) -> String {
        format!(
            "\n# The sweep's own settings (flags of `batchlab sweep`, not config fields):\n\
             # batches = {batches:?}\n\
             # seeds = {}\n\
             # held_out_seeds = {}\n\
             # lr_policy = {:?}\n\
             # lr_grid = {:?}\n\
             # refine = {}\n\
             # patience = {}\n\
             # target_fraction = {}   (of the initial loss, unless target_loss is set)\n\
             # target_on = {:?}\n\
             # target_window = {}\n\
             # selection_window = {}\n\
             # probe_samples = {}\n",
            self.seeds,
            self.held_out_seeds,
            self.lr_policy,
            self.lr_grid,
            self.refine,
            self.patience,
            self.target_fraction,
            self.target_on,
            self.target_window,
            self.selection_window,
            self.probe_samples,
        )
    }

    fn train_out(&self) -> Option<PathBuf> {
        self.train.out_dir().cloned()
    }
}

impl Sweep {
    fn searches(&self) -> Vec<RateSearch> {
        let base_batch = self.base.base_batch.unwrap_or(self.base.batch);
        let mut v = Vec::new();
        // With the seed mean, one search per batch size covers every seed (keyed by the first).
        let seeds: &[u64] = if self.seed_mean {
            &self.seeds[..1]
        } else {
            &self.seeds
        };
        let n = self.seeds.len() as u64;
        for &b in &self.batches {
            for &seed in seeds {
                v.push(match self.policy {
                    LrPolicy::Tuned => {
                        let search =
                            RateSearch::tuned(b, seed, &self.grid, self.base.steps, self.patience)
                                .with_refinement(self.refine);
                        // Seed s is measured again on seed s + N (a group: on N..2N).
                        if self.held_out_seeds.is_empty() {
                            search
                        } else {
                            search.with_held_out(seed + n)
                        }
                    }
                    LrPolicy::Linear | LrPolicy::Sqrt | LrPolicy::None => {
                        let rule = match self.policy {
                            LrPolicy::Linear => batchlab_core::schedule::Scaling::Linear,
                            LrPolicy::Sqrt => batchlab_core::schedule::Scaling::Sqrt,
                            _ => batchlab_core::schedule::Scaling::None,
                        };
                        RateSearch::fixed(
                            b,
                            seed,
                            rule.apply(self.base.lr, base_batch, b),
                            self.base.steps,
                        )
                    }
                });
            }
        }
        v
    }

    /// The per-step rows a trial keeps: every step where the trial is a measurement the study
    /// reports (a held-out measurement, or the one rate of a fixed policy), else about
    /// [`SELECTION_ROWS`] (a selection trial, read for its summary only).
    fn rows(&self, t: &TrialPlan) -> Rows {
        if t.held_out || self.policy != LrPolicy::Tuned {
            Rows::Every
        } else {
            Rows::Thin {
                max: SELECTION_ROWS,
            }
        }
    }

    /// The microbatch of a trial of batch `b`: `--micro` (which divides every batch of the
    /// sweep), else the default split of `b`.
    fn micro_of(&self, b: u64) -> u64 {
        match self.base.micro {
            Some(m) if b.is_multiple_of(m) => m,
            _ => default_micro(b),
        }
    }

    /// The configuration of one trial.
    fn trial_config(&self, t: &TrialPlan) -> TrainConfig {
        let mut c = self.base.clone();
        c.batch = t.batch;
        c.micro = Some(self.micro_of(t.batch));
        c.lr = t.lr;
        c.lr_scaling = batchlab_core::schedule::Scaling::None;
        c.base_batch = None;
        c.seed = t.seed;
        // A held-out seed-mean measurement runs for its horizon (the plan's budget, doubled
        // when short); a single held-out run stops at the target, with the whole budget.
        c.steps = if t.held_out && !self.seed_mean {
            self.base.steps
        } else {
            t.budget
        };
        c.target_loss = Some(self.target);
        c.target_window = if self.held_out_seeds.is_empty() || t.held_out {
            self.target_window
        } else {
            self.selection_window
        };
        // A rate whose noise floor lies above the target cannot win: stop it when it stalls.
        c.stop_stalled = true;
        if self.exact_eval || t.held_out {
            // The population loss is exact and cheap: check the target every step. A held-out
            // measurement's steps are the reported ones: resolved to one step.
            c.eval_every = 1;
        }
        c
    }

    fn trial_dir(&self, t: &TrialPlan) -> PathBuf {
        self.out
            .join(format!("B{:05}", t.batch))
            .join(format!("lr{:.6e}-s{}", t.lr, t.seed))
    }

    /// Writes `report.html` of the study from its analysis and records, and says where.
    fn render_report(
        &self,
        analysis: &batchlab_lab::sweep::study::SweepAnalysis,
        records: &[TrialRecord],
    ) -> Result<()> {
        let report = crate::analysis::sweep_report(&self.out, analysis, records, |b, lr, seed| {
            self.trial_dir(&TrialPlan {
                batch: b,
                lr,
                seed,
                budget: 0,
                held_out: false,
            })
        })?;
        println!(
            "report: {} (the study: {})",
            report.display(),
            crate::output::folder_size(&self.out)
        );
        Ok(())
    }
}

fn record(t: &TrialPlan, s: &RunSummary) -> TrialRecord {
    record_n(t, s, 1)
}

fn record_n(t: &TrialPlan, s: &RunSummary, seeds: u64) -> TrialRecord {
    TrialRecord {
        batch: t.batch,
        lr: t.lr,
        seed: t.seed,
        seeds,
        status: s.status,
        steps: s.steps,
        samples: s.samples,
        b_simple: s.final_b_simple,
        b_simple_se: None,
        b_simple_ema: s.final_b_simple,
        b_simple_nested: None,
        b_simple_nested_se: None,
        b_simple_exact: s.final_b_simple_exact,
        b_noise_exact: s.final_b_noise_exact,
        final_loss: s.final_eval_loss.or(s.final_train_loss),
        held_out: t.held_out,
        selection_steps: None,
        crossing: None,
        group_crossings: Vec::new(),
    }
}

/// Measures `B_simple` at the final parameters of a trial that reached the target (written to
/// `probe.json`), and the exact value at the same parameters where the task has one.
fn probe(
    sweep: &Sweep,
    dir: &Path,
    cfg: &TrainConfig,
    params: &[f64],
    seed: u64,
    rec: &mut TrialRecord,
) -> Result<()> {
    if sweep.probe_samples == 0 || rec.status != batchlab_core::train::Status::Complete {
        return Ok(());
    }
    let plan = cfg.build().context("the probe's task")?;
    let task = plan.task.as_ref();
    let (reps, num_micro) = (16usize, 64usize);
    let micro = (sweep.probe_samples / (reps * num_micro) as u64).max(1);
    let p = batchlab_core::train::noise_probe(task, params, seed, micro, num_micro, reps);
    // The closed form, or on a finite training set one pass of per-sample gradients.
    let exact = batchlab_core::train::exact_noise(task, params);
    let doc = serde_json::json!({
        "probe": p,
        "b_simple_exact": exact.map(|e| e.b_simple),
        "exact": exact,
    });
    crate::output::write_atomic(
        &dir.join("probe.json"),
        &(serde_json::to_string_pretty(&doc)? + "\n"),
    )?;
    apply_probe(rec, &doc);
    Ok(())
}

/// Whether a finished trial `rec` is owed a probe (it reached the target and probing is on).
fn probe_due(sweep: &Sweep, rec: &TrialRecord) -> bool {
    sweep.probe_samples > 0 && rec.status == batchlab_core::train::Status::Complete
}

fn apply_probe(rec: &mut TrialRecord, doc: &serde_json::Value) {
    if let Some(b) = doc["probe"]["b_simple"].as_f64() {
        rec.b_simple = Some(b);
        rec.b_simple_se = doc["probe"]["b_simple_se"].as_f64();
        if let Some(e) = doc["b_simple_exact"].as_f64() {
            rec.b_simple_exact = Some(e);
        }
        rec.b_simple_nested = doc["probe"]["nested"]["b_simple"].as_f64();
        rec.b_simple_nested_se = doc["probe"]["nested"]["b_simple_se"].as_f64();
    }
}

/// A cached trial's probe applied to `rec`; false when the probe is due but missing (the
/// experiment stopped between the run and its probe): the trial is then run again.
fn cached_probe(sweep: &Sweep, dir: &Path, rec: &mut TrialRecord) -> bool {
    if !probe_due(sweep, rec) {
        return true;
    }
    match std::fs::read_to_string(dir.join("probe.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(doc) => {
            apply_probe(rec, &doc);
            true
        }
        None => false,
    }
}

/// Trains one trial (in this process or on the cluster), writing its folder.
fn run_trial(
    sweep: &Sweep,
    exec: &Executor,
    t: &TrialPlan,
    tick: &dyn Fn(&batchlab_core::train::StepMetrics),
) -> Result<(TrialRecord, bool)> {
    if sweep.seed_mean {
        return run_trial_mean(sweep, exec, t, tick);
    }
    let cfg = sweep.trial_config(t);
    let dir = sweep.trial_dir(t);
    if let Some(s) = cached_summary(&dir, &cfg) {
        let mut rec = record(t, &s);
        if cached_probe(sweep, &dir, &mut rec) {
            return Ok((rec, true));
        }
    }
    let want = sweep.probe_samples > 0;
    let done = exec
        .run(&cfg, &dir, want, sweep.rows(t), tick)
        .with_context(|| format!("trial B={} lr={}", t.batch, t.lr))?;
    let mut rec = record(t, &done.summary);
    if let Some(params) = done.params.first() {
        probe(sweep, &dir, &cfg, params, t.seed, &mut rec)?;
    }
    Ok((rec, false))
}

/// Trains every seed of a trial in lock step and checks the target on their mean eval loss
/// (over the same growing window as single runs): steps to target of the expected loss.
/// A held-out measurement instead trains its seeds for a horizon and takes the crossing of
/// their mean loss, and of each pair's ([`measure_held_out`]). Writes `seed{s}/` folders and
/// the trial's `summary.json`.
fn run_trial_mean(
    sweep: &Sweep,
    exec: &Executor,
    t: &TrialPlan,
    tick: &dyn Fn(&batchlab_core::train::StepMetrics),
) -> Result<(TrialRecord, bool)> {
    let dir = sweep.trial_dir(t);
    let mut cfg = sweep.trial_config(t);
    let seeds = if t.held_out {
        &sweep.held_out_seeds
    } else {
        &sweep.seeds
    };
    cfg.seed = seeds[0];
    let key = serde_json::json!({ "config": cfg, "seeds": seeds });
    if let Some((s, crossings)) = cached_json(&dir, &key) {
        let mut rec = record_n(t, &s, seeds.len() as u64);
        apply_crossings(&mut rec, crossings.as_ref());
        if cached_probe(sweep, &dir, &mut rec) {
            return Ok((rec, true));
        }
    }
    let want = sweep.probe_samples > 0;
    let (done, crossings) = if t.held_out {
        let (done, crossings) = measure_held_out(sweep, exec, &cfg, seeds, &dir, want, tick)
            .with_context(|| format!("held-out trial B={} lr={}", t.batch, t.lr))?;
        (done, Some(crossings))
    } else {
        let done = exec
            .run_group(&cfg, seeds, &dir, want, sweep.rows(t), tick)
            .with_context(|| format!("trial B={} lr={}", t.batch, t.lr))?;
        (done, None)
    };
    let summary = done.summary;
    let mut rec = record_n(t, &summary, seeds.len() as u64);
    apply_crossings(&mut rec, crossings.as_ref());
    // The probe measures at the first seed's final parameters.
    if let Some(params) = done.params.first() {
        let first = batchlab_core::group::SeedMean::member_config(&cfg, seeds[0]);
        probe(sweep, &dir, &first, params, cfg.seed, &mut rec)?;
    }
    // The trial's summary last: its presence says the trial, probe included, is done.
    let doc = serde_json::json!({ "key": key, "summary": summary, "crossings": crossings });
    crate::output::write_atomic(
        &dir.join("summary.json"),
        &(serde_json::to_string_pretty(&doc)? + "\n"),
    )?;
    Ok((rec, false))
}

/// A held-out measurement (docs/science.md#crossing): the seeds of `cfg` train in lock step
/// with no target for a horizon (the plan's budget), every step evaluated; the steps to the
/// target are the crossing of their mean loss (`fit::crossing_step`), and of each pair's mean
/// (the interval's replicates). A crossing missing, or in the last third of the horizon (the
/// mean may not have settled below the target), doubles the horizon, up to the run's
/// `--steps`, and the seeds train again (the same numbers: every run is a function of its
/// seed). The summary then says COMPLETE at the crossing's ceiling, or INCOMPLETE.
fn measure_held_out(
    sweep: &Sweep,
    exec: &Executor,
    cfg: &TrainConfig,
    seeds: &[u64],
    dir: &Path,
    want: bool,
    tick: &dyn Fn(&batchlab_core::train::StepMetrics),
) -> Result<(crate::exec::Finished, batchlab_lab::fit::SeedCrossings)> {
    let mut run = cfg.clone();
    run.target_loss = None;
    // A measurement interrupted at a longer horizon resumes there: every horizon before it
    // left the crossing unsettled (the runs are functions of their seeds), and its checkpoint
    // would be of another configuration to a shorter one's run.
    if let Some(saved) = crate::cluster::checkpoint_run(dir) {
        let mut h = run.clone();
        while h.steps < sweep.base.steps {
            h.steps = (2 * h.steps).min(sweep.base.steps);
            if batchlab_net::protocol::run_id(&h, seeds) == saved {
                run.steps = h.steps;
                break;
            }
        }
    }
    loop {
        // The seeds' curves are taken in memory (only the first seed's rows are written; a
        // resumed measurement has those before its checkpoint from beside it).
        let mut done = exec.run_group(&run, seeds, dir, want, Rows::Every, tick)?;
        let curves = done
            .eval_losses
            .take()
            .context("a held-out measurement resumed without its seeds' saved losses")?;
        let crossings = batchlab_lab::fit::seed_crossings(&curves, sweep.target);
        let settled = crossings
            .steps
            .is_some_and(|s| 3.0 * s <= 2.0 * run.steps as f64);
        if settled || run.steps >= sweep.base.steps {
            let summary = &mut done.summary;
            match crossings.steps {
                Some(s) => {
                    summary.status = batchlab_core::train::Status::Complete;
                    summary.steps = s.ceil() as u64;
                    summary.samples = summary.steps * cfg.batch;
                    summary.message = format!(
                        "the mean loss over {} held-out seeds crosses the target at step {s:.2} \
                         (argmax of the cumulative excess over {} steps)",
                        seeds.len(),
                        run.steps
                    );
                }
                None => {
                    summary.status = batchlab_core::train::Status::Incomplete;
                    summary.message = format!(
                        "the mean loss over {} held-out seeds did not settle below the target \
                         within {} steps",
                        seeds.len(),
                        run.steps
                    );
                }
            }
            return Ok((done, crossings));
        }
        run.steps = (2 * run.steps).min(sweep.base.steps);
        tracing::info!(
            batch = cfg.batch,
            lr = cfg.lr,
            horizon = run.steps,
            "held-out measurement: the crossing was not settled, longer horizon"
        );
    }
}

/// Copies a held-out measurement's crossings into its record.
fn apply_crossings(rec: &mut TrialRecord, crossings: Option<&batchlab_lab::fit::SeedCrossings>) {
    if let Some(c) = crossings {
        rec.crossing = c.steps;
        rec.group_crossings = c.groups.iter().map(|g| g.unwrap_or(f64::NAN)).collect();
    }
}

/// A finished seed-mean trial's summary (and a held-out measurement's crossings), if it ran
/// with exactly `key`.
fn cached_json(
    dir: &Path,
    key: &serde_json::Value,
) -> Option<(RunSummary, Option<batchlab_lab::fit::SeedCrossings>)> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).ok()?).ok()?;
    if &doc["key"] != key {
        return None;
    }
    let crossings = serde_json::from_value(doc["crossings"].clone()).ok();
    Some((
        serde_json::from_value(doc["summary"].clone()).ok()?,
        crossings,
    ))
}

/// Runs `batchlab sweep`.
pub fn run(args: SweepArgs) -> Result<()> {
    let Some(sweep) = args.build()? else {
        return Ok(());
    };
    let micros = sweep
        .batches
        .iter()
        .map(|&b| b / sweep.micro_of(b))
        .max()
        .unwrap_or(1);
    args.exec.check_workers(
        micros,
        &format!(
            "the largest batch, {}",
            sweep.batches.iter().max().unwrap_or(&1)
        ),
    )?;
    let _lock = FolderLock::acquire(&sweep.out, "batchlab sweep")?;
    crate::exec::stop_between_runs(&sweep.out);
    let settings = serde_json::json!({
        "experiment": Experiment::Sweep,
        "batches": sweep.batches, "seeds": sweep.seeds, "lr_policy": args.lr_policy,
        "lr_grid": sweep.grid, "patience": sweep.patience, "refine": sweep.refine,
        "target_loss": sweep.target,
        "target_on": args.target_on, "target_window": sweep.target_window,
        "selection_window": sweep.selection_window,
        "held_out_seeds": sweep.held_out_seeds,
        "base": sweep.base,
    });
    std::fs::write(
        sweep.out.join("study.json"),
        serde_json::to_string_pretty(&settings)? + "\n",
    )?;
    tracing::info!(
        task = sweep.base.task.name(),
        batches = ?sweep.batches,
        seeds = sweep.seeds.len(),
        target = sweep.target,
        out = %sweep.out.display(),
        "sweep"
    );
    if sweep.probe_samples == 0 {
        tracing::warn!(
            "--probe-samples 0: B_simple near the target is the training-time EMA, which lags \
             (on a short run it still averages in early steps of larger |G|², so it reads low); \
             a probe at each trial's final parameters measures it there"
        );
    }
    let exec = Executor::start(&args.exec)?;
    let result = run_searches(&args, &sweep, &exec);
    exec.close(result.as_ref().err());
    let (records, trials_run, trials_cached) = result?;
    write_records(&sweep.out, &records)?;
    println!(
        "{} trials ({trials_run} run, {trials_cached} reused from {})",
        records.len(),
        sweep.out.display()
    );
    let analysis = crate::analysis::sweep_summary(
        &sweep.out,
        &records,
        sweep.target,
        &sweep.base,
        &sweep.batches,
        &sweep.grid,
    )?;
    sweep.render_report(&analysis, &records)
}

/// Every (batch, seed) search of the sweep, its trials on `exec`: the records (sorted), and
/// how many trials ran and how many were reused.
fn run_searches(
    args: &SweepArgs,
    sweep: &Sweep,
    exec: &Executor,
) -> Result<(Vec<TrialRecord>, u64, u64)> {
    tracing::info!(runs = %exec.describe(), "sweep trials");
    let searches = sweep.searches();
    let total = searches.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} (B, seed) searched, {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let queue = Arc::new(Mutex::new(searches));
    let records = Arc::new(Mutex::new(Vec::new()));
    let jobs = exec.jobs(args.jobs);
    let trials_run = std::sync::atomic::AtomicU64::new(0);
    let trials_cached = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..jobs {
            handles.push(scope.spawn(|| -> Result<()> {
                loop {
                    let Some(mut search) = queue.lock().expect("poisoned").pop() else {
                        return Ok(());
                    };
                    while let Some(t) = search.next_trial() {
                        let tick = |row: &batchlab_core::train::StepMetrics| {
                            if row.step.is_multiple_of(64) {
                                bar.set_message(format!(
                                    "trial B={} lr {:.3e}: step {}",
                                    t.batch, t.lr, row.step
                                ));
                            }
                        };
                        let (mut rec, was_cached) = run_trial(sweep, exec, &t, &tick)?;
                        if t.held_out {
                            rec.selection_steps = search.best().map(|(_, steps)| steps);
                        }
                        let counter = if was_cached {
                            &trials_cached
                        } else {
                            &trials_run
                        };
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        search.record(&rec);
                        records.lock().expect("poisoned").push(rec);
                    }
                    let (b, seed) = search.key();
                    bar.inc(1);
                    bar.set_message(match search.best() {
                        Some((lr, steps)) => {
                            format!("B={b} seed {seed}: {steps} steps at lr {lr:.3e}")
                        }
                        None => format!("B={b} seed {seed}: target not reached"),
                    });
                }
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow!("a sweep thread panicked"))??;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let mut records = Arc::try_unwrap(records)
        .expect("threads joined")
        .into_inner()
        .expect("poisoned");
    records.sort_by(|a, b| {
        (a.batch, a.seed, b.lr)
            .partial_cmp(&(b.batch, b.seed, a.lr))
            .expect("finite rates")
    });
    Ok((records, trials_run.into_inner(), trials_cached.into_inner()))
}

/// Runs `batchlab report DIR`: re-analyses a sweep's folder and renders its report again.
pub fn report(dir: &Path) -> Result<()> {
    let read = |name: &str| -> Result<String> {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let study: serde_json::Value = serde_json::from_str(&read("study.json")?)
        .with_context(|| format!("parsing {}/study.json", dir.display()))?;
    let records: Vec<TrialRecord> = serde_json::from_str(&read("trials.json")?)
        .with_context(|| format!("parsing {}/trials.json", dir.display()))?;
    let field = |k: &str| {
        study
            .get(k)
            .cloned()
            .with_context(|| format!("{}/study.json has no {k}", dir.display()))
    };
    let base: TrainConfig = serde_json::from_value(field("base")?).context("study.json: base")?;
    let target = field("target_loss")?
        .as_f64()
        .context("study.json: target_loss is not a number")?;
    let batches: Vec<u64> =
        serde_json::from_value(field("batches")?).context("study.json: batches")?;
    let grid: Vec<f64> =
        serde_json::from_value(field("lr_grid")?).context("study.json: lr_grid")?;
    let analysis = crate::analysis::sweep_summary(dir, &records, target, &base, &batches, &grid)?;
    let sweep = Sweep {
        base,
        target,
        batches,
        seeds: vec![],
        policy: LrPolicy::Tuned,
        grid,
        patience: 0,
        refine: 0,
        out: dir.to_path_buf(),
        exact_eval: false,
        target_window: 0.0,
        selection_window: 0.0,
        seed_mean: study.get("target_on").and_then(|v| v.as_str()) == Some("mean"),
        probe_samples: 0,
        held_out_seeds: vec![],
    };
    sweep.render_report(&analysis, &records)
}

fn write_records(out: &Path, records: &[TrialRecord]) -> Result<()> {
    let mut w = csv::Writer::from_path(out.join("trials.csv"))?;
    for r in records {
        w.serialize(r)?;
    }
    w.flush()?;
    std::fs::write(
        out.join("trials.json"),
        serde_json::to_string_pretty(records)? + "\n",
    )?;
    Ok(())
}
