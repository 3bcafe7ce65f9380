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

use crate::protocol::pb::coordinator_client::CoordinatorClient;
use crate::protocol::pb::{
    BenchSpec, HeartbeatRequest, JoinReply, JoinRequest, RegroupRequest, RunReport, RunSpec,
    TaskRequest, run_report, task_assignment,
};
use batchlab_core::driver::{
    Action, Buf, DriverError, Event, Output, RunDriver, RunState, Settings, Streamed, Synced,
};
use batchlab_core::train::RunSummary;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::abort::{Abort, AbortWatch, aborted, unless_aborted};
use crate::auth::Stamp;
use crate::dataplane::DataListener;
use crate::mesh::{Mesh, PeerEndpoint};
use crate::protocol::{BenchOrder, RunOrder};
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
    /// Rows the run produced, per member of a seed-mean group (one entry for a single run).
    #[serde(default)]
    pub rows: Vec<u64>,
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
    let router = transport::server().add_service(endpoint.service(&cfg.token));
    let stopped = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    // Under TLS, the handshakes are done (and the failed ones refused) before tonic.
    let server = match &cfg.tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            tls.grpc_incoming(listener, "this worker's peer service"),
            stopped,
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped,
        )),
    };
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
        NetError::Aborted(_) => false,
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
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(tls_mismatch(cfg).await.unwrap_or_else(|| unreachable(e)));
            }
            // A certificate the other side refuses will not improve by waiting; nor will a
            // coordinator without TLS.
            Err(e) if crate::tls::is_tls_failure(&e) => {
                return Err(tls_mismatch(cfg).await.unwrap_or_else(|| unreachable(e)));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    Ok(
        CoordinatorClient::with_interceptor(channel, Stamp::new(&cfg.token)?)
            .max_decoding_message_size(transport::MAX_MESSAGE),
    )
}

/// The error to give when the coordinator and this worker disagree on TLS (one speaks it, the
/// other not), found out after a transport failure; `None` if they agree.
async fn tls_mismatch(cfg: &WorkerConfig) -> Option<NetError> {
    crate::tls::mismatch("the coordinator", &cfg.coordinator, cfg.tls.is_some())
        .await
        .map(NetError::Refused)
}

/// Whether a call failed for its transport (a connection reset or closed, an HTTP/2 error)
/// rather than by the coordinator's answer.
fn transport_failure(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unknown
            | tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::Cancelled
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
        .await;
    let reply = match reply {
        Ok(reply) => reply.into_inner(),
        Err(s) => {
            // A plaintext worker's first call to a TLS coordinator fails here (the connection
            // itself is made lazily): a TLS alert read as an HTTP/2 frame, or a reset.
            if transport_failure(&s)
                && let Some(e) = tls_mismatch(cfg).await
            {
                return Err(e);
            }
            return Err(NetError::rpc(
                format!("joining the coordinator at {}", cfg.coordinator),
                s,
            ));
        }
    };
    end.joined = true;
    tracing::info!(
        rank = reply.rank,
        world = reply.world_size,
        generation = reply.generation,
        advertise,
        data_addr,
        "joined"
    );
    let (abort_tx, abort_rx) = watch::channel(None::<Abort>);
    let abort_tx = std::sync::Arc::new(abort_tx);
    let (rows_tx, rows_rx) = watch::channel((0u64, Vec::<u64>::new()));
    let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(reply.generation));
    let mut ctx = Ctx {
        session: reply.session.clone(),
        worker_id: reply.worker_id,
        rank: reply.rank as usize,
        generation: generation.clone(),
        elastic: reply.elastic,
        client: client.clone(),
        inject_delay: cfg.inject_delay,
        endpoint,
        token: &cfg.token,
        connect_timeout: cfg.connect_timeout,
        abort_tx: abort_tx.clone(),
        abort: abort_rx.clone(),
        confirmed: rows_rx,
    };
    let heartbeat = Heartbeat {
        client: client.clone(),
        session: reply.session.clone(),
        worker_id: reply.worker_id,
        generation,
        interval: Duration::from_millis(reply.heartbeat_interval_ms.max(10)),
        timeout: Duration::from_millis(reply.heartbeat_timeout_ms.max(100)),
    };
    let heartbeat = tokio::spawn(heartbeat.run(abort_tx, rows_tx));
    let outcome = work(&mut ctx, &reply).await;
    heartbeat.abort();
    if outcome.is_err() {
        end.coordinator_answers = coordinator_answers(&mut client, &ctx).await;
    }
    outcome
}

/// Connects the mesh of the generation `reply` describes and takes tasks until told to stop.
async fn work(ctx: &mut Ctx<'_>, reply: &JoinReply) -> Result<(), NetError> {
    let mut mesh = match ctx.connect(reply).await {
        Ok(m) => m,
        Err(e) if ctx.elastic && recoverable(&e) => {
            tracing::warn!("{e}; regrouping");
            ctx.regroup().await?.0
        }
        Err(e) => return Err(e),
    };
    let mut done = 0;
    // A run this worker finished, kept while the coordinator may still need it: when a new
    // generation takes that run up again (a peer failed before finishing), this worker's final
    // state is the freshest.
    let mut finished: Option<(u64, RunDriver)> = None;
    loop {
        let mut client = ctx.client.clone();
        let ask = client.next_task(TaskRequest {
            session: ctx.session.clone(),
            rank: ctx.rank as u32,
            generation: ctx.generation(),
            done_task: done,
            worker_id: ctx.worker_id,
        });
        let mut lost = ctx.abort.clone();
        // The long poll has no deadline of its own: it ends when the heartbeats say the
        // coordinator is gone.
        let assignment = tokio::select! {
            r = ask => r.map_err(|s| NetError::rpc("asking the coordinator for work", s)),
            m = lost.wait_for(Abort::lost) => Err(aborted(m.ok().as_deref())),
        };
        let assignment = assignment?.into_inner();
        match assignment.kind {
            Some(task_assignment::Kind::Shutdown(s)) => {
                tracing::info!(reason = s.reason, "shutting down");
                return Ok(());
            }
            Some(task_assignment::Kind::Regroup(_)) => {
                let (m, open) = ctx.regroup().await?;
                mesh = m;
                if open != 0 && open <= done {
                    // The run this worker finished is open again: take it up with its state.
                    done = open - 1;
                }
            }
            Some(task_assignment::Kind::Bench(spec)) => {
                let result = bench(ctx, assignment.task, &spec, &mut mesh, ctx.abort.clone()).await;
                done = assignment.task;
                match result {
                    Ok(()) => {}
                    // The membership changed under it: the next generation runs what comes next.
                    Err(e) if ctx.elastic && recoverable(&e) => {
                        tracing::warn!(rank = ctx.rank, "benchmark interrupted: {e}");
                    }
                    Err(e) => {
                        tracing::error!(rank = ctx.rank, "benchmark failed: {e}");
                        return Err(e);
                    }
                }
            }
            Some(task_assignment::Kind::Run(spec)) => {
                let task = assignment.task;
                let kept = finished
                    .take()
                    .filter(|(t, _)| *t == task)
                    .map(|(_, run)| run);
                match train(ctx, task, &spec, &mut mesh, kept).await {
                    Ok(run) => finished = run.map(|r| (task, r)),
                    Err(e) => {
                        tracing::error!(rank = ctx.rank, "run failed: {e}");
                        return Err(e);
                    }
                }
                done = task;
            }
            None => {
                return Err(NetError::Peer(
                    "the coordinator sent an empty assignment".into(),
                ));
            }
        }
    }
}

/// Whether the coordinator still answers a heartbeat of this session (within 2 s).
async fn coordinator_answers(client: &mut Client, ctx: &Ctx<'_>) -> bool {
    let probe = client.heartbeat(HeartbeatRequest {
        session: ctx.session.clone(),
        rank: ctx.rank as u32,
        generation: ctx.generation(),
        worker_id: ctx.worker_id,
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(_))
    )
}

/// A worker's heartbeat to the coordinator: who it is, in which generation, how often.
struct Heartbeat {
    client: Client,
    session: String,
    worker_id: u64,
    /// The generation the worker is in (its work moves it on).
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    interval: Duration,
    /// How long without an answer before the coordinator counts as lost.
    timeout: Duration,
}

impl Heartbeat {
    /// Beats every `interval` until the coordinator is lost or declares this worker lost;
    /// passes on what the answers say: an abort or a newer generation to `abort`, the rows
    /// the coordinator has to `rows`.
    async fn run(
        self,
        abort: std::sync::Arc<watch::Sender<Option<Abort>>>,
        rows: watch::Sender<(u64, Vec<u64>)>,
    ) {
        let Heartbeat {
            mut client,
            session,
            worker_id,
            generation,
            interval,
            timeout,
        } = self;
        use std::sync::atomic::Ordering;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(interval).await;
            let req = HeartbeatRequest {
                session: session.clone(),
                rank: 0,
                generation: generation.load(Ordering::SeqCst),
                worker_id,
            };
            match tokio::time::timeout(timeout, client.heartbeat(req)).await {
                Ok(Ok(r)) => {
                    last_ok = tokio::time::Instant::now();
                    let r = r.into_inner();
                    if !r.abort.is_empty() {
                        abort.send_replace(Some(Abort::Task(r.abort)));
                    } else if r.generation > generation.load(Ordering::SeqCst) {
                        abort.send_replace(Some(Abort::Regroup {
                            generation: r.generation,
                        }));
                    }
                    rows.send_replace((r.rows_task, r.rows_through));
                }
                Ok(Err(s)) if crate::refused::Refusal::is_lost(&s) => {
                    // Declared lost (it was silent too long): its place is gone.
                    abort.send_replace(Some(Abort::LostCoordinator(s.message().to_string())));
                    return;
                }
                _ if last_ok.elapsed() > timeout => {
                    abort.send_replace(Some(Abort::LostCoordinator(format!(
                        "no heartbeat answered for {:.1}s",
                        timeout.as_secs_f64()
                    ))));
                    return;
                }
                _ => {}
            }
        }
    }
}

/// Whether an elastic run can go on after `e` by regrouping: a peer or a connection failed,
/// or the coordinator asked for a new generation.
fn recoverable(e: &NetError) -> bool {
    match e {
        NetError::Peer(_) | NetError::Timeout { .. } | NetError::Unreachable { .. } => true,
        NetError::Io { .. } | NetError::Rpc { .. } => true,
        NetError::Regroup { .. } => true,
        NetError::Aborted(_) | NetError::LostCoordinator(_) => false,
        NetError::Config(_) | NetError::Refused(_) => false,
    }
}

/// A worker's session: who it is in the current generation and what it needs to regroup.
struct Ctx<'a> {
    session: String,
    worker_id: u64,
    rank: usize,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    elastic: bool,
    client: Client,
    /// A straggler's added time per step.
    inject_delay: Duration,
    endpoint: &'a PeerEndpoint,
    token: &'a str,
    connect_timeout: Duration,
    abort_tx: std::sync::Arc<watch::Sender<Option<Abort>>>,
    abort: AbortWatch,
    /// The rows the coordinator has: (task, next step per member).
    confirmed: watch::Receiver<(u64, Vec<u64>)>,
}

impl Ctx<'_> {
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connects the mesh of the generation `reply` describes.
    async fn connect(&mut self, reply: &JoinReply) -> Result<Mesh, NetError> {
        self.rank = reply.rank as usize;
        self.generation
            .store(reply.generation, std::sync::atomic::Ordering::SeqCst);
        // A regroup asked for before this generation formed is answered by it.
        if self
            .abort
            .borrow()
            .as_ref()
            .is_some_and(|a| matches!(a, Abort::Regroup { .. }))
        {
            self.abort_tx.send_replace(None);
        }
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
            rank: self.rank,
            peers: &reply.peers,
            data_peers: &reply.data_peers,
            data_unix: &data_unix,
        };
        unless_aborted(
            self.endpoint
                .connect(&world, self.token, self.connect_timeout),
            &self.abort,
        )
        .await
    }

    /// Leaves the current generation and connects the next one's mesh (again, when a peer
    /// fails meanwhile); returns it and the run the new generation takes up (0: none).
    async fn regroup(&mut self) -> Result<(Mesh, u64), NetError> {
        loop {
            let from = self.generation();
            let started = Instant::now();
            let mut client = self.client.clone();
            let ask = client.regroup(RegroupRequest {
                session: self.session.clone(),
                worker_id: self.worker_id,
                generation: from,
            });
            let mut lost = self.abort.clone();
            let reply = tokio::select! {
                r = ask => r.map_err(|s| NetError::rpc("regrouping", s))?.into_inner(),
                m = lost.wait_for(Abort::lost) => return Err(aborted(m.ok().as_deref())),
            };
            tracing::warn!(
                rank = reply.rank,
                world = reply.world_size,
                generation = reply.generation,
                "regrouped into generation {} as rank {} of {} after {:.3} s",
                reply.generation,
                reply.rank,
                reply.world_size,
                started.elapsed().as_secs_f64()
            );
            match self.connect(&reply).await {
                Ok(mesh) => return Ok((mesh, reply.task_open)),
                Err(e) if recoverable(&e) => {
                    tracing::warn!(
                        "connecting generation {}: {e}; regrouping",
                        reply.generation
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn report(&self, task: u64, kind: run_report::Kind, member: usize) -> RunReport {
        RunReport {
            session: self.session.clone(),
            rank: self.rank as u32,
            task,
            kind: Some(kind),
            member: member as u32,
            worker_id: self.worker_id,
        }
    }
}

/// Runs one training run in lock step with the other ranks; returns its final state in an
/// elastic cluster (a later generation may need it).
async fn train(
    ctx: &mut Ctx<'_>,
    task: u64,
    spec: &RunSpec,
    mesh: &mut Mesh,
    kept: Option<RunDriver>,
) -> Result<Option<RunDriver>, NetError> {
    let (tx, rx) = mpsc::channel::<RunReport>(1024);
    let mut client = ctx.client.clone();
    let reporter = tokio::spawn(async move {
        client
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let result = train_steps(ctx, task, spec, mesh, kept, &tx).await;
    // Not when the coordinator is gone or declared this worker lost: it has moved on.
    let gone = |e: &NetError| matches!(e, NetError::LostCoordinator(_));
    if let Some(e) = result.as_ref().err().filter(|e| !gone(e)) {
        let _ = tx
            .send(ctx.report(task, run_report::Kind::Error(e.to_string()), 0))
            .await;
    }
    drop(tx);
    // After a failure the report stream may hang on a dead connection (a network cut is
    // noticed only by HTTP/2 keepalive, tens of seconds): the failure is what counts.
    let mut reporter = reporter;
    let reported = if result.is_err() {
        match tokio::time::timeout(Duration::from_secs(2), &mut reporter).await {
            Ok(r) => r,
            Err(_) => {
                reporter.abort();
                return result;
            }
        }
    } else {
        reporter.await
    };
    match reported {
        Ok(Ok(_)) => result,
        Ok(Err(s)) => result.and(Err(NetError::rpc("reporting to the coordinator", s))),
        Err(_) => result,
    }
}

/// Runs one all-reduce benchmark spec and reports this rank's result (or error).
async fn bench(
    ctx: &Ctx<'_>,
    task: u64,
    spec: &BenchSpec,
    mesh: &mut Mesh,
    abort: AbortWatch,
) -> Result<(), NetError> {
    let result = match BenchOrder::from_wire(spec) {
        Ok(order) => crate::bench::run(&order, mesh, abort).await,
        Err(e) => Err(e),
    };
    let kind = match &result {
        Ok(r) => run_report::Kind::Bench(crate::encode(r)),
        Err(e) => run_report::Kind::Error(e.to_string()),
    };
    let msg = ctx.report(task, kind, 0);
    let mut client = ctx.client.clone();
    let sent = client
        .report(tokio_stream::once(msg))
        .await
        .map_err(|s| NetError::rpc("reporting to the coordinator", s));
    result.and(sent).map(|_| ())
}

/// The run a spec describes, as this rank's driver: fresh, from the spec's checkpoint, or the
/// run this worker kept (rejoined to the current mesh).
fn driver_for(
    ctx: &Ctx<'_>,
    order: &RunOrder,
    mesh: &Mesh,
    kept: Option<RunDriver>,
) -> Result<RunDriver, NetError> {
    let settings = Settings {
        reduction: order.reduction,
        elastic: ctx.elastic,
        checkpoint_every: order.checkpoint_every,
    };
    let (rank, world) = (mesh.rank(), mesh.world());
    if let Some(mut driver) = kept {
        driver.handle(Event::Joined { rank, world }).map_err(peer)?;
        return Ok(driver);
    }
    let (cfg, seeds) = (&order.config, &order.seeds);
    if order.resume.is_empty() {
        return RunDriver::new(cfg, seeds, settings, rank, world)
            .map_err(|e| NetError::Config(e.to_string()));
    }
    let resume =
        |e: &dyn std::fmt::Display| NetError::Config(format!("the checkpoint to resume from: {e}"));
    let state = RunState::from_bytes(&order.resume).map_err(|e| resume(&e))?;
    RunDriver::resume(cfg, seeds, settings, state, (rank, world)).map_err(|e| resume(&e))
}

async fn train_steps(
    ctx: &mut Ctx<'_>,
    task: u64,
    spec: &RunSpec,
    mesh: &mut Mesh,
    kept: Option<RunDriver>,
    tx: &mpsc::Sender<RunReport>,
) -> Result<Option<RunDriver>, NetError> {
    let order = RunOrder::from_wire(spec)?;
    let setup = |mesh: &mut Mesh| {
        if order.peer_timeout_ms > 0 {
            mesh.set_recv_timeout(Duration::from_millis(order.peer_timeout_ms));
        }
        mesh.set_transport(order.transport.into())
    };
    setup(mesh)?;
    let mut driver = driver_for(ctx, &order, mesh, kept)?;
    let mut timing = RankTiming::default();
    let (started, counted) = (Instant::now(), driver.counts());
    let summary = loop {
        match drive(ctx, task, &mut driver, mesh, &mut timing, tx).await {
            Ok(summary) => break summary,
            Err(e) if ctx.elastic && recoverable(&e) => {
                let (member, step) = driver.position();
                tracing::warn!(rank = ctx.rank, member, step, "{e}; regrouping");
                let (m, open) = ctx.regroup().await?;
                *mesh = m;
                setup(mesh)?;
                if open != task {
                    // The coordinator closed the run meanwhile: nothing is left to do.
                    return Ok(Some(driver));
                }
                let (rank, world) = (mesh.rank(), mesh.world());
                driver.handle(Event::Joined { rank, world }).map_err(peer)?;
            }
            Err(e) => return Err(e),
        }
    };
    let counts = driver.counts();
    timing.steps = counts.steps - counted.steps;
    timing.redos = counts.redos - counted.redos;
    timing.rank = ctx.rank;
    timing.wall_s = started.elapsed().as_secs_f64();
    timing.refused = crate::refused::counts();
    let send = |msg: RunReport| async move {
        tx.send(msg)
            .await
            .map_err(|_| NetError::Peer("the report stream to the coordinator closed".into()))
    };
    if order.return_params && ctx.rank == 0 {
        let bytes = driver
            .params()
            .flat_map(|p| p.iter().flat_map(|x| x.to_le_bytes()))
            .collect::<Vec<u8>>();
        send(ctx.report(task, run_report::Kind::Params(bytes), 0)).await?;
    }
    let result = crate::encode(&RankResult {
        summary,
        timing,
        rows: driver.rows().to_vec(),
    });
    send(ctx.report(task, run_report::Kind::Summary(result), 0)).await?;
    Ok(ctx.elastic.then_some(driver))
}

/// Runs one run's driver to its end over the mesh: the worker's part is I/O alone (the
/// all-reduces, the reports, the clock); the driver decides every number. Returns the summary.
async fn drive(
    ctx: &Ctx<'_>,
    task: u64,
    driver: &mut RunDriver,
    mesh: &mut Mesh,
    timing: &mut RankTiming,
    tx: &mpsc::Sender<RunReport>,
) -> Result<RunSummary, NetError> {
    let send = |kind, member| async move {
        tx.send(ctx.report(task, kind, member))
            .await
            .map_err(|_| NetError::Peer("the report stream to the coordinator closed".into()))
    };
    loop {
        if ctx.elastic {
            let confirmed = ctx.confirmed.borrow().clone();
            if confirmed.0 == task {
                driver
                    .handle(Event::Confirmed(&confirmed.1))
                    .map_err(peer)?;
            }
        }
        match driver.poll() {
            Action::Begin => {
                if let Some(a) = &*ctx.abort.borrow() {
                    return Err(a.error());
                }
                let t0 = Instant::now();
                tokio::task::block_in_place(|| driver.begin());
                timing.eval_s += t0.elapsed().as_secs_f64();
            }
            Action::Compute => compute(ctx, driver, mesh, timing).await?,
            Action::Reduce => reduce(ctx, driver, mesh, timing).await?,
            Action::Emit(Output::Row { member, row }) => {
                send(run_report::Kind::Step(crate::encode(&row)), member).await?;
            }
            Action::Emit(Output::Checkpoint(state)) => {
                // After the rows it covers, on the same stream: the coordinator holds them.
                send(run_report::Kind::Checkpoint(state.to_bytes()), 0).await?;
            }
            Action::Emit(Output::Synced(s)) => log_synced(ctx, &s),
            Action::Done(summary) => return Ok(*summary),
        }
    }
}

/// Computes this rank's share of the step ([`Action::Compute`]); an overlapped step reduces
/// its buckets meanwhile. A straggler's injected delay counts as computation.
async fn compute(
    ctx: &Ctx<'_>,
    driver: &mut RunDriver,
    mesh: &mut Mesh,
    timing: &mut RankTiming,
) -> Result<(), NetError> {
    let t0 = Instant::now();
    if !ctx.inject_delay.is_zero() {
        let delay = async {
            tokio::time::sleep(ctx.inject_delay).await;
            Ok(())
        };
        unless_aborted(delay, &ctx.abort).await?;
    }
    if driver.overlaps() {
        let (computed, busy) = overlapped(driver, mesh, &ctx.abort).await?;
        timing.compute_s += (computed - t0).as_secs_f64();
        timing.comm_s += computed.elapsed().as_secs_f64();
        timing.comm_busy_s += busy;
    } else {
        tokio::task::block_in_place(|| driver.compute());
        timing.compute_s += t0.elapsed().as_secs_f64();
    }
    Ok(())
}

/// All-reduces the buffers the driver asks for with its plans ([`Action::Reduce`]) and
/// hands it the result; a step's (not a resync's) time goes into `timing`.
async fn reduce(
    ctx: &Ctx<'_>,
    driver: &mut RunDriver,
    mesh: &mut Mesh,
    timing: &mut RankTiming,
) -> Result<(), NetError> {
    let (t0, step) = (Instant::now(), !driver.syncing());
    for (buf, plan) in driver.reduction() {
        // A peer that froze keeps its streams open: the coordinator's abort (from the
        // heartbeats) ends the wait before the receive deadline does.
        match buf {
            Buf::I64(x) => unless_aborted(mesh.all_reduce(x, plan), &ctx.abort).await?,
            Buf::F32(x) => unless_aborted(mesh.all_reduce(x, plan), &ctx.abort).await?,
        }
    }
    let t1 = Instant::now();
    driver.handle(Event::Reduced).map_err(peer)?;
    if step {
        timing.comm_s += (t1 - t0).as_secs_f64();
        timing.comm_busy_s += (t1 - t0).as_secs_f64();
        timing.apply_s += t1.elapsed().as_secs_f64();
    }
    Ok(())
}

/// Logs what an elastic resync did: whose state this rank took, and where a run in a later
/// generation goes on.
fn log_synced(ctx: &Ctx<'_>, s: &Synced) {
    if let Some((src, behind, bytes)) = s.took {
        tracing::warn!(
            rank = ctx.rank,
            "took the run's state from rank {src} ({behind} applies ahead of this worker's, {bytes} bytes)"
        );
    }
    if ctx.generation() > 1 && s.version > 0 {
        // The step in flight when the generation changed is redone from here (a run that
        // starts in a later generation has nothing to say).
        tracing::warn!(
            rank = ctx.rank,
            generation = ctx.generation(),
            "generation {}: resuming at step {} of member {} (apply {})",
            ctx.generation(),
            s.step,
            s.member,
            s.version
        );
    }
}

/// A peer's run state that does not fit: the run can regroup and try again.
fn peer(e: DriverError) -> NetError {
    NetError::Peer(e.to_string())
}

/// An overlapped step (DDP's): the driver computes every micro but the last, then the last
/// one's backward pass runs on a thread of its own while each finished bucket of the gradient
/// is all-reduced here, in the driver's order. Returns when the computation ended and the
/// seconds spent in all-reduces.
async fn overlapped(
    driver: &mut RunDriver,
    mesh: &mut Mesh,
    abort: &AbortWatch,
) -> Result<(Instant, f64), NetError> {
    let handle = tokio::runtime::Handle::current();
    let (comm, stats, computed, busy) = tokio::task::block_in_place(|| {
        let Streamed { last, plans } = driver.stream();
        std::thread::scope(|sc| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(usize, &mut [i64])>();
            let compute = sc.spawn(move || {
                // A closed channel means the reduction failed; it reports.
                let stats = last.run(&mut |k, words| {
                    let _ = tx.send((k, words));
                });
                (stats, Instant::now())
            });
            let mut busy = 0.0;
            let comm = handle.block_on(async {
                let mut ready = std::collections::BTreeMap::new();
                for (k, bucket_plan) in plans.iter().enumerate() {
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
    driver.streamed(stats);
    Ok((computed, busy))
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
