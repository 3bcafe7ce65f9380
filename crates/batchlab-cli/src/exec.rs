//! Where an experiment's runs execute: in this process (several at once on threads), or one at
//! a time on a cluster of workers (local worker processes, or workers that join from other
//! hosts). Either way a run's folder gets the same files and its summary the same numbers:
//! the reduction is exact, so the cluster's runs are bit-identical to this process's.
//!
//! ```text
//!   experiment ──run(cfg, dir)────────► InProcess: Trainer on this thread
//!              ──run_group(cfg, seeds)─►            replicas in lock step, SeedMean rule
//!                                      ► Cluster:   RunSpec ─► workers (data parallel)
//!                                                   rows ─► dir/metrics.*, summary.json
//! ```

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use batchlab_core::driver::Trainer;
use batchlab_core::group::SeedMean;
use batchlab_core::train::{RunSummary, StepMetrics, TrainConfig};
use clap::Args;

use crate::cluster::{CHECKPOINT, Cluster, ReduceArgs, check_local_workers, load_checkpoint};
use crate::output::{MetricsWriter, Rows};
use batchlab_net::Checkpoint;

/// Where an experiment's runs execute.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Run every trial data-parallel on N worker processes, one trial at a time (0: in this
    /// process, --jobs trials at a time). The numbers are the same either way.
    #[arg(short = 'w', long, default_value_t = 0)]
    workers: usize,
    /// With --workers N: wait on this address for N workers started elsewhere (`batchlab worker
    /// --coordinator HOST:PORT`) instead of starting local ones.
    #[arg(long, value_parser = crate::cluster::socket_addr)]
    listen: Option<SocketAddr>,
    /// The cluster's shared secret (with --listen); every worker must give the same.
    #[arg(
        long,
        env = "BATCHLAB_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    #[command(flatten)]
    reduce: ReduceArgs,
}

/// Set by the first Ctrl-C (or SIGTERM): experiments stop at their next run boundary.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An experiment stopped by a signal between two runs: the runs it finished are in its folder,
/// and the same command run again reuses them.
#[derive(Debug)]
pub struct Interrupted {
    /// SIGINT or SIGTERM.
    pub signal: &'static str,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by {} between two runs; the finished runs are kept: run the same command \
             again to go on from them",
            self.signal
        )
    }
}

impl std::error::Error for Interrupted {}

static SIGNAL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Makes the first Ctrl-C (SIGINT) or SIGTERM stop an experiment between two runs (the runs
/// under way finish and are written), and a second one stop it at once (exit status 130).
/// `folder` is named in the message.
pub fn stop_between_runs(folder: &Path) {
    let folder = folder.display().to_string();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let sig = crate::cluster::stop_signal().await;
            let _ = SIGNAL.set(sig);
            STOP.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!(
                "\n{sig}: stopping once the runs under way finish (their results are kept in \
                 {folder}); {sig} again stops at once"
            );
            let sig = crate::cluster::stop_signal().await;
            eprintln!("{sig} again: stopped at once; the run under way is lost, finished runs are kept in {folder}");
            std::process::exit(130);
        });
    });
}

/// `Err(Interrupted)` once a stop was asked for (see [`stop_between_runs`]).
fn stop_point() -> Result<()> {
    if STOP.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Interrupted {
            signal: SIGNAL.get().copied().unwrap_or("a signal"),
        }
        .into());
    }
    Ok(())
}

impl ExecArgs {
    /// Checks the cluster flags before an experiment makes its folder: the reduction flags
    /// when there are workers, --listen only with --workers, and [`check_local_workers`] for
    /// local workers (none started elsewhere with --listen).
    pub fn check_workers(&self, micros: u64, what: &str) -> Result<()> {
        if let (0, Some(addr)) = (self.workers, self.listen) {
            anyhow::bail!("--listen {addr} needs --workers N: how many workers to wait for");
        }
        if self.workers > 0 {
            self.reduce.validate()?;
        }
        if self.workers > 0 && self.listen.is_none() {
            check_local_workers(self.workers, micros, what)?;
        }
        Ok(())
    }
}

/// A finished run: its summary and, when asked for, each member's final parameters.
pub struct Finished {
    /// The run's (or the group's) summary.
    pub summary: RunSummary,
    /// Final parameters by member (one member for a single run); empty unless asked for.
    pub params: Vec<Vec<f64>>,
    /// Every step's evaluation loss (NaN where none) by member, from the start; `None` for a
    /// run resumed from a checkpoint without the losses saved beside it.
    pub eval_losses: Option<Vec<Vec<f64>>>,
}

/// Runs experiments' trainings in this process or on a cluster.
pub enum Executor {
    /// Trainer on the calling thread.
    InProcess,
    /// One run at a time on the cluster's workers.
    Cluster(Box<Mutex<Cluster>>),
}

impl Executor {
    /// The executor the flags ask for; starts (or waits for) the workers.
    pub fn start(args: &ExecArgs) -> Result<Self> {
        match (args.workers, args.listen) {
            (0, None) => Ok(Self::InProcess),
            (0, Some(addr)) => Err(anyhow!(
                "--listen {addr} needs --workers N: how many workers to wait for"
            )),
            (n, None) => Ok(Self::Cluster(Box::new(Mutex::new(Cluster::local(
                n,
                &args.reduce,
            )?)))),
            (n, Some(addr)) => {
                let c = Cluster::listen(addr, n, &args.token, &args.reduce)?;
                Ok(Self::Cluster(Box::new(Mutex::new(c))))
            }
        }
    }

    /// How many runs may go at once: `requested` (default: the cores) in this process, one on
    /// a cluster (its workers already share every run).
    pub fn jobs(&self, requested: Option<usize>) -> usize {
        match self {
            Self::InProcess => requested
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1),
            Self::Cluster(_) => 1,
        }
    }

    /// Where the runs go, in words.
    pub fn describe(&self) -> String {
        match self {
            Self::InProcess => "in this process".to_string(),
            Self::Cluster(c) => format!("on {} workers", c.lock().map_or(0, |c| c.workers())),
        }
    }

    /// Shuts the cluster's workers down, if any.
    pub fn close(self, error: Option<&anyhow::Error>) {
        if let Self::Cluster(c) = self
            && let Ok(c) = (*c).into_inner()
        {
            c.close(error);
        }
    }

    /// Trains `cfg`, writing its rows and summary to `dir` (see [`MetricsWriter`]); `tick`
    /// sees every row (for progress).
    pub fn run(
        &self,
        cfg: &TrainConfig,
        dir: &Path,
        want_params: bool,
        rows: Rows,
        tick: &dyn Fn(&StepMetrics),
    ) -> Result<Finished> {
        stop_point()?;
        let start = Instant::now();
        // On a cluster, an unfinished run's checkpoint in `dir` is resumed from.
        let resume = match self {
            Self::InProcess => None,
            Self::Cluster(_) => load_checkpoint(dir, cfg, &[])?,
        };
        let mut complete = true;
        let writer = RefCell::new(match &resume {
            Some(c) => {
                tracing::warn!(
                    "{}: resuming from its checkpoint at step {}",
                    dir.display(),
                    c.step()
                );
                let mut w = MetricsWriter::resume(dir, cfg, c.step(), rows)?;
                complete = w.restore_eval(&eval_path(dir, 0), c.step())?;
                w
            }
            None => {
                remove_saved_eval(dir, 1);
                MetricsWriter::create(dir, cfg, rows)?
            }
        });
        let err = RefCell::new(None);
        let write = |row: &StepMetrics| {
            tick(row);
            if let Err(e) = writer.borrow_mut().write(row) {
                err.borrow_mut().get_or_insert(e);
            }
        };
        let (summary, params, extra) = match self {
            Self::InProcess => {
                let plan = cfg.build().context("invalid trial config")?;
                let mut trainer = Trainer::new(&plan);
                let summary = trainer.run(write);
                let params = if want_params {
                    vec![trainer.replica().params.clone()]
                } else {
                    vec![]
                };
                (summary, params, serde_json::Map::new())
            }
            Self::Cluster(c) => {
                let mut c = c
                    .lock()
                    .map_err(|_| anyhow!("the cluster's lock is poisoned"))?;
                let outcome = c.run_checkpointed(
                    cfg,
                    &[],
                    want_params,
                    resume.as_ref(),
                    |_, row| write(&row),
                    |ck| {
                        save(
                            dir,
                            std::slice::from_mut(&mut *writer.borrow_mut()),
                            &ck,
                            &err,
                        )
                    },
                )?;
                let params = outcome.params.clone().map(|p| vec![p]).unwrap_or_default();
                (outcome.summary.clone(), params, timing(&outcome)?)
            }
        };
        if let Some(e) = err.into_inner() {
            return Err(e);
        }
        let writer = writer.into_inner();
        let eval_losses = complete.then(|| vec![writer.eval_losses().to_vec()]);
        writer.finish(&summary, cfg, start.elapsed().as_secs_f64(), extra)?;
        remove_checkpoint(dir, 1);
        Ok(Finished {
            summary,
            params,
            eval_losses,
        })
    }

    /// Trains one replica of `cfg` per seed in lock step and ends them together on their mean
    /// evaluation loss ([`SeedMean`]). Seed `s` writes its rows to `dir/seed{s}`; every
    /// member's `summary.json` holds the group's summary. The first member keeps `rows`, the
    /// others no per-step table (they count through the group's mean). `tick` sees the first
    /// member's rows.
    pub fn run_group(
        &self,
        cfg: &TrainConfig,
        seeds: &[u64],
        dir: &Path,
        want_params: bool,
        rows: Rows,
        tick: &dyn Fn(&StepMetrics),
    ) -> Result<Finished> {
        stop_point()?;
        let start = Instant::now();
        let configs: Vec<TrainConfig> = seeds
            .iter()
            .map(|&s| SeedMean::member_config(cfg, s))
            .collect();
        // On a cluster, an unfinished group's checkpoint in `dir` is resumed from.
        let resume = match self {
            Self::InProcess => None,
            Self::Cluster(_) => load_checkpoint(dir, cfg, seeds)?,
        };
        if let Some(c) = &resume {
            tracing::warn!(
                "{}: resuming from its checkpoint at step {}",
                dir.display(),
                c.step()
            );
        }
        let mut writers = seeds
            .iter()
            .zip(&configs)
            .enumerate()
            .map(|(m, (s, c))| {
                let d = dir.join(format!("seed{s}"));
                let keep = if m == 0 { rows } else { Rows::None };
                match resume.as_ref().and_then(|r| r.rows.get(m)) {
                    Some(&step) => MetricsWriter::resume(&d, c, step, keep),
                    None => MetricsWriter::create(&d, c, keep),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        // Every member's losses from the start: those before the checkpoint were saved beside it.
        let mut complete = true;
        if resume.is_none() {
            remove_saved_eval(dir, seeds.len());
        }
        if let Some(r) = &resume {
            for (m, w) in writers.iter_mut().enumerate() {
                let step = r.rows.get(m).copied().unwrap_or(0);
                complete &= w.restore_eval(&eval_path(dir, m), step)?;
            }
        }
        let (summary, params, extra) = match self {
            Self::InProcess => {
                let (summary, params) = group_in_process(cfg, &configs, &mut writers, tick)?;
                let params = if want_params { params } else { vec![] };
                (summary, params, serde_json::Map::new())
            }
            Self::Cluster(c) => {
                let mut c = c
                    .lock()
                    .map_err(|_| anyhow!("the cluster's lock is poisoned"))?;
                let err = RefCell::new(None);
                let shared = RefCell::new(&mut writers);
                let outcome = c.run_checkpointed(
                    cfg,
                    seeds,
                    want_params,
                    resume.as_ref(),
                    |member, row| {
                        if member == 0 {
                            tick(&row);
                        }
                        if let Err(e) = shared.borrow_mut()[member].write(&row) {
                            err.borrow_mut().get_or_insert(e);
                        }
                    },
                    |ck| save(dir, &mut shared.borrow_mut()[..], &ck, &err),
                )?;
                if let Some(e) = err.into_inner() {
                    return Err(e);
                }
                let params = match &outcome.params {
                    Some(all) => {
                        let dim = all.len() / seeds.len().max(1);
                        all.chunks(dim.max(1)).map(<[f64]>::to_vec).collect()
                    }
                    None => vec![],
                };
                (outcome.summary.clone(), params, timing(&outcome)?)
            }
        };
        let eval_losses =
            complete.then(|| writers.iter().map(|w| w.eval_losses().to_vec()).collect());
        for (w, c) in writers.into_iter().zip(&configs) {
            w.finish(&summary, c, start.elapsed().as_secs_f64(), extra.clone())?;
        }
        remove_checkpoint(dir, seeds.len());
        Ok(Finished {
            summary,
            params,
            eval_losses,
        })
    }
}

/// Saves checkpoint `c` in `dir` once `writers` hold every row it covers on disk; an error is
/// kept in `err` (the run goes on; the experiment reports it at the end).
fn save(
    dir: &Path,
    writers: &mut [MetricsWriter],
    c: &Checkpoint,
    err: &RefCell<Option<anyhow::Error>>,
) {
    let saved = writers
        .iter_mut()
        .enumerate()
        .try_for_each(|(m, w)| {
            w.sync()?;
            w.save_eval(&eval_path(dir, m))
        })
        .and_then(|_| crate::output::write_atomic_bytes(&dir.join(CHECKPOINT), &c.to_bytes()));
    if let Err(e) = saved {
        err.borrow_mut().get_or_insert(e);
    }
}

/// Where member `m`'s evaluation losses are saved beside a checkpoint (removed with it).
fn eval_path(dir: &Path, m: usize) -> std::path::PathBuf {
    dir.join(format!(".eval-{m}.f64"))
}

/// Removes a finished run's checkpoint and the losses saved beside it.
fn remove_checkpoint(dir: &Path, members: usize) {
    let _ = std::fs::remove_file(dir.join(CHECKPOINT));
    remove_saved_eval(dir, members);
}

/// Removes losses saved beside a checkpoint (a run that does not resume starts them afresh).
fn remove_saved_eval(dir: &Path, members: usize) {
    for m in 0..members {
        let _ = std::fs::remove_file(eval_path(dir, m));
    }
}

fn timing(
    outcome: &batchlab_net::RunOutcome,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut extra = serde_json::Map::new();
    extra.insert(
        "timing".to_string(),
        serde_json::to_value(&outcome.timings)?,
    );
    Ok(extra)
}

/// A seed-mean group in this process: the members step in order, each step's rows go to the
/// rule, exactly as the workers do it.
fn group_in_process(
    cfg: &TrainConfig,
    configs: &[TrainConfig],
    writers: &mut [MetricsWriter],
    tick: &dyn Fn(&StepMetrics),
) -> Result<(RunSummary, Vec<Vec<f64>>)> {
    let plans = configs
        .iter()
        .map(|c| c.build().context("invalid trial config"))
        .collect::<Result<Vec<_>>>()?;
    let micro = plans.last().map_or(1, |p| p.micro);
    let rule = SeedMean::new(cfg, micro, configs.len());
    batchlab_core::driver::run_in_process(rule, &plans, |i, row| {
        if i == 0 {
            tick(row);
        }
        writers[i].write(row)
    })
}
