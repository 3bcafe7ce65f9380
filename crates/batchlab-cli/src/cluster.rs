//! `batchlab coordinator`, `batchlab worker` and `batchlab run`: training across processes.
//!
//! `run` is the embedded default: a coordinator in this process on loopback and N worker
//! processes of this same binary, which are killed when this process stops (error, Ctrl-C or
//! success alike).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use batchlab_net::{Coordinator, CoordinatorConfig, RankTiming, RunOutcome, WorkerConfig};
use batchlab_proto::v1::RunSpec;
use clap::Args;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::train::{Prepared, Sink, TrainArgs};

/// How the workers reduce gradients.
#[derive(Args, Debug, Clone)]
pub struct ReduceArgs {
    /// All-reduce algorithm: ring, tree, rhd (recursive halving-doubling), centralized.
    #[arg(long, default_value = "ring")]
    allreduce: String,
    /// Reduction: exact (fixed point: bit-identical on any number of workers) or fast (f32
    /// sums: per element within W·2⁻²⁴·Σ|rank sums| of the exact sum; half the bytes).
    #[arg(long, default_value = "exact")]
    reduce: String,
    /// Largest piece of a collective message, in bytes (1–16 MiB avoids every size cliff).
    #[arg(long, default_value_t = 4 << 20)]
    chunk_bytes: u64,
    /// Deadline for any one receive from a peer, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    peer_timeout_ms: u64,
    /// A worker silent for this many milliseconds is lost and the run stops.
    #[arg(long, default_value_t = 5_000)]
    heartbeat_timeout_ms: u64,
}

impl ReduceArgs {
    fn spec(&self, p: &Prepared) -> Result<RunSpec> {
        self.allreduce
            .parse::<batchlab_collective::Algorithm>()
            .map_err(|e| anyhow!("--allreduce {}: {e}", self.allreduce))?;
        if !matches!(self.reduce.as_str(), "exact" | "fast") {
            bail!("--reduce {}: expected exact or fast", self.reduce);
        }
        if !(1..=(64 << 20)).contains(&self.chunk_bytes) {
            bail!(
                "--chunk-bytes {}: expected 1 to {} bytes",
                self.chunk_bytes,
                64 << 20
            );
        }
        Ok(RunSpec {
            config_toml: toml::to_string(&p.cfg).context("rendering the config")?,
            allreduce: self.allreduce.clone(),
            reduce: self.reduce.clone(),
            chunk_bytes: self.chunk_bytes,
            peer_timeout_ms: self.peer_timeout_ms,
        })
    }

    fn coordinator_config(&self, workers: usize, token: String) -> CoordinatorConfig {
        let mut c = CoordinatorConfig::new(workers, token);
        c.heartbeat_timeout = Duration::from_millis(self.heartbeat_timeout_ms.max(100));
        c.heartbeat_interval =
            (c.heartbeat_timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(500));
        c
    }
}

/// Flags of `batchlab run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Number of local worker processes.
    #[arg(short = 'w', long, default_value_t = 2)]
    workers: usize,
    #[command(flatten)]
    reduce: ReduceArgs,
}

/// Flags of `batchlab coordinator`.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Address to listen on. A non-loopback address requires --token.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Number of workers to wait for (default: WORLD_SIZE or SLURM_NTASKS, else 1).
    #[arg(short = 'w', long)]
    workers: Option<usize>,
    /// The run's shared secret; every worker must give the same.
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

/// Flags of `batchlab worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The coordinator's address (default: MASTER_ADDR:MASTER_PORT when set).
    #[arg(long)]
    coordinator: Option<String>,
    /// The run's shared secret.
    #[arg(
        long,
        env = "BATCHLAB_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// Where this worker's peer service listens.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// The address other workers reach this one at, `HOST` or `HOST:PORT` (for hosts with several
    /// interfaces; a bare HOST gets the listening port).
    #[arg(long)]
    advertise: Option<String>,
    /// Rank to request (default: RANK, SLURM_PROCID or JOB_COMPLETION_INDEX when set).
    #[arg(long)]
    rank: Option<u32>,
    /// Seconds to keep trying to reach the coordinator and the peers.
    #[arg(long, default_value_t = 60)]
    connect_timeout: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn env_number(names: &[&str]) -> Result<Option<u64>> {
    for name in names {
        if let Ok(v) = std::env::var(name) {
            let n = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("{name}={v}: expected a non-negative integer"))?;
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Runs `batchlab worker`.
pub fn worker(args: WorkerArgs) -> Result<()> {
    let coordinator = match args.coordinator {
        Some(c) => c,
        None => match (std::env::var("MASTER_ADDR"), std::env::var("MASTER_PORT")) {
            (Ok(a), Ok(p)) => format!("{a}:{p}"),
            _ => bail!(
                "no coordinator address: give --coordinator HOST:PORT or set MASTER_ADDR and MASTER_PORT"
            ),
        },
    };
    let requested_rank = match args.rank {
        Some(r) => Some(r),
        None => env_number(&["RANK", "SLURM_PROCID", "JOB_COMPLETION_INDEX"])?
            .map(|r| u32::try_from(r).context("rank out of range"))
            .transpose()?,
    };
    let cfg = WorkerConfig {
        coordinator,
        token: args.token,
        listen: args.listen,
        advertise: args.advertise,
        requested_rank,
        connect_timeout: Duration::from_secs(args.connect_timeout),
    };
    runtime()?
        .block_on(batchlab_net::run_worker(cfg))
        .map_err(|e| anyhow!(e))
}

/// Runs `batchlab coordinator`: waits for the workers, runs the configured training on them,
/// writes the results, and shuts the workers down.
pub fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let Some(p) = args.train.prepare("run")? else {
        return Ok(());
    };
    if args.token.is_empty() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without a token: anyone who reaches it could join. \
             Set --token or BATCHLAB_TOKEN (the same on every worker)",
            args.listen
        );
    }
    let workers = match args.workers {
        Some(w) => w,
        None => env_number(&["WORLD_SIZE", "SLURM_NTASKS"])?.map_or(1, |w| w as usize),
    };
    if workers == 0 {
        bail!("--workers 0: expected at least 1 worker");
    }
    let spec = args.reduce.spec(&p)?;
    let cfg = args.reduce.coordinator_config(workers, args.token.clone());
    let listen = args.listen;
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, workers, "coordinator listening");
        let coordinator = Coordinator::new(cfg);
        let (stop, mut server) = serve(&coordinator, listener);
        let result = drive(&coordinator, &p, spec, None).await.map(|_| ());
        match &result {
            Ok(_) => coordinator.shutdown_workers("run finished"),
            Err(e) => coordinator.abort_and_shutdown(&format!("the coordinator stopped: {e}")),
        }
        // Give workers a moment to hear the shutdown before the server goes away.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.send(true);
        // Graceful shutdown waits for open calls; a frozen worker's never end, so bound it.
        if tokio::time::timeout(Duration::from_secs(2), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        result
    })
}

fn serve(
    coordinator: &Coordinator,
    listener: TcpListener,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let c = coordinator.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = c.serve(listener, shutdown).await {
            tracing::error!("coordinator server: {e}");
        }
    });
    (stop, server)
}

/// Waits for the workers and runs the training, with Ctrl-C and dead children ending it;
/// writes the results (with each rank's timing) and prints the outcome.
async fn drive(
    coordinator: &Coordinator,
    p: &Prepared,
    spec: RunSpec,
    children: Option<&mut Vec<Child>>,
) -> Result<RunOutcome> {
    let mut sink = Sink::create(p)?;
    let mut write_error = None;
    let work = async {
        coordinator.wait_ready(Duration::from_secs(120)).await?;
        tracing::info!(
            task = p.plan.task.name(),
            params = p.plan.task.num_params(),
            "all workers joined; training"
        );
        coordinator
            .run(spec, |row| {
                if let Err(e) = sink.row(&row) {
                    write_error.get_or_insert(e);
                }
            })
            .await
    };
    let dead_child = async {
        match children {
            Some(children) => loop {
                for (i, c) in children.iter_mut().enumerate() {
                    if let Ok(Some(status)) = c.try_wait() {
                        return anyhow!("worker process {i} exited early with {status}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        r = work => r.map_err(|e| anyhow!(e))?,
        e = dead_child => return Err(e),
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    if let Some(e) = write_error {
        return Err(e);
    }
    let mut extra = serde_json::Map::new();
    extra.insert(
        "timing".to_string(),
        serde_json::to_value(&outcome.timings)?,
    );
    sink.finish(&outcome.summary, &p.cfg, extra)?;
    print_timing(&outcome.timings);
    Ok(outcome)
}

/// Mean per-step milliseconds over ranks: (compute, all-reduce, apply), and the slowest rank's
/// step (their sum).
pub fn step_breakdown(timings: &[RankTiming]) -> (f64, f64, f64, f64) {
    let per_step = |t: &RankTiming, x: f64| 1e3 * x / t.steps.max(1) as f64;
    let n = timings.len().max(1) as f64;
    let mean =
        |f: fn(&RankTiming) -> f64| timings.iter().map(|t| per_step(t, f(t))).sum::<f64>() / n;
    let step = timings
        .iter()
        .map(|t| per_step(t, t.compute_s + t.comm_s + t.apply_s))
        .fold(0.0, f64::max);
    (
        mean(|t| t.compute_s),
        mean(|t| t.comm_s),
        mean(|t| t.apply_s),
        step,
    )
}

fn print_timing(timings: &[RankTiming]) {
    let (compute, comm, apply, step) = step_breakdown(timings);
    println!(
        "per step ({} ranks, mean): compute {compute:.3} ms, all-reduce {comm:.3} ms, update {apply:.3} ms; \
         step {step:.3} ms",
        timings.len()
    );
}

/// A random token for a loopback cluster.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs `batchlab run --workers N`.
pub fn run(args: RunArgs) -> Result<()> {
    let Some(p) = args.train.prepare("run")? else {
        return Ok(());
    };
    run_local(&p, args.workers, &args.reduce).map(|_| ())
}

/// Trains `p` on `workers` local worker processes of this binary, coordinated from this process
/// over loopback; no process outlives the call.
pub fn run_local(p: &Prepared, workers: usize, reduce: &ReduceArgs) -> Result<RunOutcome> {
    if workers == 0 {
        bail!("--workers 0: expected at least 1 worker");
    }
    let spec = reduce.spec(p)?;
    let token = random_token()?;
    let cfg = reduce.coordinator_config(workers, token.clone());
    let exe = std::env::current_exe().context("locating the batchlab binary")?;
    runtime()?.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let addr = listener.local_addr()?;
        let coordinator = Coordinator::new(cfg);
        let (stop, mut server) = serve(&coordinator, listener);
        let mut children = Vec::with_capacity(workers);
        for _ in 0..workers {
            let child = Command::new(&exe)
                .args([
                    "worker",
                    "--coordinator",
                    &addr.to_string(),
                    "--listen",
                    "127.0.0.1:0",
                ])
                .env("BATCHLAB_TOKEN", &token)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()),
                )
                .env_remove("RANK")
                .env_remove("SLURM_PROCID")
                .env_remove("JOB_COMPLETION_INDEX")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {}", exe.display()))?;
            children.push(child);
        }
        tracing::info!(workers, %addr, "started local workers");
        let result = drive(&coordinator, p, spec, Some(&mut children)).await;
        match &result {
            Ok(_) => coordinator.shutdown_workers("run finished"),
            Err(e) => coordinator.abort_and_shutdown(&format!("the coordinator stopped: {e}")),
        }
        // Workers exit on their own after the shutdown; anything still running is killed.
        for child in &mut children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        let _ = stop.send(true);
        // Graceful shutdown waits for open calls; a frozen worker's never end, so bound it.
        if tokio::time::timeout(Duration::from_secs(2), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        result
    })
}

/// Flags of `batchlab bench step`.
#[derive(Args, Debug)]
pub struct BenchStepArgs {
    /// The run to time; defaults to a 784-256-256-10 MLP on teacher data, B = 256 in 8
    /// microbatches, 30 steps, no evaluation. Any train flag overrides it.
    #[command(flatten)]
    train: TrainArgs,
    /// Worker counts to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    #[command(flatten)]
    reduce: ReduceArgs,
}

/// Runs `batchlab bench step`: the same run on each worker count, and where a step's time goes.
pub fn bench_step(args: BenchStepArgs) -> Result<()> {
    const BASE: &[&str] = &[
        "task.kind=\"mlp\"",
        "batch=256",
        "micro=32",
        "lr=0.05",
        "steps=30",
        "eval_every=0",
    ];
    let Some(p) = args.train.prepare_with_base("bench-step", BASE)? else {
        return Ok(());
    };
    let mut rows = Vec::new();
    for &w in &args.workers {
        let mut pw = Prepared {
            cfg: p.cfg.clone(),
            plan: p.plan.clone(),
            out: p.out.join(format!("w{w}")),
        };
        pw.out = p.out.join(format!("w{w}"));
        let outcome = run_local(&pw, w, &args.reduce)?;
        rows.push((
            w,
            step_breakdown(&outcome.timings),
            outcome.summary.params_digest,
        ));
    }
    println!();
    println!(
        "step time of {} ({} params), B = {}, m = {}, {} all-reduce, {} reduction, {} steps; {} cores here",
        p.plan.task.name(),
        p.plan.task.num_params(),
        p.cfg.batch,
        p.plan.micro,
        args.reduce.allreduce,
        args.reduce.reduce,
        p.cfg.steps,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>7}  {:>9}  {:>10}  {:>13}  {:>7}  {:>9}  params",
        "workers", "step ms", "compute ms", "all-reduce ms", "comm %", "update ms"
    );
    for (w, (compute, comm, apply, step), digest) in &rows {
        println!(
            "{w:>7}  {step:>9.3}  {compute:>10.3}  {comm:>13.3}  {:>6.1}%  {apply:>9.3}  {digest}",
            100.0 * comm / (compute + comm + apply).max(1e-12)
        );
    }
    Ok(())
}
