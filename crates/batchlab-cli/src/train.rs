//! `batchlab train`: one run in one process.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use batchlab_core::driver::{Progress, Trainer};
use batchlab_core::train::{RunPlan, RunSummary, StepMetrics, TrainConfig};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config;
use crate::output::{MetricsWriter, Rows};

/// Flags of `batchlab train`. Every flag overrides the config file's field of the same name.
#[derive(Args, Debug)]
#[command(after_long_help = TRAIN_HELP)]
pub struct TrainArgs {
    /// TOML config file (see `--print-config` for every field and its default).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Output folder for config.toml, metrics.csv and summary.json.
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
    #[arg(long, value_parser = finite)]
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
    #[arg(long, value_parser = finite)]
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
  metrics.csv    one row per step (pandas.read_csv; empty = not measured)
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

/// Parses a finite number (a flag's NaN or infinity is refused here, naming the flag, rather
/// than as a TOML string the user never wrote).
fn finite(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!(
            "`{text}`: expected a finite number, e.g. 0.1 or 1e-3"
        )),
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

    /// The `--batch` flag, if given.
    pub fn batch_flag(&self) -> Option<u64> {
        self.batch
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

/// The optional fields of a configuration, by table (`""`: the top level), with what leaving
/// them out means: TOML has no null, so an unset field is shown as a comment.
const OPTIONAL: &[(&str, &str, &str)] = &[
    (
        "",
        "micro",
        "unset: batch / k, with k the largest divisor of batch up to 16",
    ),
    ("", "base_batch", "unset: batch (the rate is not scaled)"),
    (
        "",
        "target_loss",
        "unset: no target; the run takes its whole step budget",
    ),
    (
        "",
        "memory_limit_gb",
        "unset: 80 % of this machine's memory",
    ),
    ("optimizer", "clip_norm", "unset: no gradient clipping"),
    (
        "schedule",
        "horizon",
        "unset: the run's total steps (the decay ends with the run)",
    ),
    ("batch_schedule", "start", "unset: the microbatch"),
    ("batch_schedule", "min", "unset: two microbatches"),
    (
        "batch_schedule",
        "max",
        "unset: required by kind = \"noise\"",
    ),
];

/// Renders a configuration as TOML with every field: the unset optional ones as comments
/// (`# micro = …  (unset: …)`), so that the printout lists every setting there is.
pub fn render_config(cfg: &TrainConfig) -> Result<String> {
    let text = toml::to_string_pretty(cfg).context("rendering the config")?;
    let doc: toml::Table = text.parse().context("reading back the rendered config")?;
    // Sections in order: the top level, then each `[table]` header and its lines.
    let mut sections: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_string(), vec![line.to_string()]));
        } else {
            sections
                .last_mut()
                .expect("one section")
                .1
                .push(line.to_string());
        }
    }
    for (table, key, meaning) in OPTIONAL {
        let present = if table.is_empty() {
            doc.contains_key(*key)
        } else {
            doc.get(*table)
                .and_then(toml::Value::as_table)
                .is_none_or(|t| t.contains_key(*key))
        };
        if present {
            continue;
        }
        if let Some((_, lines)) = sections.iter_mut().find(|(n, _)| n == table) {
            let at = lines
                .iter()
                .rposition(|l| !l.trim().is_empty())
                .map_or(0, |i| i + 1);
            lines.insert(at, format!("# {key} =   ({meaning})"));
        }
    }
    if !doc.contains_key("batch_schedule") {
        sections.push((
            "batch_schedule".into(),
            vec![
                String::new(),
                "# [batch_schedule]   (unset: the batch is constant; kind = \"step\", \"ramp\" or \
                 \"noise\" changes it during the run, see docs/science.md#batch-size-schedules)"
                    .into(),
            ],
        ));
    }
    let mut out = String::new();
    for (_, lines) in sections {
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Prints a configuration as TOML (`--print-config`), unset optional fields as comments.
pub fn print_config(cfg: &TrainConfig) -> Result<()> {
    print!("{}", render_config(cfg)?);
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
        Ok(Self::create_with(
            p,
            MetricsWriter::create(&p.out, &p.cfg, Rows::Every)?,
        ))
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
        let sink = Self::create_with(p, MetricsWriter::resume(&p.out, &p.cfg, rows, Rows::Every)?);
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
        if row.step.is_multiple_of(10) {
            self.bar.set_message(format!(
                "minibatch loss {:.4e}  B_simple {:.1}",
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
        let folder = path.as_deref().and_then(Path::parent).unwrap_or(&self.out);
        println!("results in {}", folder.display());
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
