//! `batchlab train`: one run in one process.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use batchlab_core::train::{Progress, RunPlan, RunSummary, StepMetrics, TrainConfig, Trainer};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config;
use crate::output::MetricsWriter;

/// Flags of `batchlab train`. Every flag overrides the config file's field of the same name.
#[derive(Args, Debug)]
#[command(after_long_help = TRAIN_HELP)]
pub struct TrainArgs {
    /// TOML config file (see `--print-config` for every field and its default).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Output folder for config.toml, metrics.jsonl, metrics.csv and summary.json.
    /// Default: runs/train-{task}-B{batch}-lr{lr}-s{seed}.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Task kind: nqm, linreg, logreg, mlp, plateau (resets the other task.* fields).
    #[arg(long)]
    task: Option<String>,
    /// Global batch size B.
    #[arg(short, long)]
    batch: Option<u64>,
    /// Microbatch size m (divides B): the unit of work and of the noise-scale estimate.
    #[arg(long)]
    micro: Option<u64>,
    /// Peak learning rate (at --base-batch when --lr-scaling is linear or sqrt).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate scaling from the base batch: none, linear, sqrt.
    #[arg(long)]
    lr_scaling: Option<String>,
    /// Batch size at which --lr was chosen.
    #[arg(long)]
    base_batch: Option<u64>,
    /// Optimizer: sgd, momentum, nesterov, adam, adamw.
    #[arg(long)]
    optimizer: Option<String>,
    /// Step budget.
    #[arg(long)]
    steps: Option<u64>,
    /// Stop as soon as this loss is reached (see target_metric).
    #[arg(long)]
    target_loss: Option<f64>,
    /// Sampler seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Any config field as a dotted path, e.g. --set optimizer.momentum=0.9 --set task.dim=100.
    /// Applied after the named flags.
    #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the resolved configuration as TOML and exit without training.
    #[arg(long)]
    print_config: bool,
}

const TRAIN_HELP: &str = "\
Outputs (in --out):
  config.toml    the resolved configuration, defaults filled in: rerun with --config
  metrics.jsonl  one JSON object per step (pandas.read_json(path, lines=True))
  metrics.csv    the same rows as CSV (pandas.read_csv)
  summary.json   status (COMPLETE, INCOMPLETE, INFEASIBLE), steps, samples, final losses

Examples:
  batchlab train                                      # NQM, d=1000, SGD, B=64
  batchlab train --task mlp --batch 256 --lr 0.05 --steps 500
  batchlab train --set task.kind=mlp --set task.data.source=csv \\
                 --set task.data.path=data/digits.csv --optimizer momentum
  batchlab train --print-config > run.toml            # every field, then edit";

impl TrainArgs {
    /// The `--out` folder, if given.
    pub fn out_dir(&self) -> Option<&PathBuf> {
        self.out.as_ref()
    }

    fn overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                o.push(format!("{k}={v}"));
            }
        };
        push("task.kind", self.task.as_ref().map(|s| format!("{s:?}")));
        push("batch", self.batch.map(|v| v.to_string()));
        push("micro", self.micro.map(|v| v.to_string()));
        push("lr", self.lr.map(fmt_float));
        push(
            "lr_scaling",
            self.lr_scaling.as_ref().map(|s| format!("{s:?}")),
        );
        push("base_batch", self.base_batch.map(|v| v.to_string()));
        push(
            "optimizer.kind",
            self.optimizer.as_ref().map(|s| format!("{s:?}")),
        );
        push("steps", self.steps.map(|v| v.to_string()));
        push("target_loss", self.target_loss.map(fmt_float));
        push("seed", self.seed.map(|v| v.to_string()));
        o.extend(self.set.iter().cloned());
        o
    }
}

/// A float as TOML, always with a decimal point or exponent so it stays a float.
fn fmt_float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) || !x.is_finite() {
        s
    } else {
        format!("{s}.0")
    }
}

/// The tags assumed when a config gives a tagged table without its tag.
fn default_tags() -> Vec<config::DefaultTag> {
    vec![
        config::DefaultTag {
            table: "task",
            tag: "kind",
            default: batchlab_core::tasks::TaskConfig::default()
                .name()
                .to_string(),
        },
        // The MLP's data source.
        config::DefaultTag {
            table: "task.data",
            tag: "source",
            default: "teacher".to_string(),
        },
    ]
}

/// A validated run: its configuration, plan and output folder.
pub struct Prepared {
    /// The resolved configuration.
    pub cfg: TrainConfig,
    /// The built plan.
    pub plan: RunPlan,
    /// Where results go.
    pub out: PathBuf,
}

impl TrainArgs {
    /// Loads and validates the configuration; `None` when `--print-config` printed it.
    pub fn prepare(&self, prefix: &str) -> Result<Option<Prepared>> {
        self.prepare_with_base(prefix, &[])
    }

    /// The configuration: a command's own defaults (`base`) under the config file, the file
    /// under the flags. Not validated yet.
    pub fn load(&self, base: &[&str]) -> Result<TrainConfig> {
        config::load(
            self.config.as_deref(),
            base,
            &self.overrides(),
            &default_tags(),
        )
    }

    /// Whether `--print-config` asks to print the configuration instead of running it.
    pub fn print_config_requested(&self) -> bool {
        self.print_config
    }

    /// Like [`TrainArgs::prepare`], with a command's own defaults (`base`, e.g. the benchmark's
    /// model) under the config file and the flags.
    pub fn prepare_with_base(&self, prefix: &str, base: &[&str]) -> Result<Option<Prepared>> {
        let cfg = self.load(base)?;
        if self.print_config {
            print_config(&cfg)?;
            return Ok(None);
        }
        let plan = cfg.build().context("invalid config")?;
        let out = self.out.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "runs/{prefix}-{}-B{}-lr{}-s{}",
                plan.task.name(),
                cfg.batch,
                plan.peak_lr,
                cfg.seed
            ))
        });
        Ok(Some(Prepared { cfg, plan, out }))
    }
}

/// Prints a configuration as TOML (`--print-config`).
pub fn print_config(cfg: &TrainConfig) -> Result<()> {
    print!(
        "{}",
        toml::to_string_pretty(cfg).context("rendering the config")?
    );
    Ok(())
}

/// Where a run's rows go: the metrics files and the progress bar.
pub struct Sink {
    writer: MetricsWriter,
    bar: ProgressBar,
    start: Instant,
    out: PathBuf,
}

impl Sink {
    /// Creates the output folder and the progress bar.
    pub fn create(p: &Prepared) -> Result<Self> {
        Ok(Self::create_with(p, MetricsWriter::create(&p.out, &p.cfg)?))
    }

    fn create_with(p: &Prepared, writer: MetricsWriter) -> Self {
        let bar = ProgressBar::new(p.cfg.steps).with_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        Self {
            writer,
            bar,
            start: Instant::now(),
            out: p.out.clone(),
        }
    }

    /// [`Sink::create`] for a run resumed after its first `rows` rows.
    pub fn resume(p: &Prepared, rows: u64) -> Result<Self> {
        let sink = Self::create_with(p, MetricsWriter::resume(&p.out, &p.cfg, rows)?);
        sink.bar.set_position(rows);
        Ok(sink)
    }

    /// Flushes the rows written so far to disk.
    pub fn sync(&mut self) -> Result<()> {
        self.writer.sync()
    }

    /// Records one metrics row.
    pub fn row(&mut self, row: &StepMetrics) -> Result<()> {
        self.writer.write(row)?;
        self.bar.set_position(row.step + 1);
        if row.step % 10 == 0 {
            self.bar.set_message(format!(
                "loss {:.4e}  B_simple {:.1}",
                row.train_loss, row.b_simple
            ));
        }
        Ok(())
    }

    /// Writes the summary (with `extra` entries beside it) and prints the outcome.
    pub fn finish(
        self,
        summary: &RunSummary,
        cfg: &TrainConfig,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        self.bar.finish_and_clear();
        let wall = self.start.elapsed().as_secs_f64();
        let path = self.writer.finish(summary, cfg, wall, extra)?;
        let status = serde_json::to_value(summary.status)?;
        println!(
            "{} after {} steps ({} samples, {:.2}s): {}",
            status.as_str().unwrap_or("?"),
            summary.steps,
            summary.samples,
            wall,
            summary.message
        );
        if let Some(l) = summary.final_eval_loss {
            print!("final eval loss {l:.6e}");
            if let Some(a) = summary.final_eval_accuracy {
                print!(", accuracy {:.2}%", 100.0 * a);
            }
            println!();
        }
        println!(
            "results in {}",
            path.parent().unwrap_or(&self.out).display()
        );
        Ok(())
    }
}

/// Runs `batchlab train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let Some(p) = args.prepare("train")? else {
        return Ok(());
    };
    tracing::info!(
        task = p.plan.task.name(),
        params = p.plan.task.num_params(),
        batch = p.cfg.batch,
        micro = p.plan.micro,
        lr = p.plan.peak_lr,
        out = %p.out.display(),
        "training"
    );
    let mut sink = Sink::create(&p)?;
    let mut trainer = Trainer::new(&p.plan);
    let summary = loop {
        match trainer.step() {
            Progress::Step(row) => sink.row(&row)?,
            Progress::Done(row, summary) => {
                if let Some(row) = row {
                    sink.row(&row)?;
                }
                break summary;
            }
        }
    };
    sink.finish(&summary, &p.cfg, serde_json::Map::new())
}
