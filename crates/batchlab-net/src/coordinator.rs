//! The coordinator: rendezvous, liveness, handing out runs, collecting results.
//!
//! ```text
//!   worker ──Join──────► wait until N joined ──► rank, world, peers, session, generation
//!   worker ──Heartbeat─► last seen[rank] = now   ◄── monitor: silent > timeout ⇒ run aborted
//!   worker ──NextTask──► (long poll) the current run, or Shutdown
//!   worker ──Report────► rows (rank 0) and a summary per rank ──► Coordinator::run returns
//! ```
//!
//! The membership rules are a plain state machine ([`Rendezvous`]); the service wraps it with
//! a mutex and a version channel that wakes the long polls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchlab_core::train::StepMetrics;

use crate::bench::BenchRankResult;
use crate::worker::{RankResult, RankTiming};
use batchlab_proto::v1::coordinator_server::{self, CoordinatorServer};
use batchlab_proto::v1::{
    BenchSpec, HeartbeatReply, HeartbeatRequest, JoinReply, JoinRequest, ReportAck, RunReport,
    RunSpec, Shutdown, TaskAssignment, TaskRequest, run_report, task_assignment,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Check;
use crate::refused::{Reason, refuse};
use crate::{NetError, to_status, transport};

/// Settings of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Number of workers the cluster waits for.
    pub workers: usize,
    /// The shared secret every call must carry.
    pub token: String,
    /// How often workers send heartbeats.
    pub heartbeat_interval: Duration,
    /// A worker silent this long is lost.
    pub heartbeat_timeout: Duration,
    /// How long a joining worker waits for the others.
    pub join_timeout: Duration,
    /// Whether workers on the same host reach each other's data plane by Unix socket.
    pub unix_sockets: bool,
    /// TLS for the coordinator's service (the workers must speak it too).
    pub tls: Option<crate::tls::Tls>,
}

impl CoordinatorConfig {
    /// Defaults for `workers` workers and `token`: heartbeats every 500 ms, lost after 5 s,
    /// rendezvous within 120 s.
    pub fn new(workers: usize, token: impl Into<String>) -> Self {
        Self {
            workers,
            token: token.into(),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(120),
            unix_sockets: true,
            tls: None,
        }
    }
}

/// A finished run: the summary every replica agreed on, and each rank's timing.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The summary (identical on every rank).
    pub summary: batchlab_core::train::RunSummary,
    /// Where each rank's time went, by rank.
    pub timings: Vec<RankTiming>,
    /// The final parameters (of every member of a seed-mean group, in member order), when the
    /// spec asked for them.
    pub params: Option<Vec<f64>>,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Address of its peer service.
    pub addr: String,
    /// Address of its TCP data plane (empty: none).
    pub data_addr: String,
    /// Path of its Unix-socket data plane (empty: none).
    pub data_unix: String,
    /// Its machine's identity.
    pub host_id: String,
    /// Host name, for logs.
    pub hostname: String,
    /// Process id, for logs.
    pub pid: u32,
    /// Rank requested by the launcher, if any.
    pub requested_rank: Option<u32>,
}

/// Rendezvous as a state machine: members join until the world is complete, then ranks are
/// assigned once (requested ranks when they form a permutation, else join order).
#[derive(Debug, Clone)]
pub struct Rendezvous {
    world: usize,
    joined: Vec<Member>,
    /// `ranks[i]` = rank of the i-th joiner, once complete.
    ranks: Option<Vec<usize>>,
}

impl Rendezvous {
    /// A rendezvous for `world` members.
    pub fn new(world: usize) -> Self {
        Self {
            world,
            joined: Vec::new(),
            ranks: None,
        }
    }

    /// Adds a member; returns its join index. Refused once the world is complete.
    pub fn join(&mut self, m: Member) -> Result<usize, String> {
        if self.ranks.is_some() {
            return Err(format!(
                "the cluster is complete with {} workers; {} at {} was not expected \
                 (start the coordinator with a larger --workers, or stop the extra worker)",
                self.world, m.hostname, m.addr
            ));
        }
        if let Some(r) = m.requested_rank {
            if r as usize >= self.world {
                return Err(format!(
                    "requested rank {r} from {} is out of range for {} workers",
                    m.addr, self.world
                ));
            }
        }
        self.joined.push(m);
        if self.joined.len() == self.world {
            self.ranks = Some(self.assign());
        }
        Ok(self.joined.len() - 1)
    }

    fn assign(&self) -> Vec<usize> {
        let requested: Vec<Option<u32>> = self.joined.iter().map(|m| m.requested_rank).collect();
        let mut seen = vec![false; self.world];
        let permutation = requested.iter().all(|r| {
            r.is_some_and(|r| {
                let fresh = !seen[r as usize];
                seen[r as usize] = true;
                fresh
            })
        });
        if permutation {
            requested
                .iter()
                .map(|r| r.expect("checked") as usize)
                .collect()
        } else {
            (0..self.world).collect()
        }
    }

    /// The rank of join index `i`, once the world is complete.
    pub fn rank_of(&self, i: usize) -> Option<usize> {
        self.ranks.as_ref().map(|r| r[i])
    }

    /// Peer addresses by rank, once complete.
    pub fn peers(&self) -> Option<Vec<String>> {
        self.by_rank(|m| &m.addr)
    }

    /// A field of every member, by rank, once complete.
    pub fn by_rank(&self, field: impl Fn(&Member) -> &String) -> Option<Vec<String>> {
        let ranks = self.ranks.as_ref()?;
        let mut out = vec![String::new(); self.world];
        for (i, &r) in ranks.iter().enumerate() {
            out[r] = field(&self.joined[i]).clone();
        }
        Some(out)
    }

    /// Whether every member has joined.
    pub fn is_complete(&self) -> bool {
        self.ranks.is_some()
    }
}

/// What workers told the coordinator about a run.
#[derive(Debug)]
enum Event {
    Row {
        task: u64,
        member: usize,
        json: Vec<u8>,
    },
    Params {
        task: u64,
        bytes: Vec<u8>,
    },
    Summary {
        rank: usize,
        task: u64,
        json: Vec<u8>,
    },
    Bench {
        rank: usize,
        task: u64,
        bytes: Vec<u8>,
    },
    Error {
        rank: usize,
        task: u64,
        message: String,
    },
    Lost {
        message: String,
    },
}

#[derive(Debug)]
struct State {
    rendezvous: Rendezvous,
    last_seen: Vec<Option<Instant>>,
    lost: Vec<bool>,
    task: u64,
    /// The current task (a run or a benchmark), handed to every worker that asks.
    spec: Option<task_assignment::Kind>,
    abort: Option<String>,
    shutdown: Option<String>,
}

struct Shared {
    cfg: CoordinatorConfig,
    session: String,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    events: mpsc::UnboundedSender<Event>,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
}

impl Shared {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn check_session(&self, session: &str, rank: u32) -> Result<(), Status> {
        if session != self.session {
            return Err(Status::permission_denied(refuse(
                Reason::OtherRun,
                &format!("rank {rank}"),
                format!(
                    "rank {rank} belongs to coordinator session {session:?}, this coordinator's session is {:?} \
                     (the worker joined another coordinator)",
                    self.session
                ),
            )));
        }
        if rank as usize >= self.cfg.workers {
            return Err(Status::invalid_argument(refuse(
                Reason::OtherRun,
                &format!("rank {rank}"),
                format!(
                    "rank {rank} is out of range for {} workers",
                    self.cfg.workers
                ),
            )));
        }
        Ok(())
    }
}

/// A coordinator. Cheap to clone: clones share the cluster.
#[derive(Clone)]
pub struct Coordinator {
    shared: Arc<Shared>,
}

impl Coordinator {
    /// A coordinator waiting for `cfg.workers` workers.
    pub fn new(cfg: CoordinatorConfig) -> Self {
        let (events, inbox) = mpsc::unbounded_channel();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let session = format!(
            "{:x}-{:x}",
            std::process::id(),
            now.as_nanos() & 0xffff_ffff_ffff
        );
        let n = cfg.workers;
        Self {
            shared: Arc::new(Shared {
                session,
                state: Mutex::new(State {
                    rendezvous: Rendezvous::new(n),
                    last_seen: vec![None; n],
                    lost: vec![false; n],
                    task: 0,
                    spec: None,
                    abort: None,
                    shutdown: None,
                }),
                version: watch::channel(0).0,
                events,
                inbox: tokio::sync::Mutex::new(inbox),
                cfg,
            }),
        }
    }

    /// This coordinator's session id.
    pub fn session(&self) -> &str {
        &self.shared.session
    }

    /// Serves on `listener` until `shutdown` resolves, with the liveness monitor running.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), NetError> {
        let svc = CoordinatorServer::new(Service {
            shared: self.shared.clone(),
        })
        .max_decoding_message_size(transport::MAX_MESSAGE);
        let svc = InterceptedService::new(svc, Check::new(&self.shared.cfg.token, "coordinator"));
        let monitor = tokio::spawn(monitor(self.shared.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut server = transport::server();
        if let Some(tls) = &self.shared.cfg.tls {
            server = server
                .tls_config(tls.grpc_server())
                .map_err(|e| NetError::Config(format!("TLS for the coordinator: {e}")))?;
        }
        let result = server
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        monitor.abort();
        result.map_err(|e| NetError::Io {
            what: format!("coordinator server: {e}"),
            source: std::io::Error::other(e),
        })
    }

    /// Waits until every worker has joined.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Vec<String>, NetError> {
        let mut v = self.shared.version.subscribe();
        let wait = async {
            loop {
                if let Some(peers) = self
                    .shared
                    .state
                    .lock()
                    .expect("poisoned")
                    .rendezvous
                    .peers()
                {
                    return peers;
                }
                if v.changed().await.is_err() {
                    return Vec::new();
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            let n = self
                .shared
                .state
                .lock()
                .expect("poisoned")
                .rendezvous
                .joined
                .len();
            NetError::Timeout {
                what: format!("{} workers to join ({n} joined)", self.shared.cfg.workers),
                after: timeout,
            }
        })
    }

    /// Runs `spec` on the workers, handing each metrics row to `on_row` with the member it is
    /// of (0 for a single run; the index into `spec.seeds` for a seed-mean group), and returns
    /// the summary once every rank reported the same final parameters, with each rank's timing.
    pub async fn run(
        &self,
        spec: RunSpec,
        mut on_row: impl FnMut(usize, StepMetrics),
    ) -> Result<RunOutcome, NetError> {
        let members = spec.seeds.len().max(1);
        let want_params = spec.return_params;
        let mut inbox = self.shared.inbox.lock().await;
        let task = self.start(&mut inbox, task_assignment::Kind::Run(spec))?;
        let world = self.shared.cfg.workers;
        let mut summaries: BTreeMap<usize, RankResult> = BTreeMap::new();
        let mut params = None;
        let fail = |message: String| self.fail(message);
        while summaries.len() < world {
            let Some(event) = inbox.recv().await else {
                return Err(fail("the coordinator is shutting down".to_string()));
            };
            match event {
                Event::Row {
                    task: t,
                    member,
                    json,
                } if t == task => {
                    let row: StepMetrics = crate::decode(&json).map_err(|e| {
                        fail(refuse(
                            Reason::Malformed,
                            "rank 0",
                            format!("rank 0 sent a malformed metrics row: {e}"),
                        ))
                    })?;
                    if member >= members {
                        return Err(fail(format!(
                            "rank 0 sent a row of member {member}; the run has {members}"
                        )));
                    }
                    on_row(member, row);
                }
                Event::Params { task: t, bytes } if t == task => {
                    if bytes.len() % 8 != 0 {
                        return Err(fail(format!(
                            "rank 0 sent {} bytes of parameters: expected a multiple of 8",
                            bytes.len()
                        )));
                    }
                    params = Some(
                        bytes
                            .chunks_exact(8)
                            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                            .collect::<Vec<f64>>(),
                    );
                }
                Event::Summary {
                    rank,
                    task: t,
                    json,
                } if t == task => {
                    let s: RankResult = crate::decode(&json).map_err(|e| {
                        fail(refuse(
                            Reason::Malformed,
                            &format!("rank {rank}"),
                            format!("rank {rank} sent a malformed summary: {e}"),
                        ))
                    })?;
                    summaries.insert(rank, s);
                }
                Event::Error {
                    rank,
                    task: t,
                    message,
                } if t == task => {
                    return Err(fail(format!("rank {rank} failed: {message}")));
                }
                Event::Lost { message, .. } => return Err(fail(message)),
                _ => {} // an earlier task's stragglers
            }
        }
        let first = summaries.get(&0).cloned().expect("rank 0 reported").summary;
        if let Some((rank, r)) = summaries
            .iter()
            .find(|(_, r)| r.summary.params_digest != first.params_digest)
        {
            return Err(NetError::Peer(format!(
                "replicas disagree: rank 0 ended with parameters {}, rank {rank} with {}",
                first.params_digest, r.summary.params_digest
            )));
        }
        if want_params && params.is_none() {
            return Err(NetError::Peer(
                "rank 0 finished without sending the final parameters the run asked for".into(),
            ));
        }
        Ok(RunOutcome {
            summary: first,
            timings: summaries.into_values().map(|r| r.timing).collect(),
            params,
        })
    }

    /// Runs an all-reduce benchmark on the workers and returns every rank's result, by rank.
    pub async fn bench(&self, spec: BenchSpec) -> Result<Vec<BenchRankResult>, NetError> {
        let mut inbox = self.shared.inbox.lock().await;
        let task = self.start(&mut inbox, task_assignment::Kind::Bench(spec))?;
        let world = self.shared.cfg.workers;
        let mut results: BTreeMap<usize, BenchRankResult> = BTreeMap::new();
        while results.len() < world {
            let Some(event) = inbox.recv().await else {
                return Err(self.fail("the coordinator is shutting down".to_string()));
            };
            match event {
                Event::Bench {
                    rank,
                    task: t,
                    bytes,
                } if t == task => {
                    let r: BenchRankResult = crate::decode(&bytes).map_err(|e| {
                        self.fail(refuse(
                            Reason::Malformed,
                            &format!("rank {rank}"),
                            format!("rank {rank} sent a malformed benchmark result: {e}"),
                        ))
                    })?;
                    if r.rank != rank {
                        return Err(self.fail(format!(
                            "rank {rank} sent a benchmark result of rank {}",
                            r.rank
                        )));
                    }
                    results.insert(rank, r);
                }
                Event::Error {
                    rank,
                    task: t,
                    message,
                } if t == task => {
                    return Err(self.fail(format!("rank {rank} failed: {message}")));
                }
                Event::Lost { message, .. } => return Err(self.fail(message)),
                _ => {} // an earlier task's stragglers
            }
        }
        Ok(results.into_values().collect())
    }

    /// Publishes the next task to the workers and returns its number; refused once a rank was
    /// lost.
    fn start(
        &self,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        kind: task_assignment::Kind,
    ) -> Result<u64, NetError> {
        while inbox.try_recv().is_ok() {} // leftovers of an earlier task
        let task = {
            let mut s = self.shared.state.lock().expect("poisoned");
            if let Some(lost) = s.lost.iter().position(|l| *l) {
                return Err(NetError::Aborted(format!(
                    "rank {lost} was lost earlier; the cluster cannot run"
                )));
            }
            s.task += 1;
            s.spec = Some(kind);
            s.abort = None;
            s.task
        };
        self.shared.bump();
        Ok(task)
    }

    /// Aborts the current task with `message` (workers hear it with their next heartbeat).
    fn fail(&self, message: String) -> NetError {
        let mut s = self.shared.state.lock().expect("poisoned");
        s.abort = Some(message.clone());
        drop(s);
        self.shared.bump();
        NetError::Aborted(message)
    }

    /// Aborts the current run (workers hear it with their next heartbeat) and tells every
    /// worker to exit, with `reason`.
    pub fn abort_and_shutdown(&self, reason: &str) {
        let mut s = self.shared.state.lock().expect("poisoned");
        s.abort = Some(reason.to_string());
        s.shutdown = Some(reason.to_string());
        drop(s);
        self.shared.bump();
    }

    /// Tells every worker to exit, with `reason`.
    pub fn shutdown_workers(&self, reason: &str) {
        self.shared.state.lock().expect("poisoned").shutdown = Some(reason.to_string());
        self.shared.bump();
    }
}

async fn monitor(shared: Arc<Shared>) {
    let period = shared.cfg.heartbeat_interval / 2;
    loop {
        tokio::time::sleep(period).await;
        let now = Instant::now();
        let mut lost_now = Vec::new();
        {
            let mut s = shared.state.lock().expect("poisoned");
            let peers = s.rendezvous.peers().unwrap_or_default();
            for rank in 0..s.last_seen.len() {
                let Some(seen) = s.last_seen[rank] else {
                    continue;
                };
                if !s.lost[rank] && now.duration_since(seen) > shared.cfg.heartbeat_timeout {
                    s.lost[rank] = true;
                    let addr = peers.get(rank).cloned().unwrap_or_default();
                    let msg = format!(
                        "lost rank {rank} ({addr}): no heartbeat for {:.1}s (timeout {:.1}s)",
                        now.duration_since(seen).as_secs_f64(),
                        shared.cfg.heartbeat_timeout.as_secs_f64()
                    );
                    s.abort = Some(msg.clone());
                    lost_now.push((rank, msg));
                }
            }
        }
        for (rank, message) in lost_now {
            tracing::error!(rank, "{message}");
            let _ = shared.events.send(Event::Lost { message });
            shared.bump();
        }
    }
}

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for Service {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let from = request
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let r = request.into_inner();
        if r.advertise_addr.is_empty() {
            return Err(Status::invalid_argument(refuse(
                Reason::Malformed,
                &from,
                format!("join from {from} gave no advertise address"),
            )));
        }
        let member = Member {
            addr: r.advertise_addr.clone(),
            data_addr: r.data_addr.clone(),
            data_unix: r.data_unix.clone(),
            host_id: r.host_id.clone(),
            hostname: r.hostname.clone(),
            pid: r.pid,
            requested_rank: u32::try_from(r.requested_rank).ok(),
        };
        let index = {
            let mut s = self.shared.state.lock().expect("poisoned");
            s.rendezvous
                .join(member)
                .map_err(|why| Status::resource_exhausted(refuse(Reason::OtherRun, &from, why)))?
        };
        tracing::info!(
            addr = r.advertise_addr,
            host = r.hostname,
            pid = r.pid,
            "worker joined"
        );
        self.shared.bump();
        let coordinator = Coordinator {
            shared: self.shared.clone(),
        };
        let peers = coordinator
            .wait_ready(self.shared.cfg.join_timeout)
            .await
            .map_err(to_status)?;
        let (rank, data_peers, data_unix_peers, host_ids) = {
            let mut s = self.shared.state.lock().expect("poisoned");
            let rank = s.rendezvous.rank_of(index).expect("complete");
            s.last_seen[rank] = Some(Instant::now());
            let z = &s.rendezvous;
            let all = |f: fn(&Member) -> &String| z.by_rank(f).expect("complete");
            let fields = (
                all(|m| &m.data_addr),
                all(|m| &m.data_unix),
                all(|m| &m.host_id),
            );
            (rank, fields.0, fields.1, fields.2)
        };
        Ok(Response::new(JoinReply {
            session: self.shared.session.clone(),
            rank: rank as u32,
            world_size: peers.len() as u32,
            generation: 1,
            peers,
            heartbeat_interval_ms: self.shared.cfg.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: self.shared.cfg.heartbeat_timeout.as_millis() as u64,
            data_peers,
            data_unix_peers,
            host_ids,
            unix_sockets: self.shared.cfg.unix_sockets,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let r = request.into_inner();
        self.shared.check_session(&r.session, r.rank)?;
        let mut s = self.shared.state.lock().expect("poisoned");
        s.last_seen[r.rank as usize] = Some(Instant::now());
        Ok(Response::new(HeartbeatReply {
            abort: s.abort.clone().unwrap_or_default(),
        }))
    }

    async fn next_task(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<TaskAssignment>, Status> {
        let r = request.into_inner();
        self.shared.check_session(&r.session, r.rank)?;
        let mut v = self.shared.version.subscribe();
        loop {
            {
                let s = self.shared.state.lock().expect("poisoned");
                if let Some(reason) = &s.shutdown {
                    return Ok(Response::new(TaskAssignment {
                        task: s.task,
                        kind: Some(task_assignment::Kind::Shutdown(Shutdown {
                            reason: reason.clone(),
                        })),
                    }));
                }
                if s.task > r.done_task {
                    if let Some(kind) = &s.spec {
                        return Ok(Response::new(TaskAssignment {
                            task: s.task,
                            kind: Some(kind.clone()),
                        }));
                    }
                }
            }
            if v.changed().await.is_err() {
                return Err(Status::unavailable("the coordinator is shutting down"));
            }
        }
    }

    async fn report(
        &self,
        request: Request<Streaming<RunReport>>,
    ) -> Result<Response<ReportAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(msg) = stream.next().await {
            let m = msg?;
            self.shared.check_session(&m.session, m.rank)?;
            let rank = m.rank as usize;
            let event = match m.kind {
                Some(run_report::Kind::Step(json)) => Event::Row {
                    task: m.task,
                    member: m.member as usize,
                    json,
                },
                Some(run_report::Kind::Params(bytes)) => Event::Params {
                    task: m.task,
                    bytes,
                },
                Some(run_report::Kind::Summary(json)) => Event::Summary {
                    rank,
                    task: m.task,
                    json,
                },
                Some(run_report::Kind::Bench(bytes)) => Event::Bench {
                    rank,
                    task: m.task,
                    bytes,
                },
                Some(run_report::Kind::Error(message)) => Event::Error {
                    rank,
                    task: m.task,
                    message,
                },
                None => {
                    return Err(Status::invalid_argument(refuse(
                        Reason::Malformed,
                        &format!("rank {}", m.rank),
                        "a report with no content".to_string(),
                    )));
                }
            };
            let _ = self.shared.events.send(event);
        }
        Ok(Response::new(ReportAck {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(addr: &str, rank: Option<u32>) -> Member {
        Member {
            addr: addr.to_string(),
            data_addr: String::new(),
            data_unix: String::new(),
            host_id: String::new(),
            hostname: "h".to_string(),
            pid: 1,
            requested_rank: rank,
        }
    }

    #[test]
    fn ranks_follow_join_order_unless_the_launcher_gave_a_permutation() {
        let mut r = Rendezvous::new(3);
        for a in ["a", "b", "c"] {
            r.join(member(a, None)).unwrap();
        }
        assert_eq!(r.peers().unwrap(), ["a", "b", "c"]);

        let mut r = Rendezvous::new(3);
        for (a, k) in [("a", 2), ("b", 0), ("c", 1)] {
            r.join(member(a, Some(k))).unwrap();
        }
        assert_eq!(r.peers().unwrap(), ["b", "c", "a"]);

        // A duplicate request is not a permutation: join order wins.
        let mut r = Rendezvous::new(2);
        r.join(member("a", Some(1))).unwrap();
        r.join(member("b", Some(1))).unwrap();
        assert_eq!(r.peers().unwrap(), ["a", "b"]);
    }

    #[test]
    fn an_extra_or_out_of_range_worker_is_refused_with_its_address() {
        let mut r = Rendezvous::new(1);
        assert!(!r.is_complete());
        r.join(member("a:1", None)).unwrap();
        assert!(r.is_complete());
        let e = r.join(member("b:2", None)).unwrap_err();
        assert!(
            e.contains("complete with 1 workers") && e.contains("b:2"),
            "{e}"
        );
        let e = Rendezvous::new(2).join(member("c:3", Some(5))).unwrap_err();
        assert!(e.contains("requested rank 5") && e.contains("c:3"), "{e}");
    }
}
