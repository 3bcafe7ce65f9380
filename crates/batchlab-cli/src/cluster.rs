//! `batchlab coordinator`, `batchlab worker` and `batchlab run`: training across processes.
//!
//! `run` is the embedded default: a coordinator in this process on loopback and N worker
//! processes of this same binary, which are killed when this process stops (error, Ctrl-C or
//! success alike).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use batchlab_collective::Algorithm;
use batchlab_core::ConfigError;
use batchlab_core::driver::{ReduceMode, Reduction};
use batchlab_core::train::{RunPlan, StepMetrics, TrainConfig};
use batchlab_net::bench::BenchRankResult;
use batchlab_net::{BenchOrder, RunOrder, Transport};
use batchlab_net::{
    Checkpoint, Coordinator, CoordinatorConfig, RankTiming, RunOutcome, WorkerConfig,
};
use clap::Args;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::train::{Prepared, Sink, TrainArgs};

/// Mutual TLS on every TCP connection of a cluster: the gRPC control plane and the data
/// plane's TCP streams (Unix sockets between workers on one host are not wrapped).
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// This process's TLS certificate chain (PEM). With --tls-key and --tls-ca every TCP
    /// connection of the cluster uses mutual TLS; each process, coordinator and workers, needs
    /// all three.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<std::path::PathBuf>,
    /// The CA certificates every peer's certificate must chain to (PEM).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name every peer's certificate must carry (one certificate for the whole cluster);
    /// default: the host name or address dialled.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS settings, or none; an error names what is missing or unreadable.
    pub fn load(&self) -> Result<Option<batchlab_net::tls::Tls>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => {
                if self.tls_server_name.is_some() {
                    bail!("--tls-server-name needs --tls-cert, --tls-key and --tls-ca");
                }
                Ok(None)
            }
            (Some(cert), Some(key), Some(ca)) => Ok(Some(
                batchlab_net::tls::Tls::from_files(cert, key, ca, self.tls_server_name.clone())
                    .map_err(|e| anyhow!(e))?,
            )),
            _ => {
                let missing: Vec<&str> = [
                    ("--tls-cert", self.tls_cert.is_none()),
                    ("--tls-key", self.tls_key.is_none()),
                    ("--tls-ca", self.tls_ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(f, m)| m.then_some(f))
                .collect();
                bail!(
                    "TLS needs --tls-cert, --tls-key and --tls-ca together; missing {}",
                    missing.join(", ")
                )
            }
        }
    }

    /// The same flags for a local worker process.
    fn forward(&self) -> Vec<std::ffi::OsString> {
        let mut out = Vec::new();
        let paths = [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--tls-ca", &self.tls_ca),
        ];
        for (flag, path) in paths {
            if let Some(p) = path {
                out.push(flag.into());
                out.push(p.clone().into_os_string());
            }
        }
        if let Some(n) = &self.tls_server_name {
            out.push("--tls-server-name".into());
            out.push(n.into());
        }
        out
    }
}

/// How the workers reduce gradients.
#[derive(Args, Debug, Clone)]
pub struct ReduceArgs {
    /// All-reduce algorithm (rhd: recursive halving-doubling).
    #[arg(long, value_enum, default_value_t = Algorithm::Ring)]
    allreduce: Algorithm,
    /// Reduction: exact (fixed point: bit-identical on any number of workers) or fast (f32
    /// sums: per element within W·2⁻²⁴·Σ|rank sums| of the exact sum; half the bytes).
    #[arg(long, value_enum, default_value_t = ReduceMode::Exact)]
    reduce: ReduceMode,
    /// How collective payloads travel: auto (the data plane: Unix sockets between workers on
    /// the same host, TCP between hosts), tcp (the data plane on TCP only) or grpc (gRPC
    /// streams; about half the bandwidth).
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// Exact mode: all-reduce the gradient layer by layer while the backward pass of the last
    /// microbatch still runs on a thread of its own (DDP-style buckets; MLP tasks). The numbers
    /// are the same either way. Off by default: it needs cores to spare (on 2 cores it made
    /// the MLP step slower: `bench step --overlap true`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    overlap: bool,
    /// Largest piece of a collective message, in bytes (1–16 MiB avoids every size cliff).
    #[arg(long, default_value_t = 4 << 20)]
    chunk_bytes: u64,
    /// Deadline for any one receive from a peer, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    peer_timeout_ms: u64,
    /// A worker silent for this many milliseconds is lost: the run stops, or, when elastic,
    /// goes on without it.
    #[arg(long, default_value_t = 5_000)]
    heartbeat_timeout_ms: u64,
    /// Elastic membership (with --listen): go on while at least this many workers remain.
    /// When one is lost the others form the next generation from the freshest state among
    /// them; the numbers do not change. Default: --workers (the run stops on a loss).
    #[arg(long, value_name = "N")]
    min_workers: Option<usize>,
    /// Elastic membership: admit workers that join mid-run, between steps, up to this many;
    /// each takes the run's state from a peer. With a batch that grows (`[batch_schedule]`),
    /// joiners wait as standby and are admitted as the batch needs them (see
    /// --batch-per-worker); `run` then starts the extra local workers as standby. Default:
    /// --workers.
    #[arg(long, value_name = "N")]
    max_workers: Option<usize>,
    /// Elastic growth: samples of a step's batch per worker; the run admits waiting workers
    /// until ceil(B_t / N) work on a step of batch B_t (within --max-workers; never fewer
    /// than it has). Default, for a batch schedule with --max-workers above --workers: the
    /// first batch's share, ceil(B_0 / --workers). 0: admit every joiner at once.
    #[arg(long, value_name = "N")]
    batch_per_worker: Option<u64>,
    /// Elastic membership: seconds to wait, paused, with fewer than --min-workers workers
    /// before the run stops.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pause_timeout: u64,
    /// Save each run's state in its folder (checkpoint.cbor) every this many steps (0: never),
    /// after the rows it covers; the same command started again resumes an unfinished run from
    /// it, with the numbers of an uninterrupted run. Removed once the run ends.
    #[arg(long, default_value_t = 100, value_name = "STEPS")]
    checkpoint_every: u64,
    /// Seconds to wait for the --workers N workers to join (local ones to start, or ones
    /// started elsewhere to reach --listen) before giving up, saying how many joined.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    join_timeout: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

impl ReduceArgs {
    /// Checks the flags once, before any worker starts.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.min_workers == Some(0) {
            bail!("--min-workers 0: expected at least 1");
        }
        if let (Some(lo), Some(hi)) = (self.min_workers, self.max_workers)
            && lo > hi
        {
            bail!("--min-workers {lo} is above --max-workers {hi}");
        }
        // The core names the setting; here it is a flag.
        self.reduction()
            .check(self.elastic_flags())
            .map_err(|e| match e {
                ConfigError::Invalid {
                    field,
                    value,
                    expected,
                } => anyhow!("--{} {value}: expected {expected}", field.replace('_', "-")),
                other => anyhow!(other),
            })
    }

    /// The reduction the flags describe.
    pub(crate) fn reduction(&self) -> Reduction {
        Reduction {
            mode: self.reduce,
            algorithm: self.allreduce,
            chunk_bytes: self.chunk_bytes,
            overlap: self.overlap,
        }
    }

    /// Samples per worker for elastic growth in a run of `plan` on `workers` (0: none; see
    /// --batch-per-worker).
    fn batch_per_worker(&self, plan: &RunPlan, workers: usize) -> u64 {
        match self.batch_per_worker {
            Some(n) => n,
            None if self.max_workers.is_some_and(|m| m > workers)
                && !plan.batching.is_constant() =>
            {
                plan.batching.first().div_ceil(workers as u64)
            }
            None => 0,
        }
    }

    /// Whether --min-workers or --max-workers was given.
    fn elastic_flags(&self) -> bool {
        self.min_workers.is_some() || self.max_workers.is_some()
    }

    /// The order of a run of `cfg` (a seed-mean group when `seeds` is not empty).
    fn spec(&self, cfg: &TrainConfig, seeds: &[u64], return_params: bool) -> Result<RunOrder> {
        self.validate()?;
        let mut order = RunOrder::new(cfg.clone(), seeds.to_vec(), self.reduction());
        order.peer_timeout_ms = self.peer_timeout_ms;
        order.return_params = return_params;
        order.transport = self.transport;
        Ok(order)
    }

    /// Settings for a cluster that only benchmarks collectives (the algorithm and reduction
    /// come with each benchmark spec).
    pub fn for_bench(
        transport: Transport,
        chunk_bytes: u64,
        peer_timeout_ms: u64,
        heartbeat_timeout_ms: u64,
        tls: TlsArgs,
        membership: (Option<usize>, Option<usize>),
    ) -> Self {
        Self {
            tls,
            overlap: false,
            transport,
            allreduce: Algorithm::Ring,
            reduce: ReduceMode::Exact,
            chunk_bytes,
            peer_timeout_ms,
            heartbeat_timeout_ms,
            min_workers: membership.0,
            max_workers: membership.1,
            batch_per_worker: None,
            pause_timeout: 300,
            checkpoint_every: 0,
            join_timeout: 120,
        }
    }

    fn coordinator_config(&self, workers: usize, token: String) -> Result<CoordinatorConfig> {
        let mut c = CoordinatorConfig::new(workers, token);
        c.min_workers = self.min_workers.unwrap_or(workers);
        c.max_workers = self.max_workers.unwrap_or(workers);
        if c.min_workers > workers || c.max_workers < workers {
            bail!(
                "--min-workers {} and --max-workers {} must bracket --workers {workers} (the \
                 number the run starts with)",
                c.min_workers,
                c.max_workers
            );
        }
        c.pause_timeout = Duration::from_secs(self.pause_timeout);
        c.tls = self.tls.load()?;
        c.unix_sockets = self.transport.unix_sockets();
        c.heartbeat_timeout = Duration::from_millis(self.heartbeat_timeout_ms.max(100));
        c.heartbeat_interval =
            (c.heartbeat_timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(500));
        Ok(c)
    }
}

const RUN_HELP: &str = "\
Examples:
  batchlab run --workers 4                            # the default NQM run on 4 local workers
  batchlab run --workers 2 --task mlp --batch 256 --micro 32 --steps 200
  batchlab run --workers 4 --allreduce tree --reduce fast
  batchlab run --workers 1 --max-workers 4 --set batch_schedule.kind='\"step\"' \\
      --set batch_schedule.at='[100, 200]'          # workers join as the batch doubles
The numbers equal `batchlab train`'s with the same flags (exact reduction), on any --workers.";

const COORDINATOR_HELP: &str = "\
Examples:
  batchlab coordinator --listen 0.0.0.0:7070 --workers 4 --token $SECRET --steps 500
      then on each host: batchlab worker --coordinator HOST:7070 --token $SECRET
  batchlab coordinator --listen 0.0.0.0:7070 --workers 4 --min-workers 2 --max-workers 8 \\
                       --token $SECRET              # elastic: go on while 2 remain
  batchlab coordinator --workers 8 --join-timeout 600 ...   # wait up to 10 min for workers";

const BENCH_STEP_HELP: &str = "\
Examples:
  batchlab bench step                                 # MLP 784-256-256-10, B = 256, on 1, 2, 4
  batchlab bench step --workers 1,2 --compare-overlap
  batchlab bench step --task nqm --set task.dim=100000 --batch 64";

/// Flags of `batchlab run`.
#[derive(Args, Debug)]
#[command(mut_arg("out", |a| a.help("Output folder for config.toml, metrics.csv, summary.json (and checkpoint.cbor while it runs). Default: runs/run-{task}-B{batch}-lr{lr}-s{seed}")))]
// Elastic membership needs workers started on their own (`coordinator --listen`).
#[command(mut_arg("min_workers", |a| a.hide(true)), mut_arg("pause_timeout", |a| a.hide(true)))]
#[command(after_long_help = RUN_HELP)]
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
#[command(mut_arg("out", |a| a.help("Output folder for the cluster's run: config.toml, metrics.csv, summary.json (and checkpoint.cbor while it runs). Default: runs/run-{task}-B{batch}-lr{lr}-s{seed}")))]
#[command(after_long_help = COORDINATOR_HELP)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Address to listen on, HOST:PORT (a name such as localhost is resolved). A non-loopback
    /// address requires --token.
    #[arg(long, default_value = "127.0.0.1:7070", value_parser = socket_addr)]
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
    /// Where this worker's peer service listens, HOST:PORT (a name such as localhost is
    /// resolved).
    #[arg(long, default_value = "0.0.0.0:0", value_parser = socket_addr)]
    listen: SocketAddr,
    /// Port of this worker's data plane (collective payloads), on the --listen interface
    /// (0: any free port; fix it where a firewall or a container's port list needs it).
    #[arg(long, default_value_t = 0)]
    data_port: u16,
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
    /// Milliseconds added to this worker's computation of every step: a straggler on purpose
    /// (the numbers do not change; every other rank waits for it at each all-reduce).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    inject_delay: u64,
    /// Milliseconds of one-way latency added before every collective message this worker sends
    /// on the data plane: a slow link on purpose where the kernel cannot emulate one (`tc
    /// netem` missing; `tc tbf` shapes bandwidth only).
    #[arg(long, default_value_t = 0.0, value_name = "MS", value_parser = latency_ms)]
    link_latency: f64,
    /// When the coordinator goes away (killed, restarted, cut off), join it again, for up to
    /// --connect-timeout, instead of exiting: a restarted experiment (which resumes from its
    /// finished trials) finds its workers.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    rejoin: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Parses a `--listen` address: `HOST:PORT`, with HOST an IP address or a name (`localhost`)
/// resolved to its first address.
pub fn socket_addr(text: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    let expected = "expected HOST:PORT, e.g. 127.0.0.1:7070, [::1]:7070 or localhost:7070";
    if text
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(format!("`{text}`: {expected}"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{text}`: the name resolves to no address; {expected}")),
        Err(e) => Err(format!("`{text}`: {e}; {expected}")),
    }
}

/// Checks a `--token`: empty (no token) or a secret with no blank at either end (one of spaces
/// would look set and be trivially guessed).
pub fn check_token(token: &str) -> Result<()> {
    if !token.is_empty() && (token.trim().is_empty() || token.trim() != token) {
        bail!(
            "--token {token:?}: expected a secret with no blanks at either end (e.g. \
             `openssl rand -hex 16`), or none at all for loopback-only runs"
        );
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves with the signal's name on SIGINT (Ctrl-C) or SIGTERM (`docker stop`, `kubectl
/// delete`, Slurm's end of job). A container's first process gets no default handler for
/// SIGTERM, so without this one it would be ignored until the engine's SIGKILL.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
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
    check_token(&args.token)?;
    if args.token.is_empty() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without a token: anyone who reaches it could send this \
             worker collective data. Set --token or BATCHLAB_TOKEN (the coordinator's), or \
             --listen 127.0.0.1:0 for workers on this host only",
            args.listen
        );
    }
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
    batchlab_net::dataplane::set_link_latency(Duration::from_secs_f64(args.link_latency / 1e3));
    let cfg = WorkerConfig {
        coordinator,
        token: args.token,
        listen: args.listen,
        data_port: args.data_port,
        advertise: args.advertise,
        requested_rank,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        inject_delay: Duration::from_millis(args.inject_delay),
        tls: args.tls.load()?,
        rejoin: args.rejoin,
    };
    runtime()?.block_on(async {
        tokio::select! {
            r = batchlab_net::run_worker(cfg) => r.map_err(|e| anyhow!(e)),
            sig = stop_signal() => bail!("worker stopped by {sig}"),
        }
    })
}

/// Runs `batchlab coordinator`: waits for the workers, runs the configured training on them,
/// writes the results, and shuts the workers down.
pub fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let Some(p) = args.train.prepare("run")? else {
        return Ok(());
    };
    let workers = match args.workers {
        Some(w) => w,
        None => env_number(&["WORLD_SIZE", "SLURM_NTASKS"])?.map_or(1, |w| w as usize),
    };
    let mut cluster = Cluster::listen(args.listen, workers, &args.token, &args.reduce)?;
    let result = drive(&mut cluster, &p);
    cluster.close(result.as_ref().err());
    result.map(|_| ())
}

/// A cluster of workers this process coordinates: local worker processes of this binary, or
/// workers that join from anywhere. Runs execute on it one at a time; [`Cluster::close`] (or
/// dropping it) shuts the workers down.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    coordinator: Coordinator,
    /// Local worker processes (killed when dropped).
    children: Vec<Child>,
    /// How to start one more local worker (local clusters only).
    local: Option<LocalLaunch>,
    /// Elastic growth of the runs: samples per worker (0: none; see --batch-per-worker).
    batch_per_worker: u64,
    stop: tokio::sync::watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
    reduce: ReduceArgs,
    workers: usize,
    closed: bool,
}

impl Cluster {
    /// Starts `workers` local worker processes of this binary, coordinated from this process
    /// over loopback with a random token, and waits until they joined.
    pub fn local(workers: usize, reduce: &ReduceArgs) -> Result<Self> {
        if workers == 0 {
            bail!("--workers 0: expected at least 1 worker");
        }
        reduce.validate()?;
        if reduce.min_workers.is_some() {
            bail!(
                "--min-workers needs workers started on their own (--listen and `batchlab \
                 worker`): local workers live and die with this process"
            );
        }
        let token = random_token()?;
        let exe = std::env::current_exe().context("locating the batchlab binary")?;
        let rt = runtime()?;
        let (listener, addr) = rt.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a loopback port")?;
            let a = l.local_addr()?;
            anyhow::Ok((l, a))
        })?;
        let mut cluster = Self::start(rt, listener, workers, &token, reduce)?;
        let launch = LocalLaunch {
            exe,
            coordinator: addr.to_string(),
            token,
            tls: reduce.tls.forward(),
        };
        let _guard = cluster.rt.enter();
        for _ in 0..workers {
            cluster.children.push(launch.spawn()?);
        }
        drop(_guard);
        cluster.local = Some(launch);
        tracing::info!(workers, %addr, "started local workers");
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// Listens on `listen` for `workers` workers started elsewhere (`batchlab worker
    /// --coordinator ADDR`) and waits until they joined.
    pub fn listen(
        listen: SocketAddr,
        workers: usize,
        token: &str,
        reduce: &ReduceArgs,
    ) -> Result<Self> {
        check_token(token)?;
        if token.is_empty() && !listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {listen} without a token: anyone who reaches it could join. \
                 Set --token or BATCHLAB_TOKEN (the same on every worker)"
            );
        }
        if workers == 0 {
            bail!("--workers 0: expected at least 1 worker");
        }
        reduce.validate()?;
        let rt = runtime()?;
        let listener = rt.block_on(async {
            TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))
        })?;
        tracing::info!(addr = %listener.local_addr()?, workers, "coordinator listening");
        let mut cluster = Self::start(rt, listener, workers, token, reduce)?;
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn start(
        rt: tokio::runtime::Runtime,
        listener: TcpListener,
        workers: usize,
        token: &str,
        reduce: &ReduceArgs,
    ) -> Result<Self> {
        let coordinator = Coordinator::new(reduce.coordinator_config(workers, token.to_string())?);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let c = coordinator.clone();
        let server = rt.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = c.serve(listener, shutdown).await {
                tracing::error!("coordinator server: {e}");
            }
        });
        Ok(Self {
            rt,
            coordinator,
            children: Vec::new(),
            local: None,
            batch_per_worker: 0,
            stop,
            server: Some(server),
            reduce: reduce.clone(),
            workers,
            closed: false,
        })
    }

    /// The number of workers the cluster started with.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Sets elastic growth for the runs of `plan` (see --batch-per-worker); says so when on.
    pub fn grow_for(&mut self, plan: &RunPlan) {
        self.batch_per_worker = self.reduce.batch_per_worker(plan, self.workers);
        if self.batch_per_worker > 0 {
            let max = self.reduce.max_workers.unwrap_or(self.workers);
            tracing::info!(
                per_worker = self.batch_per_worker,
                max,
                "elastic growth: a worker per {} samples of the batch, up to {max} workers{}",
                self.batch_per_worker,
                if self.local.is_some() {
                    " (local workers start as standby and join as the batch needs them)"
                } else {
                    " (joiners wait as standby until then)"
                }
            );
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let coordinator = self.coordinator.clone();
        let join_timeout = Duration::from_secs(self.reduce.join_timeout);
        let children = &mut self.children;
        self.rt.block_on(async {
            tokio::select! {
                r = coordinator.wait_ready(join_timeout) => r.map(|_| ()).map_err(|e| {
                    anyhow!("{e} (raise --join-timeout, {} s now, to wait longer)", join_timeout.as_secs())
                }),
                e = dead_child(children) => Err(e),
                sig = stop_signal() => bail!("interrupted by {sig}"),
            }
        })
    }

    /// Runs `cfg` on the workers (a seed-mean group over `seeds` when not empty), from
    /// `resume` when given, handing each metrics row to `on_row` with its member and the
    /// workers' state to `on_checkpoint` every --checkpoint-every steps; the final parameters
    /// come back when `return_params`. A dead local worker or Ctrl-C ends it with an error.
    pub fn run_checkpointed(
        &mut self,
        cfg: &TrainConfig,
        seeds: &[u64],
        return_params: bool,
        resume: Option<&Checkpoint>,
        on_row: impl FnMut(usize, StepMetrics),
        on_checkpoint: impl FnMut(Checkpoint),
    ) -> Result<RunOutcome> {
        let mut spec = self.reduce.spec(cfg, seeds, return_params)?;
        spec.checkpoint_every = self.reduce.checkpoint_every;
        spec.batch_per_worker = self.batch_per_worker;
        let coordinator = self.coordinator.clone();
        // Before any local worker is started for it.
        coordinator.cap_for(&spec);
        // Local workers for a growing batch start at once as standby (a process start is
        // slow next to a step); the coordinator admits them as the batch needs them.
        if let Some(launch) = self.local.as_ref().filter(|_| spec.batch_per_worker > 0) {
            let max = self.reduce.max_workers.unwrap_or(self.workers);
            let _guard = self.rt.enter();
            while self.children.len() < max {
                self.children.push(launch.spawn()?);
            }
        }
        let children = &mut self.children;
        self.rt.block_on(async {
            tokio::select! {
                r = coordinator.run_checkpointed(spec, resume, on_row, on_checkpoint) => r.map_err(|e| anyhow!(e)),
                e = dead_child(children) => Err(e),
                sig = stop_signal() => bail!("interrupted by {sig}"),
            }
        })
    }

    /// Runs an all-reduce benchmark spec on the workers; every rank's result, by rank.
    pub fn bench(&mut self, spec: BenchOrder) -> Result<Vec<BenchRankResult>> {
        let coordinator = self.coordinator.clone();
        let children = &mut self.children;
        self.rt.block_on(async {
            tokio::select! {
                r = coordinator.bench(&spec) => r.map_err(|e| anyhow!(e)),
                e = dead_child(children) => Err(e),
                sig = stop_signal() => bail!("interrupted by {sig}"),
            }
        })
    }

    /// The newest generation (formed or forming) and the current one's size.
    pub fn membership(&self) -> (u64, usize) {
        self.coordinator.membership()
    }

    /// Waits until no generation is forming; returns the current one and its size.
    pub fn settle(&mut self) -> Result<(u64, usize)> {
        let pause = Duration::from_secs(self.reduce.pause_timeout)
            + Duration::from_millis(self.reduce.heartbeat_timeout_ms);
        let coordinator = self.coordinator.clone();
        self.rt.block_on(async {
            tokio::select! {
                r = coordinator.settled(pause) => r.map_err(|e| anyhow!(e)),
                sig = stop_signal() => bail!("interrupted by {sig}"),
            }
        })
    }

    /// After a failed task of an elastic cluster: whether the membership changed since
    /// generation `from` (waiting up to the heartbeat timeout and a second for a loss to be
    /// declared); if so, waits for the next generation and returns its number and size.
    pub fn membership_changed(&mut self, from: u64) -> Result<Option<(u64, usize)>> {
        let limit =
            Duration::from_millis(self.reduce.heartbeat_timeout_ms) + Duration::from_secs(1);
        let pause = Duration::from_secs(self.reduce.pause_timeout) + limit;
        let coordinator = self.coordinator.clone();
        self.rt.block_on(async {
            let start = std::time::Instant::now();
            while coordinator.membership().0 == from {
                if start.elapsed() > limit {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::select! {
                r = coordinator.settled(pause) => r.map(Some).map_err(|e| anyhow!(e)),
                sig = stop_signal() => bail!("interrupted by {sig}"),
            }
        })
    }

    /// Shuts the workers down (telling them why when `error` is given) and waits for local
    /// worker processes to exit; none outlives the call.
    pub fn close(mut self, error: Option<&anyhow::Error>) {
        self.shutdown(error);
    }

    fn shutdown(&mut self, error: Option<&anyhow::Error>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let refused = batchlab_net::refused::counts();
        if refused.total() > 0 {
            tracing::warn!(
                total = refused.total(),
                "the coordinator refused calls or messages: {refused:?}"
            );
        }
        match error {
            None => self.coordinator.shutdown_workers("run finished"),
            Some(e) => self
                .coordinator
                .abort_and_shutdown(&format!("the coordinator stopped: {e:#}")),
        }
        let children = std::mem::take(&mut self.children);
        let stop = self.stop.clone();
        let server = self.server.take();
        self.rt.block_on(async move {
            let mut children = children;
            // Workers exit on their own after the shutdown; anything still running is killed.
            for child in &mut children {
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            if children.is_empty() {
                // Remote workers: give them a moment to hear the shutdown.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let _ = stop.send(true);
            // Graceful shutdown waits for open calls; a frozen worker's never end, so bound it.
            if let Some(mut server) = server
                && tokio::time::timeout(Duration::from_secs(2), &mut server)
                    .await
                    .is_err()
            {
                server.abort();
            }
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown(Some(&anyhow!("the coordinator went away")));
    }
}

/// How to start a local worker process of this binary.
struct LocalLaunch {
    exe: std::path::PathBuf,
    coordinator: String,
    token: String,
    tls: Vec<std::ffi::OsString>,
}

impl LocalLaunch {
    /// Starts one worker (within the runtime's context).
    fn spawn(&self) -> Result<Child> {
        Command::new(&self.exe)
            .args([
                "worker",
                "--coordinator",
                &self.coordinator,
                "--listen",
                "127.0.0.1:0",
                // Their coordinator is this process: it does not come back.
                "--rejoin",
                "false",
            ])
            .args(&self.tls)
            .env("BATCHLAB_TOKEN", &self.token)
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
            .with_context(|| format!("starting worker {}", self.exe.display()))
    }
}

/// Resolves when a local worker process has exited (never when there are none).
async fn dead_child(children: &mut [Child]) -> anyhow::Error {
    if children.is_empty() {
        return std::future::pending().await;
    }
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return anyhow!("worker process {i} exited early with {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a count of local worker processes before any is started: more workers than the
/// microbatches of a step (`micros`, the most any trial has) would leave workers with nothing
/// to compute, so it is refused; more than this machine's cores is allowed with a warning
/// (the workers then share cores and a step is slower).
pub fn check_local_workers(workers: usize, micros: u64, what: &str) -> Result<()> {
    if workers as u64 > micros {
        anyhow::bail!(
            "--workers {workers}: expected at most {micros}, the microbatches of a step of {what}: \
             a worker without a microbatch has nothing to compute (use fewer workers, a larger \
             batch, or a smaller --micro)"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers > cores {
        tracing::warn!(
            "--workers {workers} local worker processes on {cores} cores: they will share cores, \
             and steps will be slower than on {cores} workers"
        );
    }
    Ok(())
}

/// `--link-latency`: milliseconds, finite, ≥ 0 and at most a minute.
fn latency_ms(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=60e3).contains(v))
        .ok_or_else(|| format!("{s:?}: expected milliseconds between 0 and 60000"))
}

/// The microbatches of a run's largest step, and that step in words (a batch schedule's
/// largest batch: a worker count that leaves a worker idle throughout is refused).
pub fn largest_step(plan: &RunPlan) -> (u64, String) {
    let (b, m) = (plan.batching.largest(), plan.micro);
    let what = if plan.batching.is_constant() {
        format!("batch = {b}, micro = {m}")
    } else {
        format!("the batch schedule's largest batch {b}, micro = {m}")
    };
    (b / m, what)
}

/// The name of a run's checkpoint in its folder.
pub(crate) const CHECKPOINT: &str = "checkpoint.cbor";

/// The checkpoint saved in `dir` by an unfinished run of `cfg` over `seeds` (one of another run
/// is ignored, and removed; an unreadable one is an error that says what to do).
pub(crate) fn load_checkpoint(
    dir: &Path,
    cfg: &TrainConfig,
    seeds: &[u64],
) -> Result<Option<Checkpoint>> {
    let path = dir.join(CHECKPOINT);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let c = Checkpoint::from_bytes(&bytes).map_err(|e| {
        anyhow!(
            "{} is unreadable ({e}); remove it to start the run again from step 0",
            path.display()
        )
    })?;
    if c.run != batchlab_net::protocol::run_id(cfg, seeds) {
        tracing::warn!(
            "{} is of another configuration: starting from step 0",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    Ok(Some(c))
}

/// The run name of the checkpoint saved in `dir`, if one is there and readable (it is left in
/// place: [`load_checkpoint`] decides what becomes of it).
pub(crate) fn checkpoint_run(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(CHECKPOINT)).ok()?;
    Checkpoint::from_bytes(&bytes).ok().map(|c| c.run)
}

/// Runs the training of `p` on the cluster, writes the results (with each rank's timing) and
/// prints the outcome.
fn drive(cluster: &mut Cluster, p: &Prepared) -> Result<RunOutcome> {
    // A checkpoint of this very run (same configuration) is resumed from.
    let path = p.out.join(CHECKPOINT);
    let resume = load_checkpoint(&p.out, &p.cfg, &[])?;
    let sink = std::cell::RefCell::new(match &resume {
        Some(c) => {
            println!(
                "resuming from the checkpoint at step {} ({})",
                c.step(),
                path.display()
            );
            Sink::resume(p, c.step())?
        }
        None => Sink::create(p)?,
    });
    let write_error = std::cell::RefCell::new(None);
    cluster.grow_for(&p.plan);
    tracing::info!(
        task = p.plan.task.name(),
        params = p.plan.task.num_params(),
        workers = cluster.workers(),
        "training"
    );
    let outcome = cluster.run_checkpointed(
        &p.cfg,
        &[],
        false,
        resume.as_ref(),
        |_, row| {
            if let Err(e) = sink.borrow_mut().row(&row) {
                write_error.borrow_mut().get_or_insert(e);
            }
        },
        |c| {
            // The rows it covers reach the disk first: a resumed run finds them all.
            let saved = sink
                .borrow_mut()
                .sync()
                .and_then(|_| crate::output::write_atomic_bytes(&path, &c.to_bytes()));
            match saved {
                Ok(()) => tracing::debug!(step = c.step(), "checkpoint saved"),
                Err(e) => {
                    write_error.borrow_mut().get_or_insert(e);
                }
            }
        },
    );
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // What survives the failure: the last checkpoint, which the same command resumes.
            let saved = std::fs::read(&path)
                .ok()
                .and_then(|b| Checkpoint::from_bytes(&b).ok());
            return Err(match saved {
                Some(c) => e.context(format!(
                    "the run's state at step {} is saved in {}: the same command resumes from it",
                    c.step(),
                    path.display()
                )),
                None => e,
            });
        }
    };
    if let Some(e) = write_error.into_inner() {
        return Err(e);
    }
    let sink = sink.into_inner();
    let mut extra = serde_json::Map::new();
    extra.insert(
        "timing".to_string(),
        serde_json::to_value(&outcome.timings)?,
    );
    // Logged once, when the cluster closes; written here.
    let refused = batchlab_net::refused::counts();
    extra.insert("refused".to_string(), serde_json::to_value(refused)?);
    sink.finish(&outcome.summary, &p.cfg, extra)?;
    // The run is whole: its summary replaces the checkpoint.
    let _ = std::fs::remove_file(&path);
    print_timing(&outcome.timings);
    Ok(outcome)
}

/// Where a step's time went, in milliseconds per step (means over ranks, but `step`: the
/// slowest rank's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimes {
    /// Gradients of the rank's microbatches.
    pub compute: f64,
    /// All-reduce time in all (hidden under the backward pass or not).
    pub comm: f64,
    /// All-reduce time after the computation ended (all of it without overlap).
    pub exposed: f64,
    /// Decoding, estimators and the update.
    pub apply: f64,
    /// compute + exposed + apply on the slowest rank.
    pub step: f64,
}

/// The per-step breakdown of ranks' timings.
pub fn step_breakdown(timings: &[RankTiming]) -> StepTimes {
    let per_step = |t: &RankTiming, x: f64| 1e3 * x / t.steps.max(1) as f64;
    let n = timings.len().max(1) as f64;
    let mean =
        |f: fn(&RankTiming) -> f64| timings.iter().map(|t| per_step(t, f(t))).sum::<f64>() / n;
    StepTimes {
        compute: mean(|t| t.compute_s),
        comm: mean(|t| t.comm_busy_s),
        exposed: mean(|t| t.comm_s),
        apply: mean(|t| t.apply_s),
        step: timings
            .iter()
            .map(|t| per_step(t, t.compute_s + t.comm_s + t.apply_s))
            .fold(0.0, f64::max),
    }
}

fn print_timing(timings: &[RankTiming]) {
    let t = step_breakdown(timings);
    println!(
        "per step ({} ranks, mean): compute {:.3} ms, all-reduce {:.3} ms ({:.3} ms not hidden), \
         update {:.3} ms; step {:.3} ms",
        timings.len(),
        t.compute,
        t.comm,
        t.exposed,
        t.apply,
        t.step
    );
}

/// `bench step`'s figures as step.json: every row in milliseconds per step, and what `batchlab
/// plan --compute` reads: the compute of one sample and the update on one worker (from the
/// one-worker row without overlap, when timed), and the bytes one step all-reduces.
fn step_json(
    p: &Prepared,
    reduce: &ReduceArgs,
    rows: &[(usize, bool, StepTimes, String)],
) -> serde_json::Value {
    let batch = p.cfg.batch;
    let one = rows.iter().find(|r| r.0 == 1 && !r.1).map(|r| r.2);
    let dim = p.plan.task.num_params() as u64;
    let micros = batch / p.plan.micro;
    let fields = batchlab_core::exact::MICRO_FIELDS as u64;
    // The step's reduced buffers (driver.rs): exact, the packet's i64 words (gradient and each
    // micro's stats); fast, the f32 gradient and the stats words.
    let grad_bytes = match reduce.reduce {
        ReduceMode::Exact => 8 * (dim + micros * fields),
        ReduceMode::Fast => 4 * dim + 8 * micros * fields,
    };
    serde_json::json!({
        "task": p.plan.task.name(),
        "params": dim,
        "batch": batch,
        "micro": p.plan.micro,
        "steps": p.cfg.steps,
        "allreduce": reduce.allreduce.name(),
        "reduce": reduce.reduce.name(),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "grad_bytes": grad_bytes,
        "per_sample_us": one.map(|t| 1e3 * t.compute / batch as f64),
        "update_us": one.map(|t| 1e3 * t.apply),
        "rows": rows.iter().map(|(w, overlap, t, digest)| serde_json::json!({
            "workers": w,
            "overlap": overlap,
            "step_ms": t.step,
            "compute_ms": t.compute,
            "allreduce_ms": t.comm,
            "exposed_ms": t.exposed,
            "update_ms": t.apply,
            "params_digest": digest,
        })).collect::<Vec<_>>(),
    })
}

/// Per worker count timed both ways: the step with overlap and what perfect overlap would
/// give, the larger of the computation (gradients and update) and the all-reduce as measured
/// without overlap, where neither slows the other.
fn overlap_goals(rows: &[(usize, bool, StepTimes, String)]) -> Vec<(usize, f64, f64)> {
    rows.iter()
        .filter(|r| !r.1)
        .filter_map(|(w, _, off, _)| {
            let (_, _, on, _) = rows.iter().find(|r| r.0 == *w && r.1)?;
            Some((*w, on.step, (off.compute + off.apply).max(off.comm)))
        })
        .collect()
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
    let (micros, what) = largest_step(&p.plan);
    check_local_workers(args.workers, micros, &what)?;
    if let Some(max) = args.reduce.max_workers {
        check_local_workers(max, micros, &what).map_err(|e| {
            anyhow!(
                "{}",
                e.to_string().replacen("--workers", "--max-workers", 1)
            )
        })?;
    }
    run_local(&p, args.workers, &args.reduce).map(|_| ())
}

/// Trains `p` on `workers` local worker processes of this binary, coordinated from this process
/// over loopback; no process outlives the call.
pub fn run_local(p: &Prepared, workers: usize, reduce: &ReduceArgs) -> Result<RunOutcome> {
    let mut cluster = Cluster::local(workers, reduce)?;
    let result = drive(&mut cluster, p);
    cluster.close(result.as_ref().err());
    result
}

/// Flags of `batchlab bench step`.
#[derive(Args, Debug)]
#[command(mut_arg("out", |a| a.help("Output folder: one run folder per worker count (w{N}/, w{N}-overlap/). Default: runs/bench-step-{task}-B{batch}-lr{lr}-s{seed}")))]
#[command(after_long_help = BENCH_STEP_HELP)]
pub struct BenchStepArgs {
    /// The run to time; defaults to a 784-256-256-10 MLP on teacher data, B = 256 in 8
    /// microbatches, 30 steps, no evaluation. Any train flag overrides it.
    #[command(flatten)]
    train: TrainArgs,
    /// Worker counts to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Time every worker count twice, without and with --overlap, side by side (the numbers
    /// must be the same; the time is what changes).
    #[arg(long)]
    compare_overlap: bool,
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
    for &w in &args.workers {
        let (micros, what) = largest_step(&p.plan);
        check_local_workers(w, micros, &what)?;
    }
    let mut rows = Vec::new();
    let overlaps = if args.compare_overlap {
        vec![false, true]
    } else {
        vec![args.reduce.overlap]
    };
    for &w in &args.workers {
        for &overlap in &overlaps {
            let reduce = ReduceArgs {
                overlap,
                // Nothing written to disk while timing.
                checkpoint_every: 0,
                ..args.reduce.clone()
            };
            let suffix = if overlap { "-overlap" } else { "" };
            let pw = Prepared {
                cfg: p.cfg.clone(),
                plan: p.plan.clone(),
                out: p.out.join(format!("w{w}{suffix}")),
            };
            let outcome = run_local(&pw, w, &reduce)?;
            rows.push((
                w,
                overlap,
                step_breakdown(&outcome.timings),
                outcome.summary.params_digest,
            ));
        }
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
        "{:>7}  {:>7}  {:>8}  {:>10}  {:>13}  {:>10}  {:>9}  {:>16}  params",
        "workers",
        "overlap",
        "step ms",
        "compute ms",
        "all-reduce ms",
        "exposed ms",
        "update ms",
        "÷ max(comp,comm)"
    );
    for (w, overlap, t, digest) in &rows {
        // The goal of overlap: compute and communication cost their larger, not their sum.
        let ratio = (t.compute + t.exposed) / t.compute.max(t.comm).max(1e-12);
        let on = if *overlap { "on" } else { "off" };
        println!(
            "{w:>7}  {on:>7}  {:>8.3}  {:>10.3}  {:>13.3}  {:>10.3}  {:>9.3}  {ratio:>16.2}  {digest}",
            t.step, t.compute, t.comm, t.exposed, t.apply
        );
    }
    let json = step_json(&p, &args.reduce, &rows);
    let path = p.out.join("step.json");
    std::fs::create_dir_all(&p.out).with_context(|| format!("creating {}", p.out.display()))?;
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "step times in {} (batchlab plan --compute reads it)",
        path.display()
    );
    if let Some((_, _, _, first)) = rows.first()
        && let Some((w, o, _, d)) = rows.iter().find(|r| &r.3 != first)
    {
        bail!(
            "the runs disagree: {w} workers with overlap {o} ended with parameters {d}, the \
                 first with {first}"
        );
    }
    println!(
        "(÷ max: (compute + exposed all-reduce) / max(compute, all-reduce); 1.00 is perfect overlap, \
         the update excluded)"
    );
    for (w, on, goal) in overlap_goals(&rows) {
        println!(
            "overlap goal, {w} workers: step with overlap {on:.3} ms / max(compute + update, \
             all-reduce) without it {goal:.3} ms = {:.2} (goal ≤ 1.15)",
            on / goal.max(1e-12)
        );
    }
    Ok(())
}
