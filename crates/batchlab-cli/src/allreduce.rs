//! `batchlab bench allreduce`: the all-reduce stress test, with nccl-tests' conventions.
//!
//! ```text
//!   sizes -b..-e by ×-f  ×  algorithms ──► one BenchSpec per (algorithm, size) ──► workers
//!        each rank: -w warmup + -n timed all-reduces of integer inputs, every result checked
//!   ◄── per rank: seconds per iteration, wrong elements, sampled phases
//!   row: time (mean over ranks and iterations), algbw = S/t, busbw = algbw·2(n−1)/n, #wrong,
//!        p50/p99 over every rank's iterations; then per algorithm the mean busbw and the α-β fit
//! ```
//!
//! `--stress SECONDS` instead runs rounds of random sizes and interleaved algorithms on random
//! subsets of the workers (in random plan order), checking every result, until the time is up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use batchlab_collective::{Algorithm, bus_bandwidth_factor, fit_alpha_beta};
use batchlab_core::driver::ReduceMode;
use batchlab_core::rng::{Stream, rng};
use batchlab_core::stats;
use batchlab_net::bench::{BenchRankResult, TraceEvent};
use batchlab_net::{BenchOp, BenchOrder, Transport};
use clap::Args;
use rand::Rng;
use serde::Serialize;

use crate::cluster::{Cluster, ReduceArgs};

/// Flags of `batchlab bench allreduce`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Sizes take K, M, G suffixes (powers of 1024). Bandwidths are in GB/s (10⁹ bytes per second), as
nccl-tests prints them: algbw = bytes/time, busbw = algbw·2(n−1)/n.

Outputs (in --out): allreduce.csv and allreduce.json (one row per algorithm and size, the
α-β fits, the average bus bandwidths), trace.json with --trace-every (open it in
chrome://tracing or ui.perfetto.dev), stress.json with --stress.

Exits with status 2 when any element was wrong, any result was lost, or the average bus
bandwidth is below --min-busbw.")]
pub struct AllreduceArgs {
    /// Smallest size in bytes (K, M, G suffixes).
    #[arg(short = 'b', long = "minbytes", default_value = "1K", value_parser = parse_size)]
    min_bytes: u64,
    /// Largest size in bytes.
    #[arg(short = 'e', long = "maxbytes", default_value = "64M", value_parser = parse_size)]
    max_bytes: u64,
    /// Factor between consecutive sizes.
    #[arg(short = 'f', long = "stepfactor", default_value_t = 2)]
    step_factor: u64,
    /// Timed iterations per size.
    #[arg(short = 'n', long = "iters", default_value_t = 20)]
    iters: u32,
    /// Untimed warmup iterations per size.
    #[arg(short = 'w', long = "warmup_iters", default_value_t = 5)]
    warmup: u32,
    /// Check results: 1 checks every timed iteration against the exact sum, 0 none.
    #[arg(short = 'c', long = "check", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    check: u8,
    /// Algorithms, comma-separated: ring, tree, rhd, centralized, or all.
    #[arg(
        short = 'a',
        long = "algorithms",
        value_delimiter = ',',
        default_value = "all"
    )]
    algorithms: Vec<String>,
    /// Elements: exact (int64, wrapping sum) or fast (float32; integer inputs keep it exact).
    #[arg(long, value_enum, default_value_t = ReduceMode::Exact)]
    reduce: ReduceMode,
    /// Number of worker processes started on this machine (with --listen: the number to wait for).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Wait on this address for --workers workers started elsewhere (`batchlab worker
    /// --coordinator HOST:PORT`) instead of starting local ones.
    #[arg(long, value_parser = crate::cluster::socket_addr)]
    listen: Option<SocketAddr>,
    /// The cluster's shared secret (with --listen).
    #[arg(
        long,
        env = "BATCHLAB_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    #[command(flatten)]
    tls: crate::cluster::TlsArgs,
    /// How payloads travel: auto (Unix sockets between workers on the same host, TCP between
    /// hosts), tcp (TCP only, as Gloo and MPI's TCP transport) or grpc (gRPC streams).
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// Largest piece of a collective message, in bytes (K, M suffixes).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    chunk_bytes: u64,
    /// Deadline for any one receive from a peer, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    peer_timeout_ms: u64,
    /// A worker silent for this many milliseconds is lost and the benchmark stops.
    #[arg(long, default_value_t = 5_000)]
    heartbeat_timeout_ms: u64,
    /// Fail when the average bus bandwidth (GB/s, over every algorithm and size) is below this.
    #[arg(long)]
    min_busbw: Option<f64>,
    /// Record a timeline of every K-th timed iteration per rank (0: none) into trace.json.
    #[arg(long, default_value_t = 0)]
    trace_every: u32,
    /// Stress mode: random sizes in -b..-e, every algorithm interleaved, on random subsets of
    /// the workers, every result checked, for this many seconds.
    #[arg(long)]
    stress: Option<f64>,
    /// Stress mode with --listen: workers may leave down to this many (a lost worker's round
    /// is run again on the next generation).
    #[arg(long, value_name = "N")]
    min_workers: Option<usize>,
    /// Stress mode with --listen: workers may join up to this many, between rounds.
    #[arg(long, value_name = "N")]
    max_workers: Option<usize>,
    /// Seed of the inputs and of the stress mode's choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (default `runs/bench-allreduce-w<workers>-<reduce>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Test hook: this rank corrupts one element of each result it checks.
    #[arg(long, hide = true)]
    corrupt_rank: Option<u32>,
}

/// `1024`, `4K`, `16M`, `1G` (powers of 1024) to bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?}: expected a byte count such as 4096, 64K, 16M or 1G"))
}

/// Elements of the chosen reduction: (bytes per element, nccl-tests' type name).
fn element(reduce: ReduceMode) -> (u64, &'static str) {
    match reduce {
        ReduceMode::Exact => (8, "int64"),
        ReduceMode::Fast => (4, "float"),
    }
}

/// The sizes `-b`, `-b·f`, `-b·f²`, … up to `-e` (as nccl-tests steps them), each rounded down to whole elements (sizes under one
/// element are dropped; duplicates after rounding kept once).
fn sizes(min: u64, max: u64, factor: u64, elem: u64) -> Result<Vec<u64>> {
    if min > max {
        bail!("-b {min} is larger than -e {max}: expected minbytes ≤ maxbytes");
    }
    if factor < 2 && min != max {
        bail!("-f {factor}: expected a factor of at least 2");
    }
    if max > 1 << 32 {
        bail!("-e {max}: expected at most 4G bytes");
    }
    let mut out: Vec<u64> = Vec::new();
    let mut s = min;
    while s <= max {
        let rounded = s / elem * elem;
        if rounded > 0 && out.last() != Some(&rounded) {
            out.push(rounded);
        }
        match s.checked_mul(factor) {
            Some(next) if factor >= 2 => s = next,
            _ => break,
        }
    }
    if out.is_empty() {
        bail!("-b {min} -e {max}: no size holds a whole {elem}-byte element");
    }
    Ok(out)
}

fn algorithms(names: &[String]) -> Result<Vec<Algorithm>> {
    let mut out = Vec::new();
    for n in names {
        if n == "all" {
            out.extend(Algorithm::ALL);
            continue;
        }
        let a: Algorithm = n.parse().map_err(|e| anyhow!("-a {n}: {e}"))?;
        out.push(a);
    }
    out.dedup();
    if out.is_empty() {
        bail!("-a: expected at least one algorithm (ring, tree, rhd, centralized or all)");
    }
    Ok(out)
}

/// One line of the table: an algorithm at one size.
#[derive(Debug, Clone, Serialize)]
struct Row {
    algorithm: &'static str,
    bytes: u64,
    count: u64,
    #[serde(rename = "type")]
    elem_type: &'static str,
    ranks: usize,
    iters: u32,
    time_us: f64,
    algbw_gbs: f64,
    busbw_gbs: f64,
    wrong: u64,
    checked: u64,
    min_us: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// Folds every member's result of a one-op spec into a row; errors if a member's result is
/// missing or short (a lost result).
fn row(
    algorithm: Algorithm,
    bytes: u64,
    elem: (u64, &'static str),
    iters: u32,
    results: &[BenchRankResult],
) -> Result<Row> {
    let members: Vec<&BenchRankResult> = results.iter().filter(|r| r.member).collect();
    let mut times = Vec::new();
    let (mut wrong, mut checked) = (0, 0);
    for r in &members {
        let op = r.ops.first().ok_or_else(|| {
            anyhow!(
                "rank {} returned no result for {} at {bytes} bytes",
                r.rank,
                algorithm.name()
            )
        })?;
        if op.times_s.len() != iters as usize {
            bail!(
                "rank {} returned {} of {iters} timings for {} at {bytes} bytes",
                r.rank,
                op.times_s.len(),
                algorithm.name()
            );
        }
        times.extend(op.times_s.iter().map(|t| t * 1e6));
        wrong += op.wrong;
        checked += op.checked;
    }
    times.sort_by(f64::total_cmp);
    let n = members.len();
    let time_us = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let algbw = bytes as f64 / (time_us * 1e-6) / 1e9;
    Ok(Row {
        algorithm: algorithm.name(),
        bytes,
        count: bytes / elem.0,
        elem_type: elem.1,
        ranks: n,
        iters,
        time_us,
        algbw_gbs: algbw,
        busbw_gbs: algbw * bus_bandwidth_factor(n.max(1)),
        wrong,
        checked,
        min_us: times.first().copied().unwrap_or(f64::NAN),
        p50_us: stats::nearest_rank(&times, 0.5),
        p99_us: stats::nearest_rank(&times, 0.99),
        max_us: times.last().copied().unwrap_or(f64::NAN),
    })
}

/// Per algorithm: mean bus bandwidth and the α-β fit.
#[derive(Debug, Clone, Serialize)]
struct AlgorithmSummary {
    algorithm: &'static str,
    sizes: usize,
    avg_busbw_gbs: f64,
    alpha_us: Option<f64>,
    beta_gbs: Option<f64>,
    fit_rms_rel: Option<f64>,
}

fn summarize(rows: &[Row], algorithms: &[Algorithm], world: usize) -> Vec<AlgorithmSummary> {
    algorithms
        .iter()
        .map(|&a| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.algorithm == a.name()).collect();
            let samples: Vec<(f64, f64)> = mine
                .iter()
                .map(|r| (r.bytes as f64, r.time_us * 1e-6))
                .collect();
            let fit = fit_alpha_beta(a, world, &samples);
            AlgorithmSummary {
                algorithm: a.name(),
                sizes: mine.len(),
                avg_busbw_gbs: mine.iter().map(|r| r.busbw_gbs).sum::<f64>()
                    / mine.len().max(1) as f64,
                alpha_us: fit.map(|f| f.alpha_s * 1e6),
                // Infinite when the sizes are all latency-bound: no bandwidth to report.
                beta_gbs: fit
                    .map(|f| f.beta_bytes_per_s / 1e9)
                    .filter(|b| b.is_finite()),
                fit_rms_rel: fit.map(|f| f.rms_rel),
            }
        })
        .collect()
}

/// A Chrome trace event (`ph: "X"`, a complete event), for chrome://tracing and Perfetto.
#[derive(Debug, Serialize)]
struct ChromeEvent {
    name: String,
    cat: String,
    ph: &'static str,
    ts: f64,
    dur: f64,
    pid: u32,
    tid: u32,
    args: serde_json::Value,
}

fn chrome_events(
    algorithm: Algorithm,
    bytes: u64,
    results: &[BenchRankResult],
    out: &mut Vec<ChromeEvent>,
) {
    for r in results {
        for e in &r.trace {
            let TraceEvent {
                iter,
                step,
                phase,
                peer,
                bytes: moved,
                start_us,
                dur_us,
                ..
            } = e;
            let (name, tid) = if *step == u32::MAX {
                (format!("{} {} B iter {iter}", algorithm.name(), bytes), 0)
            } else {
                let dir = if phase == "send" { "→" } else { "←" };
                (format!("{phase} {dir}{peer} step {step}"), 1)
            };
            out.push(ChromeEvent {
                name,
                cat: phase.clone(),
                ph: "X",
                ts: *start_us,
                dur: *dur_us,
                pid: r.rank as u32,
                tid,
                args: serde_json::json!({
                    "algorithm": algorithm.name(), "size": bytes, "iter": iter,
                    "step": step, "peer": peer, "bytes": moved,
                }),
            });
        }
    }
}

/// Runs `batchlab bench allreduce`.
pub fn run(args: AllreduceArgs) -> Result<()> {
    let elem = element(args.reduce);
    let sizes = sizes(args.min_bytes, args.max_bytes, args.step_factor, elem.0)?;
    let algorithms = algorithms(&args.algorithms)?;
    if args.iters == 0 && args.stress.is_none() {
        bail!("-n 0: expected at least one timed iteration");
    }
    if let Some(s) = args.stress
        && !(s > 0.0 && s.is_finite())
    {
        bail!("--stress {s}: expected a positive number of seconds");
    }
    if let Some(m) = args.min_busbw
        && !(m >= 0.0 && m.is_finite())
    {
        bail!("--min-busbw {m}: expected a bandwidth in GB/s, at least 0");
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/bench-allreduce-w{}-{}",
            args.workers, args.reduce
        ))
    });
    let _lock = crate::output::FolderLock::acquire(&out, "batchlab bench allreduce")?;
    let reduce = ReduceArgs::for_bench(
        args.transport,
        args.chunk_bytes,
        args.peer_timeout_ms,
        args.heartbeat_timeout_ms,
        args.tls.clone(),
        (args.min_workers, args.max_workers),
    );
    if (args.min_workers.is_some() || args.max_workers.is_some())
        && (args.listen.is_none() || args.stress.is_none())
    {
        bail!(
            "--min-workers/--max-workers: membership changes need --stress and --listen (workers \
             started on their own)"
        );
    }
    let mut cluster = match args.listen {
        None => Cluster::local(args.workers, &reduce)?,
        Some(addr) => Cluster::listen(addr, args.workers, &args.token, &reduce)?,
    };
    let result = match args.stress {
        Some(seconds) => stress(
            &mut cluster,
            &args,
            &sizes,
            &algorithms,
            elem,
            seconds,
            &out,
        ),
        None => sweep(&mut cluster, &args, &sizes, &algorithms, elem, &out),
    };
    cluster.close(result.as_ref().err());
    result
}

fn spec(args: &AllreduceArgs, ops: Vec<BenchOp>, members: Vec<u32>, check_all: bool) -> BenchOrder {
    BenchOrder {
        ops,
        reduce: args.reduce,
        chunk_bytes: args.chunk_bytes,
        peer_timeout_ms: args.peer_timeout_ms,
        check_all,
        seed: args.seed,
        members,
        trace_every: args.trace_every,
        corrupt_rank: args.corrupt_rank,
        transport: args.transport,
    }
}

fn sweep(
    cluster: &mut Cluster,
    args: &AllreduceArgs,
    sizes: &[u64],
    algorithms: &[Algorithm],
    elem: (u64, &'static str),
    out: &Path,
) -> Result<()> {
    let world = cluster.workers();
    let check = args.check == 1;
    println!(
        "# batchlab bench allreduce: {world} ranks ({}), {} reduction ({}), {} transport, chunks of {} bytes",
        if args.listen.is_some() {
            "workers that joined"
        } else {
            "local worker processes"
        },
        args.reduce,
        elem.1,
        args.transport,
        args.chunk_bytes
    );
    println!(
        "# {} timed iterations after {} warmup per size; {}; time is the mean over ranks and iterations",
        args.iters,
        args.warmup,
        if check {
            "every timed result checked against the exact sum"
        } else {
            "results not checked"
        }
    );
    println!("#");
    println!(
        "# {:>11} {:>11} {:>6} {:>11} {:>10} {:>7} {:>7} {:>7} {:>10} {:>10}",
        "size",
        "count",
        "type",
        "algo",
        "time(us)",
        "algbw",
        "busbw",
        "#wrong",
        "p50(us)",
        "p99(us)"
    );
    println!(
        "# {:>11} {:>11} {:>6} {:>11} {:>10} {:>7} {:>7} {:>7} {:>10} {:>10}",
        "(B)", "(elements)", "", "", "", "(GB/s)", "(GB/s)", "", "", ""
    );
    let mut rows = Vec::new();
    let mut trace = Vec::new();
    for &a in algorithms {
        for &bytes in sizes {
            let op = BenchOp {
                bytes,
                algorithm: a,
                warmup: args.warmup,
                iters: args.iters,
            };
            let results = cluster.bench(spec(args, vec![op], Vec::new(), check))?;
            let r = row(a, bytes, elem, args.iters, &results)?;
            println!(
                "  {:>11} {:>11} {:>6} {:>11} {:>10.1} {:>7.3} {:>7.3} {:>7} {:>10.1} {:>10.1}",
                r.bytes,
                r.count,
                r.elem_type,
                r.algorithm,
                r.time_us,
                r.algbw_gbs,
                r.busbw_gbs,
                if check {
                    r.wrong.to_string()
                } else {
                    "N/A".into()
                },
                r.p50_us,
                r.p99_us
            );
            chrome_events(a, bytes, &results, &mut trace);
            rows.push(r);
        }
    }
    let summaries = summarize(&rows, algorithms, world);
    let wrong: u64 = rows.iter().map(|r| r.wrong).sum();
    let avg_busbw = rows.iter().map(|r| r.busbw_gbs).sum::<f64>() / rows.len().max(1) as f64;
    println!("#");
    for s in &summaries {
        let fit = match (s.alpha_us, s.beta_gbs, s.fit_rms_rel) {
            (Some(a), b, Some(e)) => format!(
                "α-β fit: α = {a:.1} us, β = {} (rms relative residual {:.0}%)",
                b.map_or(
                    "unresolved (every size latency-bound)".to_string(),
                    |b| format!("{b:.3} GB/s")
                ),
                100.0 * e
            ),
            _ => "α-β fit: needs two sizes".to_string(),
        };
        println!(
            "# {:>11}: avg bus bandwidth {:.3} GB/s over {} sizes; {fit}",
            s.algorithm, s.avg_busbw_gbs, s.sizes
        );
    }
    println!(
        "# Out of bounds values : {wrong} {}",
        if wrong == 0 { "OK" } else { "FAILED" }
    );
    println!("# Avg bus bandwidth    : {avg_busbw:.3} GB/s");
    println!("#");

    let mut w = csv::Writer::from_path(out.join("allreduce.csv"))
        .with_context(|| format!("creating {}", out.join("allreduce.csv").display()))?;
    for r in &rows {
        w.serialize(r)?;
    }
    w.flush()?;
    let json = serde_json::json!({
        "world": world,
        "reduce": args.reduce,
        "transport": args.transport,
        "type": elem.1,
        "chunk_bytes": args.chunk_bytes,
        "iters": args.iters,
        "warmup": args.warmup,
        "check": check,
        "seed": args.seed,
        "rows": rows,
        "algorithms": summaries,
        "avg_busbw_gbs": avg_busbw,
        "wrong": wrong,
    });
    std::fs::write(
        out.join("allreduce.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    if args.trace_every > 0 {
        write_trace(out, trace)?;
    }
    println!("wrote {}", out.join("allreduce.csv").display());
    if wrong > 0 {
        bail!(
            "{wrong} elements were wrong: the all-reduce returned sums that differ from the exact ones"
        );
    }
    if let Some(min) = args.min_busbw
        && avg_busbw < min
    {
        bail!("average bus bandwidth {avg_busbw:.3} GB/s is below --min-busbw {min} GB/s");
    }
    Ok(())
}

fn write_trace(out: &Path, events: Vec<ChromeEvent>) -> Result<()> {
    let path = out.join("trace.json");
    let n = events.len();
    std::fs::write(
        &path,
        serde_json::to_string(&serde_json::json!({
            "traceEvents": events,
            "displayTimeUnit": "ms",
        }))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({n} events)", path.display());
    Ok(())
}

/// What the stress mode did.
#[derive(Debug, Default, Serialize)]
struct StressReport {
    seconds: f64,
    rounds: u64,
    all_reduces: u64,
    bytes_reduced: u64,
    by_algorithm: BTreeMap<String, u64>,
    /// How many rounds ran on each number of ranks.
    by_members: BTreeMap<usize, u64>,
    smallest_bytes: u64,
    largest_bytes: u64,
    wrong: u64,
    lost: u64,
    /// Generations the cluster went through, with their sizes.
    generations: BTreeMap<u64, usize>,
    /// Rounds interrupted by a membership change and run again.
    interrupted: u64,
}

/// All-reduces per stress round.
const STRESS_OPS: usize = 8;

fn stress(
    cluster: &mut Cluster,
    args: &AllreduceArgs,
    sizes: &[u64],
    algorithms: &[Algorithm],
    elem: (u64, &'static str),
    seconds: f64,
    out: &Path,
) -> Result<()> {
    let world = cluster.workers();
    let (lo, hi) = (sizes[0], *sizes.last().expect("at least one size"));
    println!(
        "# batchlab bench allreduce --stress {seconds} s: {world} ranks, {} ({}), sizes {lo}–{hi} bytes, \
         algorithms {}, random member subsets, every result checked",
        args.reduce,
        elem.1,
        algorithms
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    let started = Instant::now();
    let mut report = StressReport {
        smallest_bytes: u64::MAX,
        ..StressReport::default()
    };
    let mut trace = Vec::new();
    let mut last_print = Instant::now();
    let (mut generation, mut world) = cluster.membership();
    report.generations.insert(generation, world);
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        let mut g = rng(args.seed, Stream::Aux, report.rounds);
        // Members: a random subset of at least min(2, world) ranks, in random plan order.
        let size = g.random_range(world.min(2)..=world);
        let mut ranks: Vec<u32> = (0..world as u32).collect();
        for i in (1..ranks.len()).rev() {
            ranks.swap(i, g.random_range(0..=i));
        }
        ranks.truncate(size);
        let (lo_log, hi_log) = ((lo as f64).ln(), (hi as f64).ln());
        let ops: Vec<BenchOp> = (0..STRESS_OPS)
            .map(|_| {
                let b = (g.random_range(lo_log..=hi_log)).exp() as u64;
                let b = (b / elem.0).max(1) * elem.0;
                let a = algorithms[g.random_range(0..algorithms.len())];
                BenchOp {
                    bytes: b,
                    algorithm: a,
                    warmup: 0,
                    iters: 1,
                }
            })
            .collect();
        let mut s = spec(args, ops.clone(), ranks.clone(), true);
        s.seed = args.seed.wrapping_add(report.rounds);
        let results = match cluster.bench(s) {
            Ok(r) => r,
            // A worker lost or added mid-round: the round runs again on the next generation.
            Err(e) => match cluster.membership_changed(generation)? {
                Some((g, w)) => {
                    println!(
                        "  {:>6.1} s: round {} interrupted ({e:#}); generation {g} has {w} workers; running it again",
                        started.elapsed().as_secs_f64(),
                        report.rounds
                    );
                    report.interrupted += 1;
                    (generation, world) = (g, w);
                    report.generations.insert(g, w);
                    continue;
                }
                None => return Err(e),
            },
        };
        if cluster.membership().0 != generation {
            // A generation forms between rounds (a worker joined or left): the next round runs
            // on it.
            let (g, w) = cluster.settle()?;
            (generation, world) = (g, w);
            report.generations.insert(g, w);
        }
        for r in &results {
            let expected_member = ranks.contains(&(r.rank as u32));
            if r.member != expected_member {
                report.lost += ops.len() as u64;
                continue;
            }
            if !r.member {
                continue;
            }
            for i in 0..ops.len() {
                match r.ops.get(i) {
                    Some(o) if o.checked == 1 && o.times_s.len() == 1 => report.wrong += o.wrong,
                    _ => report.lost += 1,
                }
            }
        }
        if results.len() != world {
            report.lost += world.abs_diff(results.len()) as u64 * ops.len() as u64;
        }
        for op in &ops {
            report.all_reduces += 1;
            report.bytes_reduced += op.bytes;
            *report
                .by_algorithm
                .entry(op.algorithm.name().to_string())
                .or_default() += 1;
            report.smallest_bytes = report.smallest_bytes.min(op.bytes);
            report.largest_bytes = report.largest_bytes.max(op.bytes);
        }
        *report.by_members.entry(ranks.len()).or_default() += 1;
        if args.trace_every > 0 {
            for (i, op) in ops.iter().enumerate() {
                let a = op.algorithm;
                let one: Vec<BenchRankResult> = results
                    .iter()
                    .map(|r| BenchRankResult {
                        trace: r
                            .trace
                            .iter()
                            .filter(|e| e.op as usize == i)
                            .cloned()
                            .collect(),
                        ..r.clone()
                    })
                    .collect();
                chrome_events(a, op.bytes, &one, &mut trace);
            }
        }
        report.rounds += 1;
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "  {:>6.1} s: {} rounds, {} all-reduces, {:.2} GiB, wrong {}, lost {}",
                started.elapsed().as_secs_f64(),
                report.rounds,
                report.all_reduces,
                report.bytes_reduced as f64 / f64::from(1u32 << 30),
                report.wrong,
                report.lost
            );
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    println!(
        "# stress: {:.1} s, {} rounds, {} all-reduces ({}), {:.2} GiB reduced, sizes {}–{} bytes",
        report.seconds,
        report.rounds,
        report.all_reduces,
        report
            .by_algorithm
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        report.bytes_reduced as f64 / f64::from(1u32 << 30),
        report.smallest_bytes,
        report.largest_bytes
    );
    println!(
        "# membership: rounds on {}; generations {} ; {} rounds interrupted by a change and run again",
        report
            .by_members
            .iter()
            .map(|(m, n)| format!("{m} ranks: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        report
            .generations
            .iter()
            .map(|(g, w)| format!("{g} ({w} workers)"))
            .collect::<Vec<_>>()
            .join(", "),
        report.interrupted
    );
    println!(
        "# wrong elements: {}; lost results: {} {}",
        report.wrong,
        report.lost,
        if report.wrong == 0 && report.lost == 0 {
            "OK"
        } else {
            "FAILED"
        }
    );
    std::fs::write(
        out.join("stress.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if args.trace_every > 0 {
        write_trace(out, trace)?;
    }
    if report.wrong > 0 || report.lost > 0 {
        bail!(
            "stress test failed: {} wrong elements, {} lost results",
            report.wrong,
            report.lost
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchlab_net::bench::OpResult;

    #[test]
    fn sizes_follow_nccl_tests_and_bad_ranges_name_the_flag() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12X").unwrap_err().contains("\"12X\""));
        assert_eq!(
            sizes(1024, 8192, 2, 8).unwrap(),
            vec![1024, 2048, 4096, 8192]
        );
        assert_eq!(sizes(1000, 5000, 4, 8).unwrap(), vec![1000, 4000]);
        assert_eq!(sizes(4, 64, 4, 8).unwrap(), vec![16, 64]);
        assert_eq!(sizes(4096, 4096, 1, 4).unwrap(), vec![4096]);
        assert!(sizes(8, 4, 2, 8).unwrap_err().to_string().contains("-b 8"));
        assert!(sizes(8, 64, 1, 8).unwrap_err().to_string().contains("-f 1"));
        assert!(sizes(1, 7, 2, 8).is_err());
        assert!(algorithms(&["ring".into(), "nope".into()]).is_err());
        assert_eq!(algorithms(&["all".into()]).unwrap().len(), 4);
    }

    #[test]
    fn a_row_averages_every_ranks_iterations_and_busbw_uses_the_bus_factor() {
        let rank = |r: usize, times: &[f64], wrong: u64| BenchRankResult {
            rank: r,
            member: true,
            ops: vec![OpResult {
                times_s: times.to_vec(),
                wrong,
                checked: times.len() as u64,
            }],
            trace: Vec::new(),
        };
        // 4 ranks, 1 MB in 1 ms on average: algbw 1 GB/s, busbw 1.5 GB/s.
        let results: Vec<BenchRankResult> = (0..4)
            .map(|r| rank(r, &[0.5e-3, 1.5e-3], u64::from(r == 2)))
            .collect();
        let r = row(Algorithm::Ring, 1_000_000, (8, "int64"), 2, &results).unwrap();
        assert!((r.time_us - 1000.0).abs() < 1e-9);
        assert!((r.algbw_gbs - 1.0).abs() < 1e-12);
        assert!((r.busbw_gbs - 1.5).abs() < 1e-12);
        assert_eq!((r.wrong, r.checked, r.count), (1, 8, 125_000));
        assert!((r.p50_us - 500.0).abs() < 1e-9 && (r.p99_us - 1500.0).abs() < 1e-9);
        // A rank with fewer timings than asked is a lost result.
        let mut short = results.clone();
        short[3].ops[0].times_s.pop();
        let e = row(Algorithm::Ring, 1_000_000, (8, "int64"), 2, &short).unwrap_err();
        assert!(e.to_string().contains("rank 3"), "{e}");
        assert_eq!(stats::nearest_rank(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(stats::nearest_rank(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
