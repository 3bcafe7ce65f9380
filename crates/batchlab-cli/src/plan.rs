//! `batchlab plan`: time and worker-hours to a sweep's target loss on N workers, for every
//! batch size, from the sweep's fitted `S(B)` and a model of the system (docs/science.md#planning).
//!
//!   OUT/analysis.json of a sweep ──► S(B) = S_min(1 + B_crit/B)
//!   compute (s/sample), network (α, β per link; bench allreduce's fit) ──► t_step(B, N)
//!   ──► plan.csv (every (B, N)), plan.json (inputs, fastest per N, the choices), the table

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use batchlab_collective::Algorithm;
use batchlab_lab::fit::{BestTrial, CriticalFit};
use batchlab_lab::plan::{self, Compute, Link, Objective, PlanPoint, Statistics, System, Topology};
use clap::Args;

const AFTER_HELP: &str = "\
Example (64 nodes × 8 devices, 100 Gb/s between nodes with 10 us latency, 400 GB/s inside a
node with 2 us, 0.5 ms per sample, 25 M parameters):
  batchlab plan --sweep runs/sweep-mlp-tuned --per-sample-us 500 --params 25M \\
      --per-node 8 --alpha-us 10 --bandwidth-gbs 12.5 --intra-alpha-us 2 --intra-bandwidth-gbs 400 \\
      --max-workers 512 --deadline-h 2

The network may come from `batchlab bench allreduce --out DIR` (its α-β fit of --algorithm):
  batchlab plan --sweep runs/sweep-nqm-tuned --network DIR/allreduce.json --per-sample-us 20 --params 1M

Outputs (in --out, default SWEEP/plan): plan.csv (every batch size × worker count: step time,
compute and all-reduce, steps, time and worker-hours to target, goodput, extrapolated),
plan.json (the inputs, the fastest batch per worker count, the choices), report.html (the
table and heatmaps of time and worker-hours to target).

The compute may come from `batchlab bench step --workers 1,... --out DIR` (its step.json):
  batchlab plan --sweep runs/sweep-nqm-tuned --compute DIR/step.json --network NET/allreduce.json";

/// Time and cost to the sweep's target on N workers.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct PlanArgs {
    /// A sweep's folder (its analysis.json holds the fit of S(B)). Several (comma-separated or
    /// repeated), each swept to its own target loss: the plan for every target, and how
    /// B_crit and the best (B, N) move as the target falls.
    #[arg(long, value_delimiter = ',', required = true)]
    sweep: Vec<PathBuf>,
    /// `batchlab bench step`'s step.json (timed with a one-worker row): the compute of one
    /// sample, the update and the gradient's bytes as measured here. Given several (at other
    /// batch sizes, comma-separated or repeated), the compute is the least-squares line through
    /// them: a cost per sample and a fixed cost per step.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["per_sample_us", "device_tflops"])]
    compute: Vec<PathBuf>,
    /// Forward and backward pass of one sample on one worker, microseconds.
    #[arg(long, required_unless_present_any = ["device_tflops", "compute"])]
    per_sample_us: Option<f64>,
    /// A device's sustained TFLOP/s (with --flops-per-sample, instead of --per-sample-us).
    #[arg(long, requires = "flops_per_sample", conflicts_with = "per_sample_us")]
    device_tflops: Option<f64>,
    /// The model's FLOPs per sample, forward and backward (about 6 × parameters).
    #[arg(long, value_parser = parse_count)]
    flops_per_sample: Option<f64>,
    /// Microseconds of one parameter update (default 0, or --compute's update and fixed cost
    /// per step).
    #[arg(long)]
    update_us: Option<f64>,
    /// Parameters of the model (the gradient is 4 bytes each): 1000000, 25M, 7G.
    #[arg(long, value_parser = parse_count, required_unless_present_any = ["grad_bytes", "compute"])]
    params: Option<f64>,
    /// Bytes of the gradient (instead of --params).
    #[arg(long, value_parser = parse_count, conflicts_with = "params")]
    grad_bytes: Option<f64>,
    /// The all-reduce algorithm (between nodes, with --per-node).
    #[arg(long, value_enum, default_value = "ring")]
    algorithm: Algorithm,
    /// A `bench allreduce` allreduce.json: α and β from its fit of --algorithm.
    #[arg(long, conflicts_with_all = ["alpha_us", "bandwidth_gbs"])]
    network: Option<PathBuf>,
    /// Per-message latency between workers (between nodes, with --per-node), microseconds.
    #[arg(long, required_unless_present = "network")]
    alpha_us: Option<f64>,
    /// Link bandwidth between workers (between nodes, with --per-node), GB/s.
    #[arg(long, required_unless_present = "network")]
    bandwidth_gbs: Option<f64>,
    /// Devices per node: the all-reduce is hierarchical (a ring inside each node).
    #[arg(long, requires_all = ["intra_alpha_us", "intra_bandwidth_gbs"])]
    per_node: Option<usize>,
    /// Latency inside a node, microseconds.
    #[arg(long, requires = "per_node")]
    intra_alpha_us: Option<f64>,
    /// Bandwidth inside a node, GB/s.
    #[arg(long, requires = "per_node")]
    intra_bandwidth_gbs: Option<f64>,
    /// The all-reduce overlaps the backward pass.
    #[arg(long)]
    overlap: bool,
    /// Worker counts to plan for (default: powers of two up to --max-workers).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// The largest worker count of the default list.
    #[arg(long, default_value_t = 4096)]
    max_workers: usize,
    /// Batch sizes to plan for (default: powers of two from 1 to 2^20).
    #[arg(long, value_delimiter = ',')]
    batches: Vec<u64>,
    /// Choose the fewest worker-hours within this many hours to target.
    #[arg(long)]
    deadline_h: Option<f64>,
    /// Choose the shortest time within this many worker-hours.
    #[arg(long)]
    budget_worker_hours: Option<f64>,
    /// Output folder (default: SWEEP/plan).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A finished run whose batch followed a schedule (`[batch_schedule]`) to the target: its
    /// steps' batches (metrics.csv) priced on every worker count, beside the constant batches.
    #[arg(long, value_name = "RUN_DIR")]
    schedule: Option<PathBuf>,
}

/// The batch of every step of the run in `dir`, which must have reached its target.
fn schedule_batches(dir: &Path) -> Result<Vec<u64>> {
    let summary: serde_json::Value = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .with_context(|| {
            format!(
                "--schedule {}: no readable summary.json there (expected the folder of a finished \
                 `batchlab train` or `run`)",
                dir.display()
            )
        })?;
    let status = summary["summary"]["status"].as_str().unwrap_or("?");
    if status != "COMPLETE" {
        bail!(
            "--schedule {}: the run ended {status}; expected a run that reached its target \
             (COMPLETE)",
            dir.display()
        );
    }
    let mut rows = csv::Reader::from_path(dir.join("metrics.csv"))
        .with_context(|| format!("--schedule {}: no metrics.csv", dir.display()))?;
    let col = rows
        .headers()?
        .iter()
        .position(|h| h == "batch")
        .with_context(|| {
            format!(
                "--schedule {}: metrics.csv has no batch column (written before batch schedules)",
                dir.display()
            )
        })?;
    let batches = rows
        .records()
        .map(|r| Ok(r?[col].parse::<u64>()?))
        .collect::<Result<Vec<u64>>>()
        .with_context(|| format!("--schedule {}: reading metrics.csv", dir.display()))?;
    if batches.is_empty() {
        bail!("--schedule {}: the run has no steps", dir.display());
    }
    Ok(batches)
}

/// `1000`, `25K`, `25M`, `7G`, `1.5e9` (powers of 1000) to a number.
fn parse_count(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some(c) if c.eq_ignore_ascii_case(&'k') => (&t[..t.len() - 1], 1e3),
        Some(c) if c.eq_ignore_ascii_case(&'m') => (&t[..t.len() - 1], 1e6),
        Some(c) if c.eq_ignore_ascii_case(&'g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .map(|n| n * mult)
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("{s:?}: expected a positive count such as 1000000, 25M or 7G"))
}

/// A setting that must be a positive, finite number.
fn positive(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        bail!("{name} = {v}: expected a positive number")
    }
}

/// What a plan reads of a sweep's analysis.json (`SweepAnalysis`): the target, the fit and the
/// measured points.
#[derive(serde::Deserialize)]
struct SweepFit {
    target: f64,
    fit: Option<CriticalFit>,
    best: Vec<BestTrial>,
}

/// The fit and measured batch sizes of the sweep in `dir`.
fn statistics(dir: &Path) -> Result<(Statistics, f64)> {
    let path = dir.join("analysis.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--sweep {}: no analysis.json there (expected the folder of a finished `batchlab sweep`)",
            dir.display()
        )
    })?;
    let a: SweepFit = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a sweep's analysis", path.display()))?;
    let Some(fit) = a.fit else {
        bail!(
            "--sweep {}: the sweep has no fit of S(B) (not enough batch sizes reached the \
             target); expected a sweep with a fitted critical batch size (rerun it with more \
             --batches or a higher --target-loss)",
            dir.display()
        );
    };
    let batches = a.best.iter().map(|b| b.batch as f64);
    let lo = batches.clone().fold(f64::INFINITY, f64::min);
    let hi = batches.fold(0.0, f64::max);
    Ok((
        Statistics {
            fit,
            measured: (lo, hi),
        },
        a.target,
    ))
}

/// α and β of `algorithm`'s fit in a `bench allreduce` allreduce.json.
fn network_fit(path: &Path, algorithm: Algorithm) -> Result<Link> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--network {}: cannot read it", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--network {}: not JSON", path.display()))?;
    let algs = json["algorithms"].as_array().with_context(|| {
        format!(
            "--network {}: no \"algorithms\" (expected the allreduce.json of `batchlab bench allreduce`)",
            path.display()
        )
    })?;
    let mine = algs
        .iter()
        .find(|a| a["algorithm"] == algorithm.name())
        .with_context(|| {
            let have: Vec<&str> = algs
                .iter()
                .filter_map(|a| a["algorithm"].as_str())
                .collect();
            format!(
                "--network {}: no fit of --algorithm {} (it has {have:?})",
                path.display(),
                algorithm.name()
            )
        })?;
    let alpha_us = mine["alpha_us"].as_f64();
    let beta_gbs = mine["beta_gbs"].as_f64();
    match (alpha_us, beta_gbs) {
        (Some(a), Some(b)) => Ok(Link {
            alpha_s: a * 1e-6,
            beta_bytes_per_s: b * 1e9,
        }),
        _ => bail!(
            "--network {}: the {} fit has no α and β (it needs two sizes, one bandwidth-bound)",
            path.display(),
            algorithm.name()
        ),
    }
}

/// What a plan reads of `bench step`'s step.json.
#[derive(serde::Deserialize)]
struct StepBench {
    batch: u64,
    per_sample_us: Option<f64>,
    update_us: Option<f64>,
    grad_bytes: f64,
}

/// What the `--compute` files say: microseconds per sample, fixed microseconds per step
/// (compute that does not grow with the batch, and the update), and the gradient's bytes.
fn measured_compute(paths: &[PathBuf]) -> Result<(f64, f64, f64)> {
    let benches = paths
        .iter()
        .map(|p| step_bench(p))
        .collect::<Result<Vec<_>>>()?;
    let update = benches.iter().filter_map(|b| b.update_us).sum::<f64>() / benches.len() as f64;
    let grad_bytes = benches[0].grad_bytes;
    // (B, compute µs of the whole batch on one worker).
    let points: Vec<(f64, f64)> = benches
        .iter()
        .map(|b| {
            (
                b.batch as f64,
                b.per_sample_us.unwrap_or_default() * b.batch as f64,
            )
        })
        .collect();
    let distinct = points.iter().any(|p| p.0 != points[0].0);
    if points.len() == 1 || !distinct {
        let per_sample = points.iter().map(|p| p.1 / p.0).sum::<f64>() / points.len() as f64;
        return Ok((per_sample, update, grad_bytes));
    }
    let n = points.len() as f64;
    let (mb, mc) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sbb: f64 = points.iter().map(|p| (p.0 - mb).powi(2)).sum();
    let sbc: f64 = points.iter().map(|p| (p.0 - mb) * (p.1 - mc)).sum();
    let (mut slope, mut fixed) = (sbc / sbb, mc - sbc / sbb * mb);
    if fixed < 0.0 {
        // Through the origin: no fixed cost.
        fixed = 0.0;
        slope = points.iter().map(|p| p.0 * p.1).sum::<f64>()
            / points.iter().map(|p| p.0 * p.0).sum::<f64>();
    }
    if !(slope.is_finite() && slope > 0.0) {
        bail!(
            "--compute: the step times {points:?} (batch, µs) do not grow with the batch; expected \
             `bench step` runs of one task at different batch sizes"
        );
    }
    Ok((slope, update + fixed, grad_bytes))
}

fn step_bench(path: &Path) -> Result<StepBench> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--compute {}: cannot read it", path.display()))?;
    let b: StepBench = serde_json::from_str(&text).with_context(|| {
        format!(
            "--compute {}: expected the step.json of `batchlab bench step`",
            path.display()
        )
    })?;
    if b.per_sample_us.is_none() {
        bail!(
            "--compute {}: no one-worker timing (expected a `bench step` run with 1 in --workers)",
            path.display()
        );
    }
    Ok(b)
}

/// The system model of `args`.
fn system(args: &PlanArgs) -> Result<System> {
    let bench = if args.compute.is_empty() {
        None
    } else {
        Some(measured_compute(&args.compute)?)
    };
    let per_sample_s = match (
        args.per_sample_us,
        args.device_tflops,
        args.flops_per_sample,
        bench,
    ) {
        (Some(us), _, _, _) => positive("--per-sample-us", us)? * 1e-6,
        (None, Some(tf), Some(f), _) => f / (positive("--device-tflops", tf)? * 1e12),
        (None, None, _, Some((per_sample, _, _))) => {
            positive("--compute's per_sample_us", per_sample)? * 1e-6
        }
        _ => {
            bail!("expected --per-sample-us, --device-tflops with --flops-per-sample, or --compute")
        }
    };
    let update_us = args
        .update_us
        .or(bench.map(|(_, fixed, _)| fixed))
        .unwrap_or(0.0);
    if !(update_us.is_finite() && update_us >= 0.0) {
        bail!("--update-us = {update_us}: expected a number ≥ 0");
    }
    let grad_bytes = match (args.params, args.grad_bytes, &bench) {
        (Some(p), _, _) => 4.0 * p,
        (None, Some(b), _) => b,
        (None, None, Some((_, _, bytes))) => positive("--compute's grad_bytes", *bytes)?,
        (None, None, None) => bail!("expected --params or --grad-bytes"),
    };
    let link = match &args.network {
        Some(path) => network_fit(path, args.algorithm)?,
        None => Link {
            alpha_s: args.alpha_us.context("expected --alpha-us")? * 1e-6,
            beta_bytes_per_s: positive(
                "--bandwidth-gbs",
                args.bandwidth_gbs.context("expected --bandwidth-gbs")?,
            )? * 1e9,
        },
    };
    if !(link.alpha_s.is_finite() && link.alpha_s >= 0.0) {
        bail!(
            "--alpha-us = {}: expected a latency ≥ 0",
            link.alpha_s * 1e6
        );
    }
    let topology = match args.per_node {
        None => Topology::Flat { link },
        Some(0) => bail!("--per-node 0: expected at least 1 device per node"),
        Some(per_node) => {
            let alpha = args.intra_alpha_us.unwrap_or_default();
            if !(alpha.is_finite() && alpha >= 0.0) {
                bail!("--intra-alpha-us = {alpha}: expected a latency ≥ 0");
            }
            Topology::Hierarchical {
                per_node,
                intra: Link {
                    alpha_s: alpha * 1e-6,
                    beta_bytes_per_s: positive(
                        "--intra-bandwidth-gbs",
                        args.intra_bandwidth_gbs.unwrap_or_default(),
                    )? * 1e9,
                },
                inter: link,
            }
        }
    };
    Ok(System {
        compute: Compute {
            per_sample_s,
            per_update_s: update_us * 1e-6,
        },
        algorithm: args.algorithm,
        topology,
        grad_bytes,
        overlap: args.overlap,
    })
}

/// The plan for one sweep's target.
struct Planned<'a> {
    sweep: &'a Path,
    target: f64,
    stats: Statistics,
    points: Vec<PlanPoint>,
    fastest: Vec<PlanPoint>,
}

impl Planned<'_> {
    /// The best point under each objective asked for.
    fn choices(&self, args: &PlanArgs) -> Vec<(&'static str, Option<&PlanPoint>)> {
        let mut choices = vec![("fastest", plan::best(&self.points, Objective::Fastest))];
        if let Some(h) = args.deadline_h {
            let o = Objective::Deadline {
                seconds: h * 3600.0,
            };
            choices.push((
                "fewest worker-hours within the deadline",
                plan::best(&self.points, o),
            ));
        }
        if let Some(w) = args.budget_worker_hours {
            let o = Objective::Budget { worker_hours: w };
            choices.push(("fastest within the budget", plan::best(&self.points, o)));
        }
        choices
    }
}

pub fn run(args: PlanArgs) -> Result<()> {
    let sys = system(&args)?;
    if args.workers.contains(&0) {
        bail!("--workers 0: expected worker counts of at least 1");
    }
    if args.max_workers == 0 {
        bail!("--max-workers 0: expected at least 1");
    }
    if args.batches.contains(&0) {
        bail!("--batches 0: expected batch sizes of at least 1");
    }
    for (name, v) in [
        ("--deadline-h", args.deadline_h),
        ("--budget-worker-hours", args.budget_worker_hours),
    ] {
        if let Some(v) = v {
            positive(name, v)?;
        }
    }
    let workers: Vec<usize> = if args.workers.is_empty() {
        plan::powers_of_two(args.max_workers as u64)
            .into_iter()
            .map(|w| w as usize)
            .collect()
    } else {
        args.workers.clone()
    };
    let batches: Vec<f64> = if args.batches.is_empty() {
        plan::powers_of_two(1 << 20)
            .into_iter()
            .map(|b| b as f64)
            .collect()
    } else {
        args.batches.iter().map(|&b| b as f64).collect()
    };
    // One plan per sweep, the target falling: the last (lowest target) is the plan's headline.
    let mut plans = Vec::new();
    for dir in &args.sweep {
        let (stats, target) = statistics(dir)?;
        let points = stats.grid(&sys, &batches, &workers);
        if points.is_empty() {
            bail!(
                "no batch size of --batches holds at least one sample per worker of --workers \
                 (expected some B ≥ N)"
            );
        }
        let fastest = plan::fastest_per_workers(&points);
        plans.push(Planned {
            sweep: dir,
            target,
            stats,
            points,
            fastest,
        });
    }
    plans.sort_by(|a, b| b.target.total_cmp(&a.target));
    if let Some(w) = plans.windows(2).find(|w| w[0].target == w[1].target) {
        bail!(
            "--sweep {} and {}: both are of target loss {:e}; expected one sweep per target",
            w[0].sweep.display(),
            w[1].sweep.display(),
            w[0].target
        );
    }
    let head = plans.last().expect("at least one --sweep");
    let schedule = match &args.schedule {
        Some(dir) => {
            let batches = schedule_batches(dir)?;
            workers
                .iter()
                .map(|&n| plan::schedule_point(&sys, &batches, n))
                .collect()
        }
        None => Vec::new(),
    };
    let choices = head.choices(&args);

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.sweep[0].join("plan"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_csv(&out.join("plan.csv"), &plans)?;
    let targets: Vec<serde_json::Value> = plans
        .iter()
        .map(|p| {
            serde_json::json!({
                "sweep": p.sweep,
                "target": p.target,
                "statistics": p.stats,
                "fastest_per_workers": p.fastest,
                "choices": p.choices(&args).iter().map(|(what, q)| serde_json::json!({"objective": what, "point": q})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json = serde_json::json!({
        "sweep": head.sweep,
        "target": head.target,
        "statistics": head.stats,
        "system": sys,
        "fastest_per_workers": head.fastest,
        "choices": choices.iter().map(|(what, p)| serde_json::json!({"objective": what, "point": p})).collect::<Vec<_>>(),
        "targets": targets,
        "schedule": args.schedule.as_ref().map(|d| serde_json::json!({"run": d, "per_workers": schedule})),
        "deadline_h": args.deadline_h,
        "budget_worker_hours": args.budget_worker_hours,
    });
    crate::output::write_atomic(
        &out.join("plan.json"),
        &(serde_json::to_string_pretty(&json)? + "\n"),
    )?;
    let tables: Vec<String> = plans
        .iter()
        .map(|p| table(&p.stats, &sys, p.target, &p.fastest, &p.choices(&args)))
        .collect();
    let mut text = tables.concat();
    if plans.len() > 1 {
        text += &falling_table(&plans, &args);
    }
    // The report's headline: the lowest target's plan.
    let headline = tables.last().expect("a plan");
    let assumptions = headline.lines().next().unwrap_or_default();
    let picks: Vec<String> = headline
        .lines()
        .filter(|l| choices.iter().any(|(what, _)| l.starts_with(what)))
        .map(str::to_owned)
        .collect();
    let falling = (plans.len() > 1).then(|| falling_rows(&plans, &args));
    crate::output::write_atomic(
        &out.join("report.html"),
        &plan::page(
            assumptions,
            &head.points,
            &head.fastest,
            &picks,
            falling.as_ref(),
        ),
    )?;
    print!("{text}");
    if let Some(dir) = &args.schedule {
        print!(
            "{}",
            schedule_table(dir, &schedule, &head.fastest, head.target)
        );
    }
    println!(
        "wrote {}, {} and {}",
        out.join("plan.csv").display(),
        out.join("plan.json").display(),
        out.join("report.html").display()
    );
    Ok(())
}

/// How the plan moves as the target falls: per target, the fit, the fastest choice, and the
/// best batch on the fewest and the most workers.
fn falling_rows(plans: &[Planned], args: &PlanArgs) -> plan::FallingTable {
    let header = [
        "target",
        "S_min",
        "B_crit",
        "B_crit vs measured B",
        "fastest (B, N)",
        "its time",
        "best B on fewest N",
        "best B on most N",
    ];
    let rows = plans
        .iter()
        .map(|p| {
            let f = &p.stats.fit;
            let inside = (p.stats.measured.0..=p.stats.measured.1).contains(&f.b_crit);
            let fastest = p.choices(args)[0].1;
            let first = p.fastest.first();
            let last = p.fastest.last();
            vec![
                format!("{:.4e}", p.target),
                format!("{:.1}", f.s_min),
                format!("{:.0}", f.b_crit),
                if inside {
                    format!("within B = {}…{}", p.stats.measured.0, p.stats.measured.1)
                } else {
                    format!(
                        "outside B = {}…{} (extrapolated)",
                        p.stats.measured.0, p.stats.measured.1
                    )
                },
                fastest.map_or("none".into(), |q| format!("({}, {})", q.batch, q.workers)),
                fastest.map_or(String::new(), |q| duration(q.time_s)),
                first.map_or(String::new(), |q| format!("{} on {}", q.batch, q.workers)),
                last.map_or(String::new(), |q| format!("{} on {}", q.batch, q.workers)),
            ]
        })
        .collect();
    plan::FallingTable {
        header: header.map(str::to_owned).to_vec(),
        rows,
    }
}

/// [`falling_rows`] as text.
fn falling_table(plans: &[Planned], args: &PlanArgs) -> String {
    use std::fmt::Write;
    let t = falling_rows(plans, args);
    let width: Vec<usize> = (0..t.header.len())
        .map(|c| {
            t.rows
                .iter()
                .map(|r| r[c].chars().count())
                .chain([t.header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut s = String::from("as the target falls:\n");
    let _ = writeln!(s, "{}", line(&t.header));
    for r in &t.rows {
        let _ = writeln!(s, "{}", line(r));
    }
    s
}

fn write_csv(path: &Path, plans: &[Planned]) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    w.write_record([
        "target",
        "workers",
        "batch",
        "step_s",
        "compute_s",
        "allreduce_s",
        "steps",
        "time_s",
        "worker_hours",
        "goodput",
        "extrapolated",
    ])?;
    for (target, p) in plans
        .iter()
        .flat_map(|q| q.points.iter().map(move |p| (q.target, p)))
    {
        w.write_record([
            target.to_string(),
            p.workers.to_string(),
            p.batch.to_string(),
            p.step.total_s.to_string(),
            p.step.compute_s.to_string(),
            p.step.comm_s.to_string(),
            p.steps.to_string(),
            p.time_s.to_string(),
            p.worker_hours.to_string(),
            p.goodput.to_string(),
            p.extrapolated.to_string(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// The schedule's time per worker count beside the fastest constant batch's.
fn schedule_table(
    dir: &Path,
    points: &[plan::SchedulePoint],
    fastest: &[PlanPoint],
    target: f64,
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let Some(first) = points.first() else {
        return s;
    };
    let _ = writeln!(
        s,
        "the schedule of {} (its own steps and samples, one run: {} steps, {} samples, B = {}…{}):",
        dir.display(),
        first.steps,
        first.samples,
        first.batches.0,
        first.batches.1
    );
    let _ = writeln!(
        s,
        "{:>7} {:>11} {:>13} {:>22}",
        "workers",
        "time",
        "worker-hours",
        format!("fastest constant B to {target:.3e}")
    );
    for p in points {
        let constant = fastest
            .iter()
            .find(|f| f.workers == p.workers)
            .map_or_else(String::new, |f| {
                format!("{} (B = {})", duration(f.time_s), f.batch)
            });
        let _ = writeln!(
            s,
            "{:>7} {:>11} {:>13} {:>22}",
            p.workers,
            duration(p.time_s),
            hours(p.worker_hours),
            constant
        );
    }
    s
}

/// A duration in the unit that reads best.
fn duration(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Worker-hours, readable from a few seconds' worth to millions.
fn hours(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

fn table(
    stats: &Statistics,
    sys: &System,
    target: f64,
    fastest: &[PlanPoint],
    choices: &[(&str, Option<&PlanPoint>)],
) -> String {
    use std::fmt::Write;
    let f = &stats.fit;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "target loss {target:.4e}: S(B) = {:.1}·(1 + {:.0}/B), measured on B = {}…{}; gradient {:.3e} bytes, {} all-reduce{}",
        f.s_min,
        f.b_crit,
        stats.measured.0,
        stats.measured.1,
        sys.grad_bytes,
        sys.algorithm.name(),
        if sys.overlap { ", overlapped" } else { "" }
    );
    let _ = writeln!(
        s,
        "{:>7} {:>9} {:>11} {:>11} {:>11} {:>10} {:>11} {:>13} {:>12}",
        "workers",
        "best B",
        "step",
        "compute",
        "all-reduce",
        "steps",
        "time",
        "worker-hours",
        "goodput/s"
    );
    for p in fastest {
        let _ = writeln!(
            s,
            "{:>7} {:>9} {:>11} {:>11} {:>11} {:>10.0} {:>11} {:>13} {:>12.4e}{}",
            p.workers,
            p.batch,
            duration(p.step.total_s),
            duration(p.step.compute_s),
            duration(p.step.comm_s),
            p.steps,
            duration(p.time_s),
            hours(p.worker_hours),
            p.goodput,
            if p.extrapolated {
                "  (B extrapolated)"
            } else {
                ""
            }
        );
    }
    for (what, p) in choices {
        match p {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "{what}: B = {} on {} workers, {} to target, {} worker-hours{}",
                    p.batch,
                    p.workers,
                    duration(p.time_s),
                    hours(p.worker_hours),
                    if p.extrapolated {
                        " (B outside the measured sizes: S(B) extrapolated)"
                    } else {
                        ""
                    }
                );
            }
            None => {
                let _ = writeln!(s, "{what}: no batch size and worker count meets it");
            }
        }
    }
    s
}
