//! `batchlab reproduce`: runs a catalog entry's studies (the existing experiments, in
//! resumable folders), hands their figures to the entry's rule (`batchlab_lab::reproduce`),
//! and prints the verdict table; writes verdict.json and report.html.
//!
//!   NAME ──► its studies (sweeps …) in OUT/NAME/STUDY/ ──► figures ──► rule ──► verdict

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use batchlab_lab::reproduce::{self, CATALOG, Check, CriticalPoint, Entry};
use clap::{Args, Parser};

const AFTER_HELP: &str = "\
Examples:
  batchlab reproduce --list                      # the catalog: claims, sources, costs
  batchlab reproduce mccandlish --quick          # about 20 s on 2 cores
  batchlab reproduce mccandlish --workers 2      # every run on 2 local worker processes
  batchlab reproduce all --out runs/reproduce    # the whole catalog, default sizes

Each entry prints its verdict table (claim, published, measured, interval, tolerance, verdict,
why) and writes OUT/NAME/verdict.json and OUT/NAME/report.html. Its studies keep their own
folders under OUT/NAME: the same command again reuses every finished trial.";

/// Published claims about batch size, each checked by one command with a verdict.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct ReproduceArgs {
    /// The entry to run (see --list), or `all` for the whole catalog.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the catalog: every entry with its claim, source, rule and costs.
    #[arg(long)]
    list: bool,
    /// The entry's quick form (about a minute on 2 cores; it says what it cuts).
    #[arg(long)]
    quick: bool,
    /// Run every training on N worker processes (local ones, or with --listen ones that
    /// join); the figures are the same as in this process.
    #[arg(short = 'w', long, default_value_t = 0)]
    workers: usize,
    /// Coordinate workers started elsewhere (`batchlab worker`), with --workers N.
    #[arg(long, requires = "workers")]
    listen: Option<SocketAddr>,
    /// The cluster's shared secret (with --listen).
    #[arg(
        long,
        env = "BATCHLAB_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
    /// Output folder (one folder per entry inside it).
    #[arg(long, default_value = "runs/reproduce")]
    out: PathBuf,
}

/// One study of an entry: a label, its folder's name, and the experiment's flags.
struct Study {
    task: &'static str,
    folder: &'static str,
    flags: Vec<String>,
}

/// Parses a sweep's flags as the command line would.
#[derive(Parser, Debug)]
struct SweepCommand {
    #[command(flatten)]
    args: crate::sweep::SweepArgs,
}

pub fn run(args: ReproduceArgs) -> Result<()> {
    if args.list {
        print!("{}", list());
        return Ok(());
    }
    let name = args.name.as_deref().unwrap_or_default();
    let entries: Vec<&Entry> = if name == "all" {
        CATALOG.iter().collect()
    } else {
        match reproduce::find(name) {
            Some(e) => vec![e],
            None => bail!(
                "no entry {name:?} in the catalog; expected one of: {}, or all (see --list)",
                CATALOG
                    .iter()
                    .map(|e| e.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    };
    let mut verdicts = Vec::new();
    for entry in entries {
        let v = run_entry(entry, &args)?;
        verdicts.push((entry.name, v));
    }
    if verdicts.len() > 1 {
        println!("\ncatalog:");
        for (name, v) in verdicts {
            println!("  {name:<24} {}", v.label());
        }
    }
    Ok(())
}

/// The catalog as `--list` prints it.
fn list() -> String {
    let mut s = String::new();
    for e in CATALOG {
        s += &format!(
            "{}\n  claim:   {}\n  source:  {}\n  rule:    {}\n  default: {}\n  --quick: {}\n\n",
            e.name, e.claim, e.source, e.rule, e.default_form, e.quick_form
        );
    }
    s
}

fn run_entry(entry: &Entry, args: &ReproduceArgs) -> Result<reproduce::Verdict> {
    let dir = args.out.join(entry.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let start = Instant::now();
    let (checks, plot, ran, figures) = match entry.name {
        "mccandlish" => mccandlish(&dir, args)?,
        "smith-batch-for-decay" => batch_for_decay(&dir, args)?,
        other => bail!("the entry {other} has no experiment"),
    };
    let wall = start.elapsed().as_secs_f64();
    let verdict = reproduce::overall(&checks);
    println!(
        "\n{} ({}{}): {}",
        entry.name,
        if args.quick { "quick" } else { "default" },
        if args.workers > 0 {
            format!(", {} workers", args.workers)
        } else {
            String::new()
        },
        verdict.label()
    );
    print!("{}", reproduce::verdict_text(&checks));
    let json = serde_json::json!({
        "entry": entry,
        "form": if args.quick { "quick" } else { "default" },
        "workers": args.workers,
        "verdict": verdict,
        "checks": checks,
        "figures": figures,
        "wall_s": wall,
    });
    crate::output::write_atomic(
        &dir.join("verdict.json"),
        &(serde_json::to_string_pretty(&json)? + "\n"),
    )?;
    crate::output::write_atomic(
        &dir.join("report.html"),
        &reproduce::page(entry, &checks, plot.as_ref(), &ran),
    )?;
    println!(
        "wrote {} and {} ({wall:.0} s)",
        dir.join("verdict.json").display(),
        dir.join("report.html").display()
    );
    Ok(verdict)
}

/// The flags every experiment of an entry takes from `reproduce`'s own.
fn exec_flags(args: &ReproduceArgs) -> Vec<String> {
    let mut f = Vec::new();
    if args.workers > 0 {
        f.extend(["--workers".to_owned(), args.workers.to_string()]);
    }
    if let Some(addr) = args.listen {
        f.extend(["--listen".to_owned(), addr.to_string()]);
        f.extend(["--token".to_owned(), args.token.clone()]);
    }
    f
}

/// Runs a sweep with `flags` into `out` and reads its critical batch size.
fn sweep(study: &Study, out: &Path, args: &ReproduceArgs) -> Result<CriticalPoint> {
    let mut argv: Vec<String> = vec!["sweep".into()];
    argv.extend(study.flags.iter().cloned());
    argv.extend(["--out".to_owned(), out.display().to_string()]);
    argv.extend(exec_flags(args));
    println!("{}: batchlab {}", study.task, argv.join(" "));
    let parsed = SweepCommand::try_parse_from(&argv)
        .with_context(|| format!("the study's flags {argv:?}"))?;
    crate::sweep::run(parsed.args)?;
    critical_point(study.task, out)
}

/// What `mccandlish` reads of a sweep's analysis.json.
#[derive(serde::Deserialize)]
struct Analysis {
    target: f64,
    fit: Option<batchlab_lab::fit::CriticalFit>,
    in_range: Option<bool>,
    interval: Option<batchlab_lab::fit::GroupInterval>,
    no_interval: Option<String>,
    noise: Option<batchlab_lab::fit::NoiseSummary>,
}

fn critical_point(task: &str, dir: &Path) -> Result<CriticalPoint> {
    let path = dir.join("analysis.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let a: Analysis =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(fit) = a.fit else {
        bail!(
            "{}: the sweep has no fit of S(B) (too few batch sizes reached the target)",
            dir.display()
        );
    };
    Ok(CriticalPoint {
        task: task.to_owned(),
        target: a.target,
        b_crit: fit.b_crit,
        interval: a.interval.map(|i| (i.b_crit.lo, i.b_crit.hi)),
        no_interval: a.no_interval,
        in_range: a.in_range.unwrap_or(false),
        b_simple: a.noise.map(|n| n.median_b_simple),
    })
}

type Outcome = (
    Vec<Check>,
    Option<batchlab_lab::report::Plot>,
    String,
    serde_json::Value,
);

/// `mccandlish`: the NQM swept at three targets (B_crit as the target falls); by default also
/// four more tasks at one target each (B_crit against B_simple across tasks).
fn mccandlish(dir: &Path, args: &ReproduceArgs) -> Result<Outcome> {
    let mut falling = Vec::new();
    // Quick: easier targets and no batch below 4 (the long small-batch runs are most of the
    // cost, on worker processes above all).
    let targets: [(&str, &str); 3] = if args.quick {
        [
            ("nqm-quick-30pct", "0.3"),
            ("nqm-quick-10pct", "0.1"),
            ("nqm-quick-3pct", "0.03"),
        ]
    } else {
        [
            ("nqm-10pct", "0.1"),
            ("nqm-3pct", "0.03"),
            ("nqm-1pct", "0.01"),
        ]
    };
    for (folder, fraction) in targets {
        let mut flags: Vec<String> = ["--task", "nqm", "--target-fraction", fraction]
            .map(str::to_owned)
            .to_vec();
        if args.quick {
            flags.extend(["--min-batch".to_owned(), "4".to_owned()]);
        }
        let study = Study {
            task: "nqm",
            folder,
            flags,
        };
        falling.push(sweep(&study, &dir.join(study.folder), args)?);
    }
    // One point per task for the cross-task rule: the NQM at its lowest target.
    let mut tasks = vec![falling[2].clone()];
    if !args.quick {
        let digits = dir.join("digits.csv");
        if !digits.exists() {
            std::fs::write(&digits, DIGITS)
                .with_context(|| format!("writing {}", digits.display()))?;
        }
        let digits = std::path::absolute(&digits)?;
        for study in other_tasks(&digits.display().to_string()) {
            tasks.push(sweep(&study, &dir.join(study.folder), args)?);
        }
    }
    let checks = vec![
        reproduce::b_crit_against_noise(&tasks),
        reproduce::b_crit_grows_as_target_falls(&falling),
    ];
    let mut all = tasks.clone();
    all.extend(falling[..2].iter().cloned());
    let plot = reproduce::noise_plot(&all);
    let ran = format!(
        "{} sweeps (batchlab sweep, tuned rate per batch size, held-out seeds): the NQM at {} \
         of the initial loss{}. Each sweep's folder under {} holds its trials, analysis.json \
         and report.html.",
        falling.len() + tasks.len() - 1,
        if args.quick {
            "30 %, 10 % and 3 %, batch sizes 4 to 1024"
        } else {
            "10 %, 3 % and 1 %, batch sizes 1 to 1024"
        },
        if args.quick {
            " (quick: easier targets, no batch below 4, and no other task, so the cross-task \
             check rests on the NQM alone)"
                .to_owned()
        } else {
            format!(
                ", and {} at one target each",
                tasks[1..]
                    .iter()
                    .map(|t| t.task.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        dir.display()
    );
    let figures = serde_json::json!({ "per_task": tasks, "falling_target": falling });
    Ok((checks, Some(plot), ran, figures))
}

/// Parses a training's flags as `batchlab train` would.
#[derive(Parser, Debug)]
struct TrainCommand {
    #[command(flatten)]
    args: crate::train::TrainArgs,
}

/// Parses the cluster flags as the experiments do.
#[derive(Parser, Debug)]
struct ExecCommand {
    #[command(flatten)]
    exec: crate::exec::ExecArgs,
}

/// `smith-batch-for-decay`: per seed, the rate decayed ×1/5 at 1 and 2 epochs, the batch grown
/// ×5 at the same samples, and neither, over 3 epochs of an MLP on teacher data.
fn batch_for_decay(dir: &Path, args: &ReproduceArgs) -> Result<Outcome> {
    // Divisible by every batch (32, 160, 800): the milestones fall between steps.
    const EPOCH: u64 = 16_000;
    const B0: u64 = 32;
    let seeds: Vec<u64> = (0..if args.quick { 4 } else { 8 }).collect();
    let base = [
        "--task",
        "mlp",
        "--set",
        "task.hidden=[32]",
        "--set",
        "task.data.input_dim=32",
        "--set",
        "task.data.classes=4",
        "--set",
        "task.data.train_size=16000",
        "--batch",
        "32",
        "--micro",
        "8",
        "--set",
        "task.data.label_noise=0.2",
        "--lr",
        "1.0",
        "--set",
        "eval_every=4",
    ];
    let epoch = EPOCH.to_string();
    // Steps over 3 epochs: decay and control at B0 all the way; grow at B0, 5·B0, 25·B0.
    let flat_steps = 3 * EPOCH / B0;
    let grow_steps = EPOCH / B0 + EPOCH / (5 * B0) + EPOCH / (25 * B0);
    let schedules: [(&str, Vec<String>, u64); 3] = [
        (
            "decay",
            vec![
                "--set".into(),
                "schedule.decay=\"step\"".into(),
                "--set".into(),
                "schedule.unit=\"samples\"".into(),
                "--set".into(),
                format!("schedule.step_size={epoch}"),
                "--set".into(),
                "schedule.gamma=0.2".into(),
            ],
            flat_steps,
        ),
        (
            "grow",
            vec![
                "--set".into(),
                "batch_schedule.kind=\"step\"".into(),
                "--set".into(),
                "batch_schedule.unit=\"samples\"".into(),
                "--set".into(),
                format!("batch_schedule.at=[{EPOCH}, {}]", 2 * EPOCH),
                "--set".into(),
                "batch_schedule.factor=5".into(),
            ],
            grow_steps,
        ),
        ("control", Vec::new(), flat_steps),
    ];
    let exec_argv: Vec<String> = std::iter::once("exec".to_owned())
        .chain(exec_flags(args))
        .collect();
    let exec = crate::exec::Executor::start(&ExecCommand::try_parse_from(&exec_argv)?.exec)?;
    println!(
        "smith-batch-for-decay: {} runs {}",
        3 * seeds.len(),
        exec.describe()
    );
    let result = (|| {
        let mut runs: Vec<Vec<reproduce::ScheduleRun>> = vec![Vec::new(); 3];
        let mut curves = Vec::new();
        for (k, (name, flags, steps)) in schedules.iter().enumerate() {
            for &seed in &seeds {
                let mut argv: Vec<String> = std::iter::once("train".to_owned())
                    .chain(base.iter().map(|s| (*s).to_owned()))
                    .chain(flags.iter().cloned())
                    .collect();
                argv.extend([
                    "--steps".into(),
                    steps.to_string(),
                    "--seed".into(),
                    seed.to_string(),
                ]);
                let cfg = TrainCommand::try_parse_from(&argv)?.args.load(&[])?;
                let out = dir.join(format!("{name}-s{seed}"));
                let f = exec.run(&cfg, &out, false, crate::output::Rows::Every, &|_| {})?;
                runs[k].push(reproduce::ScheduleRun {
                    seed,
                    final_loss: f.summary.final_eval_loss.filter(|l| l.is_finite()),
                    steps: f.summary.steps,
                    samples: f.summary.samples,
                });
                if seed == 0 {
                    curves.push((format!("{name} (seed 0)"), eval_curve(&out)?));
                }
            }
        }
        anyhow::Ok((runs, curves))
    })();
    exec.close(result.as_ref().err());
    let (runs, curves) = result?;
    let checks = reproduce::batch_for_decay(&runs[0], &runs[1], &runs[2], grow_steps);
    let ran = format!(
        "{} runs of batchlab train ({}): an MLP 32-32-4 on teacher data ({EPOCH} samples, 20 % \
         of labels flipped), batch {B0} in microbatches of 8, rate 1.0, 3 epochs. decay: the \
         rate ×0.2 at 1 and 2 \
         epochs ({flat_steps} steps); grow: the batch ×5 at the same samples, the rate \
         constant ({grow_steps} steps); control: neither. Seeds {:?}; each run's folder under \
         {}.",
        3 * seeds.len(),
        exec_describe(args),
        seeds,
        dir.display()
    );
    let figures = serde_json::json!({ "decay": runs[0], "grow": runs[1], "control": runs[2] });
    Ok((
        checks,
        Some(reproduce::schedules_plot(&curves)),
        ran,
        figures,
    ))
}

/// Where an entry's runs went, in words.
fn exec_describe(args: &ReproduceArgs) -> String {
    match (args.workers, args.listen) {
        (0, _) => "in this process".to_owned(),
        (n, None) => format!("on {n} local worker processes"),
        (n, Some(a)) => format!("on {n} workers that joined {a}"),
    }
}

/// (samples, eval loss) of every evaluated step of the run in `dir`.
fn eval_curve(dir: &Path) -> Result<Vec<(f64, f64)>> {
    let path = dir.join("metrics.csv");
    let mut r =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let h = r.headers()?.clone();
    let col = |name: &str| {
        h.iter()
            .position(|c| c == name)
            .with_context(|| format!("{}: no {name} column", path.display()))
    };
    let (samples, eval) = (col("samples")?, col("eval_loss")?);
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        if let (Ok(s), Ok(l)) = (rec[samples].parse::<f64>(), rec[eval].parse::<f64>()) {
            out.push((s, l));
        }
    }
    Ok(out)
}

/// The digits data (`data/digits.csv`), carried in the binary so that `reproduce` runs from
/// any folder.
const DIGITS: &[u8] = include_bytes!("../../../data/digits.csv");

/// The default form's other tasks of `mccandlish`, one target each (settings fixed before
/// their first verdict: small enough for 2 cores, a grid of 12 rates, batch sizes that bracket
/// the knee; linear regression's target is a loss, its floor `σ²/2 = 0.125` ruling out a
/// fraction of the initial loss).
fn other_tasks(digits: &str) -> Vec<Study> {
    let common = |mut f: Vec<String>| {
        f.extend(["--lr-grid", "0.01:1.99:12", "--steps", "3000"].map(str::to_owned));
        f
    };
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    vec![
        Study {
            task: "linreg",
            folder: "linreg",
            flags: common(v(&[
                "--task",
                "linreg",
                "--set",
                "task.dim=20",
                "--set",
                "task.eval_size=512",
                "--target-loss",
                "0.137",
                "--batches",
                "4,16,64,256,1024,4096,16384",
            ])),
        },
        Study {
            task: "logreg",
            folder: "logreg",
            flags: common(v(&[
                "--task",
                "logreg",
                "--target-fraction",
                "0.3",
                "--batches",
                "4,8,16,32,64,128,256,512",
            ])),
        },
        Study {
            task: "mlp on teacher data",
            folder: "mlp-teacher",
            flags: common(v(&[
                "--task",
                "mlp",
                "--set",
                "task.hidden=[32]",
                "--set",
                "task.data.input_dim=32",
                "--set",
                "task.data.classes=4",
                "--set",
                "task.data.train_size=4096",
                "--target-fraction",
                "0.5",
                "--batches",
                "4,8,16,32,64,128,256,512",
            ])),
        },
        Study {
            task: "mlp on digits",
            folder: "mlp-digits",
            flags: common(vec![
                "--task".into(),
                "mlp".into(),
                "--set".into(),
                "task.hidden=[32]".into(),
                "--set".into(),
                "task.data.source=\"csv\"".into(),
                "--set".into(),
                format!("task.data.path={digits:?}"),
                "--target-fraction".into(),
                "0.3".into(),
                "--batches".into(),
                "4,8,16,32,64,128,256,512".into(),
            ]),
        },
    ]
}
