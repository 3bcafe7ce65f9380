//! A worker: joins the coordinator, connects to its peers, and runs training steps in lock
//! step with them.
//!
//! ```text
//!   bind peer listener ─► Join (rendezvous) ─► connect mesh ─► heartbeats (background)
//!        └─► loop NextTask: Run(spec) ─► steps: compute my microbatches ─► all-reduce ─► apply
//!                                        rows (rank 0) and summary (all) ─► Report
//!                           Shutdown  ─► exit
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use batchlab_collective::{Algorithm, PlanConfig};
use batchlab_core::exact::Packet;
use batchlab_core::group::SeedMean;
use batchlab_core::sampler::balanced_range;
use batchlab_core::train::{
    Applied, Begin, RunSummary, TrainConfig, WorkerScratch, compute_last_micro_streamed,
    compute_micros, compute_micros_but_last, compute_micros_fast,
};
use batchlab_proto::v1::coordinator_client::CoordinatorClient;
use batchlab_proto::v1::{
    BenchSpec, HeartbeatRequest, JoinRequest, RunReport, RunSpec, TaskRequest, run_report,
    task_assignment,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::Stamp;
use crate::dataplane::DataListener;
use crate::mesh::{Mesh, PeerEndpoint};
use crate::{NetError, transport};

/// Where one rank's time went during a run, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankTiming {
    /// The rank.
    pub rank: usize,
    /// Steps applied.
    pub steps: u64,
    /// Steps recomputed at a wider fixed-point scale.
    pub redos: u64,
    /// Gradients of this rank's microbatches.
    pub compute_s: f64,
    /// All-reduce time not hidden under computation (all of it without overlap), including
    /// waiting for slower peers.
    pub comm_s: f64,
    /// All-reduce time in all, hidden under the backward pass or not.
    #[serde(default)]
    pub comm_busy_s: f64,
    /// Decoding the reduced packet, estimators and the optimizer update.
    pub apply_s: f64,
    /// Evaluation and sharpness.
    pub eval_s: f64,
    /// The whole run on this rank.
    pub wall_s: f64,
    /// What this worker's process had refused by the run's end (calls, connections and
    /// messages without the token, of another run or generation, malformed or oversized).
    #[serde(default)]
    pub refused: crate::refused::Refused,
}

/// What each rank reports at the end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankResult {
    /// The run's summary as this replica saw it.
    pub summary: RunSummary,
    /// Where the time went.
    pub timing: RankTiming,
}

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's address (`host:port` or `http://host:port`).
    pub coordinator: String,
    /// The run's token.
    pub token: String,
    /// Where this worker's peer service listens (`0.0.0.0:0` for any interface, any port).
    pub listen: SocketAddr,
    /// Port of the TCP data plane on the same interface (0: any free port).
    pub data_port: u16,
    /// The address peers reach this worker at (`host` or `host:port`; a bare host gets the
    /// bound port); default: the listen address, or this host's name when listening on all
    /// interfaces.
    pub advertise: Option<String>,
    /// A rank assigned by the launcher (RANK, SLURM_PROCID, JOB_COMPLETION_INDEX).
    pub requested_rank: Option<u32>,
    /// How long to keep trying to reach the coordinator and the peers.
    pub connect_timeout: Duration,
    /// Time added to this worker's computation of every step (a straggler on purpose, for
    /// tests and for studying stragglers); zero for none.
    pub inject_delay: Duration,
    /// TLS on every TCP connection (the coordinator's, the peer service, the data plane).
    pub tls: Option<crate::tls::Tls>,
    /// When the coordinator goes away (killed, restarted, cut off), join it again (for up to
    /// `connect_timeout`) instead of exiting: a restarted coordinator finds its workers.
    pub rejoin: bool,
}

/// How an abort caused by the coordinator's silence starts.
const LOST_COORDINATOR: &str = "lost the coordinator";

type Client = CoordinatorClient<InterceptedService<Channel, Stamp>>;

/// Runs a worker until the coordinator tells it to shut down or a run fails.
pub async fn run_worker(cfg: WorkerConfig) -> Result<(), NetError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| NetError::Io {
            what: format!("binding the peer listener on {}", cfg.listen),
            source: e,
        })?;
    let local = listener.local_addr().map_err(|e| NetError::Io {
        what: "peer listener address".into(),
        source: e,
    })?;
    let advertise = match &cfg.advertise {
        // A bare host name or IPv4 address: the port is the one just bound.
        Some(a) if !a.contains(':') => format!("{a}:{}", local.port()),
        Some(a) => a.clone(),
        None if local.ip().is_unspecified() => {
            let host = hostname();
            format!("{host}:{}", local.port())
        }
        None => local.to_string(),
    };
    // The TCP data plane listens beside the peer service, on the same interface.
    let data_listener = TcpListener::bind((cfg.listen.ip(), cfg.data_port))
        .await
        .map_err(|e| NetError::Io {
            what: format!(
                "binding the data-plane listener on {}:{}",
                cfg.listen.ip(),
                cfg.data_port
            ),
            source: e,
        })?;
    let data_port = data_listener
        .local_addr()
        .map_err(|e| NetError::Io {
            what: "data-plane listener address".into(),
            source: e,
        })?
        .port();
    let data_addr = match advertise.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{data_port}"),
        None => format!("{advertise}:{data_port}"),
    };
    let endpoint = PeerEndpoint::new(cfg.connect_timeout).with_tls(cfg.tls.clone());
    endpoint.serve_data(DataListener::Tcp(data_listener), &cfg.token);
    // And on a Unix socket, for peers on this host (TCP/IP costs them kernel cycles for
    // nothing); without one they use TCP.
    let unix_path =
        std::env::temp_dir().join(format!("batchlab-{}-{data_port}.sock", std::process::id()));
    let _ = std::fs::remove_file(&unix_path);
    remove_stale_sockets(&std::env::temp_dir());
    let data_unix = match tokio::net::UnixListener::bind(&unix_path) {
        Ok(l) => {
            endpoint.serve_data(DataListener::Unix(l), &cfg.token);
            unix_path.to_string_lossy().into_owned()
        }
        Err(e) => {
            tracing::debug!("no Unix-socket data plane at {}: {e}", unix_path.display());
            String::new()
        }
    };
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut server = transport::server();
    if let Some(tls) = &cfg.tls {
        server = server
            .tls_config(tls.grpc_server())
            .map_err(|e| NetError::Config(format!("TLS for the peer service: {e}")))?;
    }
    let server = server
        .add_service(endpoint.service(&cfg.token))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        );
    let server = tokio::spawn(server);
    // With `rejoin`, a session that ended in an error after joining, with the coordinator no
    // longer answering on it (killed, restarted, frozen or cut off), is followed by a new
    // join; when that one fails before joining (nobody came back), the worker exits with the
    // first error. A coordinator that still answers is ending the run itself.
    let mut first_error = None;
    let result = loop {
        let mut end = SessionEnd::default();
        let result = join_and_work(
            &cfg, &endpoint, &advertise, &data_addr, &data_unix, &mut end,
        )
        .await;
        let joined = end.joined;
        match result {
            Err(e) if cfg.rejoin && joined && !end.coordinator_answers && rejoinable(&e) => {
                tracing::warn!(
                    coordinator = cfg.coordinator,
                    "{e}; joining again (for up to {} s)",
                    cfg.connect_timeout.as_secs()
                );
                first_error.get_or_insert(e);
            }
            Err(e) if !joined && first_error.is_some() => {
                tracing::warn!("joining again failed: {e}");
                break Err(first_error.take().expect("checked"));
            }
            other => break other,
        }
    };
    if !data_unix.is_empty() {
        let _ = std::fs::remove_file(&data_unix);
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    result
}

/// How a session with the coordinator ended.
#[derive(Default)]
struct SessionEnd {
    /// The coordinator accepted the join.
    joined: bool,
    /// After an error, the coordinator still answered a heartbeat of the session.
    coordinator_answers: bool,
}

/// Whether a session that ended in `e` may be followed by a new join: not when this worker's
/// settings or credentials were refused (they would be again).
fn rejoinable(e: &NetError) -> bool {
    match e {
        NetError::Config(_) | NetError::Refused(_) => false,
        // The coordinator's own abort: it is ending the run on purpose.
        NetError::Aborted(m) => m.starts_with(LOST_COORDINATOR),
        _ => true,
    }
}

/// Removes the Unix sockets that workers killed without a chance to clean up left in `dir`
/// (`batchlab-<pid>-<port>.sock` whose process is gone; Linux's /proc tells).
fn remove_stale_sockets(dir: &std::path::Path) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("batchlab-"))
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, port)| port.parse::<u16>().ok().and(pid.parse::<u32>().ok()))
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

async fn connect_coordinator(cfg: &WorkerConfig) -> Result<Client, NetError> {
    let uri = crate::tls::uri(&cfg.coordinator, cfg.tls.is_some());
    let unreachable = |e| NetError::Unreachable {
        what: "the coordinator".into(),
        addr: cfg.coordinator.clone(),
        source: e,
    };
    let mut endpoint = transport::endpoint(&uri)
        .map_err(unreachable)?
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = &cfg.tls {
        endpoint = endpoint
            .tls_config(tls.grpc_client(&cfg.coordinator))
            .map_err(unreachable)?;
    }
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(unreachable(e)),
            // A certificate the other side refuses will not improve by waiting.
            Err(e) if crate::tls::is_tls_failure(&e) => return Err(unreachable(e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    Ok(
        CoordinatorClient::with_interceptor(channel, Stamp::new(&cfg.token)?)
            .max_decoding_message_size(transport::MAX_MESSAGE),
    )
}

async fn join_and_work(
    cfg: &WorkerConfig,
    endpoint: &PeerEndpoint,
    advertise: &str,
    data_addr: &str,
    data_unix: &str,
    end: &mut SessionEnd,
) -> Result<(), NetError> {
    let mut client = connect_coordinator(cfg).await?;
    let reply = client
        .join(JoinRequest {
            advertise_addr: advertise.to_string(),
            hostname: hostname(),
            pid: std::process::id(),
            requested_rank: cfg.requested_rank.map_or(-1, i64::from),
            data_addr: data_addr.to_string(),
            data_unix: data_unix.to_string(),
            host_id: crate::dataplane::host_id(),
        })
        .await
        .map_err(|s| NetError::rpc(format!("joining the coordinator at {}", cfg.coordinator), s))?
        .into_inner();
    end.joined = true;
    let rank = reply.rank as usize;
    tracing::info!(
        rank,
        world = reply.world_size,
        advertise,
        data_addr,
        "joined"
    );
    // Peers on this host (same boot id and host name) are reached by Unix socket when the
    // coordinator allows it.
    let me = crate::dataplane::host_id();
    let data_unix: Vec<String> = (0..reply.peers.len())
        .map(|r| {
            let same_host = reply.host_ids.get(r) == Some(&me);
            let path = reply.data_unix_peers.get(r).cloned().unwrap_or_default();
            if reply.unix_sockets && same_host {
                path
            } else {
                String::new()
            }
        })
        .collect();
    let world = crate::mesh::World {
        session: &reply.session,
        generation: reply.generation,
        rank,
        peers: &reply.peers,
        data_peers: &reply.data_peers,
        data_unix: &data_unix,
    };
    let mut mesh = match endpoint
        .connect(&world, &cfg.token, cfg.connect_timeout)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            end.coordinator_answers =
                coordinator_answers(&mut client, &reply.session, reply.rank, reply.generation)
                    .await;
            return Err(e);
        }
    };

    let (abort_tx, abort_rx) = watch::channel(None::<String>);
    let heartbeat = tokio::spawn(heartbeats(
        client.clone(),
        reply.session.clone(),
        reply.rank,
        reply.generation,
        Duration::from_millis(reply.heartbeat_interval_ms.max(10)),
        Duration::from_millis(reply.heartbeat_timeout_ms.max(100)),
        abort_tx,
    ));
    let ctx = Ctx {
        session: reply.session.clone(),
        rank,
        generation: reply.generation,
        client: client.clone(),
        inject_delay: cfg.inject_delay,
    };
    let mut done = 0;
    let outcome = loop {
        let ask = client.next_task(TaskRequest {
            session: ctx.session.clone(),
            rank: reply.rank,
            generation: ctx.generation,
            done_task: done,
        });
        let mut lost = abort_rx.clone();
        // The long poll has no deadline of its own: it ends when the heartbeats say the
        // coordinator is gone.
        let assignment = tokio::select! {
            r = ask => r.map_err(|s| NetError::rpc("asking the coordinator for work", s)),
            m = lost.wait_for(|a| a.as_ref().is_some_and(|m| m.starts_with(LOST_COORDINATOR))) => {
                Err(NetError::Aborted(m.map(|m| m.clone().unwrap_or_default()).unwrap_or_default()))
            }
        };
        let assignment = match assignment {
            Ok(a) => a.into_inner(),
            Err(e) => break Err(e),
        };
        match assignment.kind {
            Some(task_assignment::Kind::Shutdown(s)) => {
                tracing::info!(reason = s.reason, "shutting down");
                break Ok(());
            }
            Some(task_assignment::Kind::Bench(spec)) => {
                if let Err(e) =
                    bench(&ctx, assignment.task, &spec, &mut mesh, abort_rx.clone()).await
                {
                    tracing::error!(rank, "benchmark failed: {e}");
                    break Err(e);
                }
                done = assignment.task;
            }
            Some(task_assignment::Kind::Run(spec)) => {
                let result = train(&ctx, assignment.task, &spec, &mut mesh, abort_rx.clone()).await;
                if let Err(e) = result {
                    tracing::error!(rank, "run failed: {e}");
                    break Err(e);
                }
                done = assignment.task;
            }
            None => {
                break Err(NetError::Peer(
                    "the coordinator sent an empty assignment".into(),
                ));
            }
        }
    };
    heartbeat.abort();
    if outcome.is_err() {
        end.coordinator_answers =
            coordinator_answers(&mut client, &ctx.session, reply.rank, ctx.generation).await;
    }
    outcome
}

/// Whether the coordinator still answers a heartbeat of this session (within 2 s).
async fn coordinator_answers(
    client: &mut Client,
    session: &str,
    rank: u32,
    generation: u64,
) -> bool {
    let probe = client.heartbeat(HeartbeatRequest {
        session: session.to_string(),
        rank,
        generation,
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(_))
    )
}

async fn heartbeats(
    mut client: Client,
    session: String,
    rank: u32,
    generation: u64,
    interval: Duration,
    timeout: Duration,
    abort: watch::Sender<Option<String>>,
) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let req = HeartbeatRequest {
            session: session.clone(),
            rank,
            generation,
        };
        match tokio::time::timeout(timeout, client.heartbeat(req)).await {
            Ok(Ok(r)) => {
                last_ok = tokio::time::Instant::now();
                let msg = r.into_inner().abort;
                if !msg.is_empty() {
                    let _ = abort.send(Some(msg));
                }
            }
            _ if last_ok.elapsed() > timeout => {
                let _ = abort.send(Some(format!(
                    "{LOST_COORDINATOR}: no heartbeat answered for {:.1}s",
                    timeout.as_secs_f64()
                )));
                return;
            }
            _ => {}
        }
    }
}

struct Ctx {
    session: String,
    rank: usize,
    generation: u64,
    client: Client,
    /// A straggler's added time per step.
    inject_delay: Duration,
}

/// Runs one training run in lock step with the other ranks.
async fn train(
    ctx: &Ctx,
    task: u64,
    spec: &RunSpec,
    mesh: &mut Mesh,
    abort: watch::Receiver<Option<String>>,
) -> Result<(), NetError> {
    let (tx, rx) = mpsc::channel::<RunReport>(1024);
    let mut client = ctx.client.clone();
    let reporter = tokio::spawn(async move {
        client
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let report = |kind, member: usize| RunReport {
        session: ctx.session.clone(),
        rank: ctx.rank as u32,
        task,
        kind: Some(kind),
        member: member as u32,
    };
    let result = train_steps(ctx, spec, mesh, abort, |kind, member| {
        let tx = tx.clone();
        let msg = report(kind, member);
        async move {
            tx.send(msg)
                .await
                .map_err(|_| NetError::Peer("the report stream to the coordinator closed".into()))
        }
    })
    .await;
    if let Err(e) = &result {
        let _ = tx
            .send(report(run_report::Kind::Error(e.to_string()), 0))
            .await;
    }
    drop(tx);
    match reporter.await {
        Ok(Ok(_)) => result,
        Ok(Err(s)) => result.and(Err(NetError::rpc("reporting to the coordinator", s))),
        Err(_) => result,
    }
}

/// Runs one all-reduce benchmark spec and reports this rank's result (or error).
async fn bench(
    ctx: &Ctx,
    task: u64,
    spec: &BenchSpec,
    mesh: &mut Mesh,
    abort: watch::Receiver<Option<String>>,
) -> Result<(), NetError> {
    let result = crate::bench::run(spec, mesh, abort).await;
    let kind = match &result {
        Ok(r) => run_report::Kind::Bench(crate::encode(r)),
        Err(e) => run_report::Kind::Error(e.to_string()),
    };
    let msg = RunReport {
        session: ctx.session.clone(),
        rank: ctx.rank as u32,
        task,
        kind: Some(kind),
        member: 0,
    };
    let mut client = ctx.client.clone();
    let sent = client
        .report(tokio_stream::once(msg))
        .await
        .map_err(|s| NetError::rpc("reporting to the coordinator", s));
    result.and(sent).map(|_| ())
}

/// Runs `work` unless the coordinator aborts the task first (a frozen peer keeps its streams
/// open: the abort, from the heartbeats, ends the wait before any receive deadline does).
pub(crate) async fn unless_aborted<T>(
    work: impl std::future::Future<Output = Result<T, NetError>>,
    abort: &watch::Receiver<Option<String>>,
) -> Result<T, NetError> {
    let mut aborted = abort.clone();
    tokio::select! {
        r = work => r,
        m = aborted.wait_for(Option::is_some) => {
            Err(NetError::Aborted(m.map(|m| m.clone().unwrap_or_default()).unwrap_or_default()))
        }
    }
}

/// One replica of a run (a seed-mean group has one per seed) and its sampler.
struct Member {
    replica: batchlab_core::train::Replica,
    sampler: batchlab_core::sampler::Sampler,
}

async fn train_steps<F, Fut>(
    ctx: &Ctx,
    spec: &RunSpec,
    mesh: &mut Mesh,
    abort: watch::Receiver<Option<String>>,
    send: F,
) -> Result<(), NetError>
where
    F: Fn(run_report::Kind, usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), NetError>>,
{
    let cfg: TrainConfig =
        toml::from_str(&spec.config_toml).map_err(|e| NetError::Config(e.to_string()))?;
    let plan = cfg.build().map_err(|e| NetError::Config(e.to_string()))?;
    let algorithm: Algorithm = spec
        .allreduce
        .parse()
        .map_err(|e: batchlab_collective::ParseAlgorithmError| NetError::Config(e.to_string()))?;
    let fast = match spec.reduce.as_str() {
        "exact" => false,
        "fast" => true,
        other => {
            return Err(NetError::Config(format!(
                "reduce = {other:?}: expected \"exact\" or \"fast\""
            )));
        }
    };
    if spec.peer_timeout_ms > 0 {
        mesh.set_recv_timeout(Duration::from_millis(spec.peer_timeout_ms));
    }
    mesh.set_transport(spec.transport.parse()?)?;
    let (rank, world) = (mesh.rank(), mesh.world());
    let n = plan.num_micro();
    let mine = balanced_range(n, rank, world);
    // A seed-mean group runs one member per seed under the group's stopping rule.
    let mut group =
        (!spec.seeds.is_empty()).then(|| SeedMean::new(&cfg, plan.micro, spec.seeds.len()));
    let mut members = Vec::new();
    if spec.seeds.is_empty() {
        members.push(Member {
            replica: plan.replica(),
            sampler: plan.sampler(),
        });
    } else {
        for &seed in &spec.seeds {
            let p = SeedMean::member_config(&cfg, seed)
                .build()
                .map_err(|e| NetError::Config(e.to_string()))?;
            members.push(Member {
                replica: p.replica(),
                sampler: p.sampler(),
            });
        }
    }
    let dim = plan.task.num_params();
    let plan_for = |len: usize, elem: usize| {
        let chunk_elems = (spec.chunk_bytes as usize / elem).max(1);
        batchlab_collective::plan(
            &PlanConfig {
                algorithm,
                chunk_elems,
            },
            rank,
            world,
            len,
        )
    };
    let mut reducer = if fast {
        let stats = Packet::zeroed(0, n);
        Reducer::Fast {
            grad_plan: plan_for(dim, 4),
            stats_plan: plan_for(stats.len(), 8),
            grad: vec![0.0; dim],
            stats,
        }
    } else {
        let packet = Packet::zeroed(dim, n);
        let buckets = plan.task.buckets();
        // One rank has nothing to overlap: its all-reduce is a no-op.
        let overlap = (spec.overlap && buckets.len() > 1 && world > 1).then(|| Overlap {
            plans: buckets.iter().map(|b| plan_for(b.len(), 8)).collect(),
            stats_plan: plan_for(packet.len() - dim, 8),
            buckets,
        });
        Reducer::Exact {
            plan: plan_for(packet.len(), 8),
            packet,
            overlap,
        }
    };
    let mut scratch = WorkerScratch::default();
    let mut eval_scratch = batchlab_core::Scratch::new();
    let mut timing = RankTiming {
        rank,
        ..RankTiming::default()
    };
    let started = Instant::now();
    // The run's end: rank 0 sends the parameters if asked, every rank its summary.
    let finish = |summary: RunSummary, mut timing: RankTiming, members: &[Member]| {
        timing.wall_s = started.elapsed().as_secs_f64();
        timing.refused = crate::refused::counts();
        let params = (spec.return_params && rank == 0).then(|| {
            members
                .iter()
                .flat_map(|m| m.replica.params.iter().flat_map(|p| p.to_le_bytes()))
                .collect::<Vec<u8>>()
        });
        (params, crate::encode(&RankResult { summary, timing }))
    };
    let end = 'run: loop {
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(reason) = abort.borrow().clone() {
                return Err(NetError::Aborted(reason));
            }
            let t0 = Instant::now();
            let begun = tokio::task::block_in_place(|| m.replica.begin(&mut eval_scratch));
            timing.eval_s += t0.elapsed().as_secs_f64();
            if let Begin::Finished(summary) = begun {
                break 'run Ended::Member(i, summary);
            }
            loop {
                let t0 = Instant::now();
                if !ctx.inject_delay.is_zero() {
                    // Counted as computation: this rank is simply slower.
                    unless_aborted(
                        async {
                            tokio::time::sleep(ctx.inject_delay).await;
                            Ok(())
                        },
                        &abort,
                    )
                    .await?;
                }
                let (t1, busy) = if reducer.overlaps() {
                    reducer
                        .compute_and_reduce_overlapped(
                            &plan,
                            &m.replica,
                            &mut m.sampler,
                            mine.clone(),
                            &mut scratch,
                            mesh,
                            &abort,
                        )
                        .await?
                } else {
                    tokio::task::block_in_place(|| {
                        reducer.compute(
                            &plan,
                            &m.replica,
                            &mut m.sampler,
                            mine.clone(),
                            &mut scratch,
                        )
                    });
                    let t1 = Instant::now();
                    // A peer that froze keeps its streams open: the coordinator's abort (from
                    // the heartbeats) ends the wait before the receive deadline does.
                    unless_aborted(reducer.all_reduce(mesh), &abort).await?;
                    (t1, t1.elapsed().as_secs_f64())
                };
                let t2 = Instant::now();
                let applied = reducer.apply(&mut m.replica);
                timing.compute_s += (t1 - t0).as_secs_f64();
                timing.comm_s += (t2 - t1).as_secs_f64();
                timing.comm_busy_s += busy;
                timing.apply_s += t2.elapsed().as_secs_f64();
                let (row, ended) = match applied {
                    Applied::Redo => {
                        timing.redos += 1;
                        continue;
                    }
                    Applied::Step(row) => (row, None),
                    Applied::Finished(row, summary) => (row, Some(summary)),
                };
                timing.steps += 1;
                if let Some(g) = &mut group {
                    g.record(i, &row);
                }
                if ctx.rank == 0 {
                    send(run_report::Kind::Step(crate::encode(&row)), i).await?;
                }
                if let Some(summary) = ended {
                    break 'run Ended::Member(i, summary);
                }
                break;
            }
        }
        if let Some(end) = group.as_mut().and_then(SeedMean::check) {
            break 'run Ended::Group(end);
        }
    };
    let summary = match (end, &group) {
        (Ended::Member(_, s), None) => *s,
        (Ended::Member(i, s), Some(g)) => g.summary(
            g.member_ended(i, &s),
            members.iter().map(|m| m.replica.params.as_slice()),
        ),
        (Ended::Group(end), Some(g)) => {
            g.summary(end, members.iter().map(|m| m.replica.params.as_slice()))
        }
        (Ended::Group(_), None) => unreachable!("only a group ends as a group"),
    };
    let (params, result) = finish(summary, timing, &members);
    if let Some(bytes) = params {
        send(run_report::Kind::Params(bytes), 0).await?;
    }
    send(run_report::Kind::Summary(result), 0).await
}

/// How a run's step loop ended.
enum Ended {
    /// A member's own end (the run's, when it is alone).
    Member(usize, Box<RunSummary>),
    /// The seed-mean rule.
    Group(batchlab_core::group::GroupEnd),
}

/// `grad` cut into the words of each bucket, in bucket order (the buckets partition it).
fn split_buckets<'a>(
    grad: &'a mut [i64],
    buckets: &[std::ops::Range<usize>],
) -> Vec<&'a mut [i64]> {
    let mut order: Vec<usize> = (0..buckets.len()).collect();
    order.sort_by_key(|&k| buckets[k].start);
    let mut slots: Vec<Option<&'a mut [i64]>> = (0..buckets.len()).map(|_| None).collect();
    let mut rest = grad;
    for k in order {
        let (words, tail) = std::mem::take(&mut rest).split_at_mut(buckets[k].len());
        slots[k] = Some(words);
        rest = tail;
    }
    slots.into_iter().map(|s| s.expect("a partition")).collect()
}

/// Buckets of an overlapped exact step.
struct Overlap {
    buckets: Vec<std::ops::Range<usize>>,
    plans: Vec<batchlab_collective::Plan>,
    stats_plan: batchlab_collective::Plan,
}

/// The reduction of one step, exact or fast.
enum Reducer {
    /// Fixed-point words, bit-identical on any number of workers.
    Exact {
        packet: Packet,
        plan: batchlab_collective::Plan,
        /// With overlap: the task's gradient buckets (in the order the backward pass finishes
        /// them), their plans, and the stats words' plan.
        overlap: Option<Overlap>,
    },
    /// `f32` gradient sums plus the exact per-micro stats.
    Fast {
        grad: Vec<f32>,
        stats: Packet,
        grad_plan: batchlab_collective::Plan,
        stats_plan: batchlab_collective::Plan,
    },
}

impl Reducer {
    fn compute(
        &mut self,
        plan: &batchlab_core::train::RunPlan,
        replica: &batchlab_core::train::Replica,
        sampler: &mut batchlab_core::sampler::Sampler,
        micros: std::ops::Range<usize>,
        scratch: &mut WorkerScratch,
    ) {
        let task = plan.task.as_ref();
        match self {
            Self::Exact { packet, .. } => compute_micros(
                task,
                &replica.params,
                sampler,
                replica.t,
                micros,
                replica.scale,
                packet,
                scratch,
            ),
            Self::Fast { grad, stats, .. } => compute_micros_fast(
                task,
                &replica.params,
                sampler,
                replica.t,
                micros,
                grad,
                stats,
                scratch,
            ),
        }
    }

    /// Whether steps overlap the reduction with the backward pass.
    fn overlaps(&self) -> bool {
        matches!(
            self,
            Self::Exact {
                overlap: Some(_),
                ..
            }
        )
    }

    /// An exact step with the reduction overlapped with the backward pass, as DDP does: every
    /// micro but the last is computed, then the last one's backward pass runs on a thread of
    /// its own while each finished bucket of the gradient is all-reduced here; the stats go
    /// last. The words are those of [`Reducer::compute`] + [`Reducer::all_reduce`], so the
    /// step is bit-identical. Returns when the computation ended and the seconds spent in
    /// all-reduces.
    #[allow(clippy::too_many_arguments)] // the step's inputs, as for `compute`
    async fn compute_and_reduce_overlapped(
        &mut self,
        plan: &batchlab_core::train::RunPlan,
        replica: &batchlab_core::train::Replica,
        sampler: &mut batchlab_core::sampler::Sampler,
        micros: std::ops::Range<usize>,
        scratch: &mut WorkerScratch,
        mesh: &mut Mesh,
        abort: &watch::Receiver<Option<String>>,
    ) -> Result<(Instant, f64), NetError> {
        let Self::Exact {
            packet,
            overlap: Some(o),
            ..
        } = self
        else {
            unreachable!("only called when overlapping");
        };
        let task = plan.task.as_ref();
        let (params, t, scale) = (&replica.params, replica.t, replica.scale);
        let last = tokio::task::block_in_place(|| {
            compute_micros_but_last(task, params, sampler, t, micros, scale, packet, scratch)
        });
        let handle = tokio::runtime::Handle::current();
        let (comm, stats, computed, mut busy) = tokio::task::block_in_place(|| {
            let (grad, _) = packet.grad_and_stats_mut();
            let slices = split_buckets(grad, &o.buckets);
            std::thread::scope(|sc| {
                let (tx, mut rx) = mpsc::unbounded_channel::<(usize, &mut [i64])>();
                let compute = sc.spawn(move || {
                    let stats = match last {
                        Some(j) => Some(compute_last_micro_streamed(
                            task,
                            params,
                            sampler,
                            t,
                            j,
                            scale,
                            slices,
                            scratch,
                            &mut |k, words| {
                                // A closed channel means the reduction failed; it reports.
                                let _ = tx.send((k, words));
                            },
                        )),
                        None => {
                            for (k, words) in slices.into_iter().enumerate() {
                                let _ = tx.send((k, words));
                            }
                            None
                        }
                    };
                    (stats, Instant::now())
                });
                let mut busy = 0.0;
                let comm = handle.block_on(async {
                    let mut ready = std::collections::BTreeMap::new();
                    for (k, bucket_plan) in o.plans.iter().enumerate() {
                        while !ready.contains_key(&k) {
                            let Some((i, words)) = rx.recv().await else {
                                return Err(NetError::Peer(
                                    "the backward pass stopped before finishing its buckets".into(),
                                ));
                            };
                            ready.insert(i, words);
                        }
                        let words = ready.remove(&k).expect("present");
                        let started = Instant::now();
                        unless_aborted(mesh.all_reduce(words, bucket_plan), abort).await?;
                        busy += started.elapsed().as_secs_f64();
                    }
                    Ok(())
                });
                drop(rx);
                let (stats, computed) = compute.join().expect("the backward pass panicked");
                (comm, stats, computed, busy)
            })
        });
        comm?;
        if let (Some(j), Some(stats)) = (last, stats) {
            packet.add_stats(j, &stats);
        }
        let started = Instant::now();
        let (_, stats_words) = packet.grad_and_stats_mut();
        unless_aborted(mesh.all_reduce(stats_words, &o.stats_plan), abort).await?;
        busy += started.elapsed().as_secs_f64();
        Ok((computed, busy))
    }

    async fn all_reduce(&mut self, mesh: &mut Mesh) -> Result<(), NetError> {
        match self {
            Self::Exact { packet, plan, .. } => mesh.all_reduce(packet.words_mut(), plan).await,
            Self::Fast {
                grad,
                stats,
                grad_plan,
                stats_plan,
            } => {
                mesh.all_reduce(grad.as_mut_slice(), grad_plan).await?;
                mesh.all_reduce(stats.words_mut(), stats_plan).await
            }
        }
    }

    fn apply(&self, replica: &mut batchlab_core::train::Replica) -> Applied {
        match self {
            Self::Exact { packet, .. } => replica.apply(packet),
            Self::Fast { grad, stats, .. } => replica.apply_fast(grad, stats),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sockets_of_dead_workers_are_removed_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("batchlab-stale-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No process has pid 4_000_000_000 (above Linux's pid limit); this test's does exist.
        let dead = dir.join("batchlab-4000000000-1234.sock");
        let live = dir.join(format!("batchlab-{}-1234.sock", std::process::id()));
        let other = dir.join("batchlab-notes.txt");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"").unwrap();
        }
        super::remove_stale_sockets(&dir);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
