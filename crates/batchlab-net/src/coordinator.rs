//! The coordinator: rendezvous, liveness, handing out runs, collecting results.
//!
//! ```text
//!   worker ──Join──────► wait until N joined ──► rank, world, peers, session, generation
//!   worker ──Heartbeat─► last seen[worker] = now ◄── monitor: silent > timeout ⇒ run aborted
//!                        (elastic: the next generation forms without it)
//!   worker ──NextTask──► (long poll) the current run, Regroup, or Shutdown
//!   worker ──Regroup───► (elastic, long poll) its place in the next generation
//!   worker ──Report────► rows (rank 0), checkpoints, a summary per rank ──► run returns
//! ```
//!
//! The membership rules are a plain state machine ([`Membership`]); the service wraps it with
//! a mutex and a version channel that wakes the long polls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchlab_core::train::StepMetrics;

use crate::bench::BenchRankResult;
pub use crate::collect::{Checkpoint, RunOutcome};
use crate::collect::{Collected, Failed, Report, RunCollection};
use crate::protocol::pb::coordinator_server::{self, CoordinatorServer};
use crate::protocol::pb::{
    HeartbeatReply, HeartbeatRequest, JoinReply, JoinRequest, RegroupNow, RegroupRequest,
    ReportAck, RunReport, Shutdown, TaskAssignment, TaskRequest, task_assignment,
};
use crate::protocol::{BenchOrder, RunOrder};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Check;
use crate::refused::{Reason, Refusal, refuse};
use crate::{NetError, transport};

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
    /// Elastic runs: the fewest workers a generation may have (below it the run pauses);
    /// `workers` for a fixed cluster.
    pub min_workers: usize,
    /// Elastic runs: the most workers a generation may have (a joiner beyond it waits for a
    /// place); `workers` for a fixed cluster.
    pub max_workers: usize,
    /// How long an elastic run stays paused below `min_workers` before it stops.
    pub pause_timeout: Duration,
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
            min_workers: workers,
            max_workers: workers,
            pause_timeout: Duration::from_secs(300),
        }
    }
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

/// Membership as a state machine: members join until the first world is complete (ranks from
/// the launcher when they form a permutation, else join order); that is generation 1.
///
/// An elastic cluster (`min < workers` or `max > workers`) then forms new generations:
/// a member lost, or a late joiner waiting, starts forming the next one; it forms once every
/// member of the current generation has asked to regroup or is lost. Its members are the
/// survivors in their old rank order, then the joiners, up to `max` (a joiner beyond it waits
/// for a place); with fewer than `min` the cluster pauses (forming stays open) until joiners
/// make up the number.
///
/// A run whose batch grows caps the places at [`Membership::want`] (`max` until set): joiners
/// beyond it wait as standby until the batch needs them; survivors are never dropped.
#[derive(Debug, Clone)]
pub struct Membership {
    target: usize,
    min: usize,
    max: usize,
    /// The most places the run wants now (at most `max`).
    wanted: usize,
    /// Every member that ever joined, by worker id (join order).
    members: Vec<Member>,
    lost: Vec<bool>,
    generation: u64,
    /// Worker ids by rank, in the current generation.
    current: Vec<usize>,
    /// Joined after generation 1, not in a generation yet.
    waiting: Vec<usize>,
    /// While the next generation forms: the current members that asked to regroup.
    forming: Option<std::collections::BTreeSet<usize>>,
}

/// What [`Membership::try_form`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forming {
    /// Nothing is forming.
    Idle,
    /// Waiting for current members to ask to regroup (or to be lost).
    Waiting,
    /// Every current member answered, but the survivors and joiners number fewer than `min`.
    Paused {
        /// How many would form it.
        have: usize,
    },
    /// Generation `0` just formed.
    Formed(u64),
}

impl Membership {
    /// A cluster that starts with `workers` members; a fixed one when `min = max = workers`.
    pub fn new(workers: usize, min: usize, max: usize) -> Self {
        Self {
            target: workers,
            min: min.min(workers),
            max: max.max(workers),
            wanted: max.max(workers),
            members: Vec::new(),
            lost: Vec::new(),
            generation: 0,
            current: Vec::new(),
            waiting: Vec::new(),
            forming: None,
        }
    }

    /// Whether generations may change (members lost or added mid-run).
    pub fn elastic(&self) -> bool {
        self.min < self.target || self.max > self.target
    }

    /// Adds a member; returns its worker id.
    pub fn join(&mut self, m: Member) -> Result<usize, String> {
        if self.generation == 0 {
            if let Some(r) = m.requested_rank
                && r as usize >= self.target
            {
                return Err(format!(
                    "requested rank {r} from {} is out of range for {} workers",
                    m.addr, self.target
                ));
            }
        } else if !self.elastic() {
            return Err(format!(
                "the cluster is complete with {} workers; {} at {} was not expected \
                 (start the coordinator with a larger --workers, or stop the extra worker)",
                self.target, m.hostname, m.addr
            ));
        }
        let id = self.members.len();
        self.members.push(m);
        self.lost.push(false);
        if self.generation == 0 {
            if self.members.len() == self.target {
                self.current = self.assign();
                self.generation = 1;
            }
        } else {
            // At --max-workers (or the places the batch wants) it waits for a place (a member
            // lost: a replacement).
            self.waiting.push(id);
            self.form_if_room();
        }
        Ok(id)
    }

    /// The places a generation may have now: `max`, or fewer while the batch needs fewer.
    fn places(&self) -> usize {
        self.max.min(self.wanted)
    }

    /// Starts forming the next generation when a joiner waits and a place is free.
    fn form_if_room(&mut self) {
        let members = self.current.iter().filter(|&&c| !self.lost[c]).count();
        let waiting = self.waiting.iter().any(|&w| !self.lost[w]);
        if self.generation > 0 && waiting && members < self.places() {
            self.forming.get_or_insert_with(Default::default);
        }
    }

    /// Caps the places of the next generations at `n` (within `min(workers, min)`…`max`), as a
    /// run whose batch grows does; raising it lets waiting joiners in (a generation starts
    /// forming). Returns the cap now in force.
    pub fn want(&mut self, n: usize) -> usize {
        self.wanted = n.clamp(self.min.max(1), self.max);
        if self.elastic() {
            self.form_if_room();
        }
        self.wanted
    }

    /// The places the run wants now (see [`Membership::want`]).
    pub fn wanted(&self) -> usize {
        self.wanted
    }

    /// Joiners waiting for a place.
    pub fn waiting(&self) -> usize {
        self.waiting.iter().filter(|&&w| !self.lost[w]).count()
    }

    fn assign(&self) -> Vec<usize> {
        let requested: Vec<Option<u32>> = self.members.iter().map(|m| m.requested_rank).collect();
        let mut seen = vec![false; self.target];
        let permutation = requested.iter().all(|r| {
            r.is_some_and(|r| {
                let fresh = !seen[r as usize];
                seen[r as usize] = true;
                fresh
            })
        });
        if permutation {
            let mut by_rank = vec![0; self.target];
            for (id, r) in requested.iter().enumerate() {
                by_rank[r.expect("checked") as usize] = id;
            }
            by_rank
        } else {
            (0..self.target).collect()
        }
    }

    /// Marks worker `id` lost; in an elastic cluster the next generation starts forming when
    /// it was a member of the current one. Returns its rank in the current generation.
    pub fn lose(&mut self, id: usize) -> Option<usize> {
        if self.lost.get(id).copied().unwrap_or(true) {
            return None;
        }
        self.lost[id] = true;
        self.waiting.retain(|&w| w != id);
        let rank = self.current.iter().position(|&c| c == id);
        if rank.is_some() && self.elastic() {
            self.forming.get_or_insert_with(Default::default);
        }
        rank
    }

    /// Worker `id` leaves generation `from` and waits for the next one.
    pub fn regroup(&mut self, id: usize, from: u64) -> Result<(), Refusal> {
        if !self.elastic() {
            return Err(Refusal::Stale(
                "the cluster is not elastic (--min-workers and --max-workers equal \
                 --workers): it cannot regroup"
                    .to_string(),
            ));
        }
        if self.lost.get(id).copied().unwrap_or(true) {
            return Err(Refusal::Lost(format!(
                "worker {id} was declared lost; join again"
            )));
        }
        if from == self.generation && self.current.contains(&id) {
            self.forming.get_or_insert_with(Default::default).insert(id);
        }
        Ok(())
    }

    /// Forms the next generation when it can (see the type's docs).
    pub fn try_form(&mut self) -> Forming {
        let Some(ready) = &self.forming else {
            return Forming::Idle;
        };
        if self.generation == 0 {
            return Forming::Waiting;
        }
        if !self
            .current
            .iter()
            .all(|id| ready.contains(id) || self.lost[*id])
        {
            return Forming::Waiting;
        }
        let mut next: Vec<usize> = self
            .current
            .iter()
            .copied()
            .filter(|id| !self.lost[*id])
            .collect();
        next.extend(self.waiting.iter().copied().filter(|id| !self.lost[*id]));
        if next.len() < self.min.max(1) {
            return Forming::Paused { have: next.len() };
        }
        // Survivors keep their places; joiners fill the rest.
        let survivors = self.current.iter().filter(|&&id| !self.lost[id]).count();
        next.truncate(self.places().max(survivors));
        self.waiting.retain(|id| !next.contains(id));
        self.current = next;
        self.generation += 1;
        self.forming = None;
        Forming::Formed(self.generation)
    }

    /// The current generation (0 before the first forms).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The newest generation, formed or forming.
    pub fn newest(&self) -> u64 {
        self.generation + u64::from(self.forming.is_some() && self.generation > 0)
    }

    /// Whether the next generation is forming.
    pub fn is_forming(&self) -> bool {
        self.forming.is_some() && self.generation > 0
    }

    /// The rank of worker `id` in the current generation.
    pub fn rank_of(&self, id: usize) -> Option<usize> {
        self.current.iter().position(|&c| c == id)
    }

    /// Worker ids by rank in the current generation.
    pub fn current(&self) -> &[usize] {
        &self.current
    }

    /// Whether worker `id` was lost.
    pub fn is_lost(&self, id: usize) -> bool {
        self.lost.get(id).copied().unwrap_or(true)
    }

    /// Number of members that ever joined.
    pub fn joined(&self) -> usize {
        self.members.len()
    }

    /// The member with worker id `id`.
    pub fn member(&self, id: usize) -> Option<&Member> {
        self.members.get(id)
    }

    /// Peer addresses by rank, once a generation formed.
    pub fn peers(&self) -> Option<Vec<String>> {
        self.by_rank(|m| &m.addr)
    }

    /// A field of every member, by rank, once a generation formed.
    pub fn by_rank(&self, field: impl Fn(&Member) -> &String) -> Option<Vec<String>> {
        (self.generation > 0).then(|| {
            self.current
                .iter()
                .map(|&id| field(&self.members[id]).clone())
                .collect()
        })
    }

    /// Whether the first generation formed.
    pub fn is_complete(&self) -> bool {
        self.generation > 0
    }
}

#[derive(Debug)]
struct State {
    members: Membership,
    /// Last heartbeat by worker id.
    last_seen: Vec<Option<Instant>>,
    task: u64,
    /// The current task (a run or a benchmark), handed to every worker that asks.
    spec: Option<task_assignment::Kind>,
    /// The run in progress (0: none): a new generation takes it up again.
    open: u64,
    /// The generation the current task started in (a benchmark runs on that one only).
    task_generation: u64,
    /// The rows of run `rows_task` received so far: the next step expected of each member.
    rows_task: u64,
    rows_through: Vec<u64>,
    /// Since when an elastic run has been paused below `min_workers`.
    paused_since: Option<Instant>,
    abort: Option<String>,
    shutdown: Option<String>,
}

struct Shared {
    cfg: CoordinatorConfig,
    session: String,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    events: mpsc::UnboundedSender<Report>,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Report>>,
}

impl Shared {
    /// The cluster's state. A panic while holding the lock is a bug that already ended this
    /// process's work, so a poisoned lock is not recovered from.
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("poisoned")
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Checks that a call belongs to this session and names a worker that joined it.
    fn check_session(&self, session: &str, worker: u64) -> Result<(), Status> {
        if session != self.session {
            return Err(Status::from(Refusal::counted(
                Reason::OtherRun,
                &format!("worker {worker}"),
                format!(
                    "worker {worker} belongs to coordinator session {session:?}, this coordinator's session is {:?} \
                     (the worker joined another coordinator)",
                    self.session
                ),
            )));
        }
        let joined = self.state().members.joined();
        if worker as usize >= joined {
            return Err(Status::from(Refusal::counted(
                Reason::OtherRun,
                &format!("worker {worker}"),
                format!("worker {worker} is unknown: {joined} workers joined this session"),
            )));
        }
        Ok(())
    }

    /// Forms the next generation if it can, logging what happened.
    fn try_form(&self, s: &mut State) {
        match s.members.try_form() {
            Forming::Formed(g) => {
                s.paused_since = None;
                // Every member is watched from the new generation on: one that died before
                // taking its place is lost by the heartbeat timeout like any other.
                let now = Instant::now();
                for id in s.members.current().to_vec() {
                    if s.last_seen.len() <= id {
                        s.last_seen.resize(id + 1, None);
                    }
                    s.last_seen[id] = Some(now);
                }
                let ranks: Vec<String> = s
                    .members
                    .current()
                    .iter()
                    .map(|&id| {
                        let m = s.members.member(id).expect("a member");
                        format!("{}:{}", m.hostname, m.pid)
                    })
                    .collect();
                tracing::warn!(
                    generation = g,
                    workers = ranks.len(),
                    "generation {g} formed with {} workers: {}",
                    ranks.len(),
                    ranks.join(", ")
                );
                self.bump();
            }
            Forming::Paused { have } => {
                if s.paused_since.is_none() {
                    s.paused_since = Some(Instant::now());
                    // Whoever waits on the run learns of the pause (and its deadline).
                    self.bump();
                    tracing::warn!(
                        "paused: {have} workers left, fewer than --min-workers {}; waiting up to \
                         {:.0} s for workers to join",
                        self.cfg.min_workers,
                        self.cfg.pause_timeout.as_secs_f64()
                    );
                }
            }
            Forming::Idle | Forming::Waiting => {}
        }
    }

    /// The reply that tells worker `id` its place in the current generation.
    fn placement(&self, s: &State, id: usize) -> Option<JoinReply> {
        let rank = s.members.rank_of(id)?;
        let z = &s.members;
        let all = |f: fn(&Member) -> &String| z.by_rank(f).expect("formed");
        let peers = all(|m| &m.addr);
        Some(JoinReply {
            session: self.session.clone(),
            rank: rank as u32,
            world_size: peers.len() as u32,
            generation: z.generation(),
            peers,
            heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: self.cfg.heartbeat_timeout.as_millis() as u64,
            data_peers: all(|m| &m.data_addr),
            data_unix_peers: all(|m| &m.data_unix),
            host_ids: all(|m| &m.host_id),
            unix_sockets: self.cfg.unix_sockets,
            worker_id: id as u64,
            task_open: s.open,
            elastic: z.elastic(),
        })
    }

    /// Waits until worker `id` has a place in a generation after `after`, up to `timeout`.
    async fn wait_placed(
        &self,
        id: usize,
        after: u64,
        timeout: Duration,
    ) -> Result<JoinReply, Status> {
        let mut v = self.version.subscribe();
        let wait = async {
            loop {
                {
                    let s = self.state();
                    if s.members.is_lost(id) {
                        return Err(Refusal::Lost(format!(
                            "worker {id} was declared lost; join again"
                        ))
                        .into());
                    }
                    if let Some(reason) = &s.shutdown {
                        return Err(
                            Refusal::Stopped(format!("the coordinator stopped: {reason}")).into(),
                        );
                    }
                    if s.members.generation() > after
                        && let Some(reply) = self.placement(&s, id)
                    {
                        return Ok(reply);
                    }
                }
                if v.changed().await.is_err() {
                    return Err(
                        Refusal::Unavailable("the coordinator is shutting down".into()).into(),
                    );
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => {
                let s = self.state();
                Err(Refusal::TimedOut(format!(
                    "timed out after {:.0} s waiting for a place in a generation ({} of {} workers \
                     joined, generation {})",
                    timeout.as_secs_f64(),
                    s.members.joined(),
                    self.cfg.workers,
                    s.members.generation()
                ))
                .into())
            }
        }
    }
}

/// How long a standby joiner of an elastic cluster waits for a place.
const STANDBY_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
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
        Self {
            shared: Arc::new(Shared {
                session,
                state: Mutex::new(State {
                    members: Membership::new(cfg.workers, cfg.min_workers, cfg.max_workers),
                    last_seen: Vec::new(),
                    task: 0,
                    spec: None,
                    open: 0,
                    task_generation: 0,
                    rows_task: 0,
                    rows_through: Vec::new(),
                    paused_since: None,
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

    /// The newest generation (formed, or forming) and the size of the current one.
    pub fn membership(&self) -> (u64, usize) {
        let s = self.state();
        (s.members.newest(), s.members.current().len())
    }

    /// Waits until no generation is forming, up to `timeout` (paused below the minimum, it
    /// may take until the pause timeout); returns the generation and its size.
    pub async fn settled(&self, timeout: Duration) -> Result<(u64, usize), NetError> {
        let mut changes = self.shared.version.subscribe();
        let wait = async {
            loop {
                {
                    let s = self.state();
                    if let Some(reason) = s.abort.clone().filter(|_| s.paused_since.is_some()) {
                        return Err(NetError::Aborted(reason));
                    }
                    if !s.members.is_forming() {
                        return Ok((s.members.generation(), s.members.current().len()));
                    }
                }
                // Every change of membership, pause or abort bumps the version.
                if changes.changed().await.is_err() {
                    return Err(NetError::Aborted("the coordinator is shutting down".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(NetError::Timeout {
                what: "the next generation to form".into(),
                after: timeout,
            }))
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
        let router = transport::server().add_service(svc);
        // Under TLS, the handshakes are done (and the failed ones refused) before tonic.
        let result = match &self.shared.cfg.tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(
                        tls.grpc_incoming(listener, "the coordinator"),
                        shutdown,
                    )
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        shutdown,
                    )
                    .await
            }
        };
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
                if let Some(peers) = self.shared.state().members.peers() {
                    return peers;
                }
                if v.changed().await.is_err() {
                    return Vec::new();
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            let n = self.shared.state().members.joined();
            NetError::Timeout {
                what: format!("{} workers to join ({n} joined)", self.shared.cfg.workers),
                after: timeout,
            }
        })
    }

    /// Runs `spec` on the workers, handing each metrics row to `on_row` with the member it is
    /// of (0 for a single run; the index into `spec.seeds` for a seed-mean group), and returns
    /// the summary once every rank reported the same final parameters, with each rank's timing.
    ///
    /// In an elastic cluster the run survives lost and added workers: each row is taken once
    /// (a new rank 0 sends again those not yet acknowledged), and the run ends when every
    /// member of the current generation has reported.
    pub async fn run(
        &self,
        spec: RunOrder,
        on_row: impl FnMut(usize, StepMetrics),
    ) -> Result<RunOutcome, NetError> {
        self.run_checkpointed(spec, None, on_row, |_| {}).await
    }

    /// [`Coordinator::run`], from `resume` when given (the run state of a checkpoint, whose
    /// rows the caller holds already), handing each checkpoint the workers send
    /// (`spec.checkpoint_every`) to `on_checkpoint` once every row it covers was handed to
    /// `on_row`.
    pub async fn run_checkpointed(
        &self,
        mut spec: RunOrder,
        resume: Option<&Checkpoint>,
        on_row: impl FnMut(usize, StepMetrics),
        on_checkpoint: impl FnMut(Checkpoint),
    ) -> Result<RunOutcome, NetError> {
        let members = spec.seeds.len().max(1);
        let rows = match resume {
            Some(c) => {
                if c.rows.len() != members || c.run != spec.run_id() {
                    return Err(NetError::Config(format!(
                        "the checkpoint is of another run (rows of {} members, this run has {members}; \
                         or another configuration)",
                        c.rows.len()
                    )));
                }
                spec.resume = c.state.clone();
                c.rows.clone()
            }
            None => vec![0; members],
        };
        let mut inbox = self.shared.inbox.lock().await;
        self.cap_for(&spec);
        let task = self.start(
            &mut inbox,
            task_assignment::Kind::Run(spec.to_wire()),
            Some(rows),
        )?;
        let result = self
            .collect_run(&mut inbox, task, &spec, on_row, on_checkpoint)
            .await;
        self.shared.state().open = 0;
        result
    }

    /// Feeds the workers' reports of run `task` to its [`RunCollection`] until it ends: the
    /// shell waits on reports, on the generation changing and on the pause deadline, and
    /// carries out what the collection decides.
    async fn collect_run(
        &self,
        inbox: &mut mpsc::UnboundedReceiver<Report>,
        task: u64,
        order: &RunOrder,
        mut on_row: impl FnMut(usize, StepMetrics),
        mut on_checkpoint: impl FnMut(Checkpoint),
    ) -> Result<RunOutcome, NetError> {
        let elastic = self.state().members.elastic();
        let mut run = RunCollection::new(task, order, elastic);
        let mut generations = self.shared.version.subscribe();
        loop {
            let paused = {
                let s = self.state();
                // Done once every member of the current generation reported (none forming).
                let current = (!s.members.is_forming()).then(|| s.members.current());
                if let Some(outcome) = run.outcome(current, &s.rows_through) {
                    drop(s);
                    return outcome.map_err(|f| self.failed(f));
                }
                s.paused_since
            };
            let deadline = paused.map(|p| p + self.shared.cfg.pause_timeout);
            if let Some(since) = paused.filter(|p| p.elapsed() > self.shared.cfg.pause_timeout) {
                return Err(self.fail(format!(
                    "paused for {:.0} s with fewer than --min-workers {} workers; stopping",
                    since.elapsed().as_secs_f64(),
                    self.shared.cfg.min_workers
                )));
            }
            let report = tokio::select! {
                r = inbox.recv() => r,
                // A generation formed (or a pause began): look again.
                _ = generations.changed() => continue,
                _ = sleep_until(deadline), if deadline.is_some() => continue,
            };
            let Some(report) = report else {
                return Err(self.fail("the coordinator is shutting down".to_string()));
            };
            let collected = {
                let mut s = self.state();
                let State {
                    members,
                    rows_through,
                    ..
                } = &mut *s;
                run.handle(report, rows_through, |w| members.is_lost(w))
            };
            match collected.map_err(|f| self.failed(f))? {
                Collected::Row(member, row) => {
                    if order.batch_per_worker > 0 {
                        self.grow(row.batch.div_ceil(order.batch_per_worker) as usize);
                    }
                    on_row(member, row)
                }
                Collected::Checkpoint(c) => on_checkpoint(c),
                Collected::Nothing => {}
            }
        }
    }

    /// Elastic growth: lets the next generations have up to `workers` places (never fewer
    /// than now); when that frees a place for a waiting joiner, the next generation forms at
    /// the next step boundary.
    fn grow(&self, workers: usize) {
        let mut s = self.state();
        let now = s.members.current().len();
        let before = s.members.wanted();
        let wanted = s.members.want(workers.max(now));
        if wanted != before {
            tracing::info!(
                from = before,
                to = wanted,
                waiting = s.members.waiting(),
                "the batch now wants {wanted} workers"
            );
            self.shared.try_form(&mut s);
            drop(s);
            self.shared.bump();
        }
    }

    /// Sets the cap on places a run of `order` starts with: the current generation's size
    /// when it grows with its batch (`batch_per_worker`), else `--max-workers`.
    /// [`Coordinator::run_checkpointed`] does it; a caller that starts workers as the cap
    /// allows calls it first.
    pub fn cap_for(&self, order: &RunOrder) {
        let mut s = self.state();
        let cap = if order.batch_per_worker > 0 {
            s.members.current().len()
        } else {
            usize::MAX
        };
        s.members.want(cap);
    }

    /// The error of a run the collection declared failed (aborting the cluster where the run
    /// cannot go on).
    fn failed(&self, f: Failed) -> NetError {
        match f {
            Failed::Malformed { from, message } => {
                self.fail(refuse(Reason::Malformed, &from, message))
            }
            Failed::Abort(message) => self.fail(message),
            Failed::Peer(message) => NetError::Peer(message),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Runs an all-reduce benchmark on the workers and returns every rank's result, by rank.
    pub async fn bench(&self, spec: &BenchOrder) -> Result<Vec<BenchRankResult>, NetError> {
        let mut inbox = self.shared.inbox.lock().await;
        let task = self.start(
            &mut inbox,
            task_assignment::Kind::Bench(spec.to_wire()),
            None,
        )?;
        let (generation, world, elastic) = {
            let s = self.state();
            (
                s.members.generation(),
                s.members.current().len(),
                s.members.elastic(),
            )
        };
        let mut results: BTreeMap<usize, BenchRankResult> = BTreeMap::new();
        let mut generations = self.shared.version.subscribe();
        while results.len() < world {
            if elastic {
                // A member lost or added ends the benchmark (its caller may run it again on
                // the next generation): a lost member would never report.
                let now = self.membership().0;
                if now != generation {
                    // Not an abort: the workers go on to the next generation and task.
                    return Err(NetError::Aborted(format!(
                        "the cluster's membership changed during the benchmark (generation \
                         {generation} → {now})"
                    )));
                }
            }
            let event = tokio::select! {
                e = inbox.recv() => e,
                _ = generations.changed(), if elastic => continue,
            };
            let Some(event) = event else {
                return Err(self.fail("the coordinator is shutting down".to_string()));
            };
            match event {
                Report::Bench {
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
                Report::Error {
                    rank,
                    task: t,
                    message,
                    ..
                } if t == task => {
                    let message = format!("rank {rank} failed: {message}");
                    if elastic {
                        // A member lost mid-benchmark: the others leave it by themselves and
                        // regroup; an abort would follow them into the next task.
                        return Err(NetError::Aborted(message));
                    }
                    return Err(self.fail(message));
                }
                Report::Lost { message, .. } => return Err(self.fail(message)),
                _ => {} // an earlier task's stragglers
            }
        }
        Ok(results.into_values().collect())
    }

    /// Publishes the next task to the workers and returns its number; refused once a rank of a
    /// fixed cluster was lost.
    /// A run (`rows`: the rows its members start after) is open until it returns: a new
    /// generation takes it up again, and only an open run is handed to a worker.
    fn start(
        &self,
        inbox: &mut mpsc::UnboundedReceiver<Report>,
        kind: task_assignment::Kind,
        rows: Option<Vec<u64>>,
    ) -> Result<u64, NetError> {
        while inbox.try_recv().is_ok() {} // leftovers of an earlier task
        let task = {
            let mut s = self.state();
            if !s.members.elastic()
                && let Some(rank) = (0..s.members.current().len())
                    .find(|&r| s.members.is_lost(s.members.current()[r]))
            {
                return Err(NetError::Aborted(format!(
                    "rank {rank} was lost earlier; the cluster cannot run"
                )));
            }
            if let Some(reason) = &s.abort
                && s.paused_since.is_some()
            {
                return Err(NetError::Aborted(reason.clone()));
            }
            s.task += 1;
            s.spec = Some(kind);
            s.abort = None;
            s.task_generation = s.members.generation();
            if let Some(rows) = rows {
                s.open = s.task;
                s.rows_task = s.task;
                s.rows_through = rows;
            }
            s.task
        };
        self.shared.bump();
        Ok(task)
    }

    /// Aborts the current task with `message` (workers hear it with their next heartbeat).
    fn fail(&self, message: String) -> NetError {
        let mut s = self.state();
        s.abort = Some(message.clone());
        drop(s);
        self.shared.bump();
        NetError::Aborted(message)
    }

    /// Aborts the current run (workers hear it with their next heartbeat) and tells every
    /// worker to exit, with `reason`.
    pub fn abort_and_shutdown(&self, reason: &str) {
        let mut s = self.state();
        s.abort = Some(reason.to_string());
        s.shutdown = Some(reason.to_string());
        drop(s);
        self.shared.bump();
    }

    /// Tells every worker to exit, with `reason`.
    pub fn shutdown_workers(&self, reason: &str) {
        self.shared.state().shutdown = Some(reason.to_string());
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
            let mut s = shared.state();
            let elastic = s.members.elastic();
            for id in 0..s.last_seen.len() {
                let Some(seen) = s.last_seen[id] else {
                    continue;
                };
                if s.members.is_lost(id) || now.duration_since(seen) <= shared.cfg.heartbeat_timeout
                {
                    continue;
                }
                let addr = s
                    .members
                    .member(id)
                    .map(|m| m.addr.clone())
                    .unwrap_or_default();
                let silent = format!(
                    "no heartbeat for {:.1}s (timeout {:.1}s)",
                    now.duration_since(seen).as_secs_f64(),
                    shared.cfg.heartbeat_timeout.as_secs_f64()
                );
                let Some(rank) = s.members.lose(id) else {
                    tracing::warn!("lost worker {id} ({addr}) before it had a rank: {silent}");
                    continue;
                };
                if elastic {
                    tracing::warn!(
                        rank,
                        "lost rank {rank} ({addr}): {silent}; the others form the next generation"
                    );
                    shared.try_form(&mut s);
                    shared.bump();
                } else {
                    let msg = format!("lost rank {rank} ({addr}): {silent}");
                    s.abort = Some(msg.clone());
                    lost_now.push((rank, msg));
                }
            }
            if let Some(since) = s.paused_since
                && since.elapsed() > shared.cfg.pause_timeout
                && s.abort.is_none()
            {
                let msg = format!(
                    "paused for {:.0} s with fewer than --min-workers {} workers; stopping",
                    since.elapsed().as_secs_f64(),
                    shared.cfg.min_workers
                );
                s.abort = Some(msg.clone());
                lost_now.push((usize::MAX, msg));
            }
        }
        for (_, message) in lost_now {
            tracing::error!("{message}");
            let _ = shared.events.send(Report::Lost { message });
            shared.bump();
        }
    }
}

struct Service {
    shared: Arc<Shared>,
}

impl Service {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state()
    }
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for Service {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let from = request
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let r = request.into_inner();
        if r.advertise_addr.is_empty() {
            return Err(Status::from(Refusal::counted(
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
        let (id, after) = {
            let mut s = self.state();
            let after = s.members.generation();
            let id = s
                .members
                .join(member)
                .map_err(|why| Refusal::Full(refuse(Reason::OtherRun, &from, why)))?;
            if s.last_seen.len() <= id {
                s.last_seen.resize(id + 1, None);
            }
            // Watched once placed (it heartbeats from then on).
            s.last_seen[id] = None;
            self.shared.try_form(&mut s);
            (id, after)
        };
        tracing::info!(
            addr = r.advertise_addr,
            host = r.hostname,
            pid = r.pid,
            worker = id,
            "worker joined"
        );
        self.shared.bump();
        // A joiner of a running elastic cluster is standby: it waits for a place as long as the
        // cluster runs (until the batch grows, or a member is lost).
        let standby = after > 0 && self.state().members.elastic();
        let limit = if standby {
            STANDBY_WAIT
        } else {
            self.shared.cfg.join_timeout
        };
        let reply = match self.shared.wait_placed(id, after, limit).await {
            Ok(r) => r,
            Err(e) => {
                // It no longer waits: never give it a place.
                let mut s = self.state();
                if s.members.rank_of(id).is_none() {
                    s.members.lose(id);
                }
                return Err(e);
            }
        };
        self.shared.state().last_seen[id] = Some(Instant::now());
        Ok(Response::new(reply))
    }

    async fn regroup(
        &self,
        request: Request<RegroupRequest>,
    ) -> Result<Response<JoinReply>, Status> {
        let r = request.into_inner();
        self.shared.check_session(&r.session, r.worker_id)?;
        let id = r.worker_id as usize;
        {
            let mut s = self.state();
            s.members.regroup(id, r.generation)?;
            s.last_seen[id] = Some(Instant::now());
            self.shared.try_form(&mut s);
        }
        self.shared.bump();
        // Paused below the minimum, a generation may take up to the pause timeout to form.
        let limit = self.shared.cfg.join_timeout + self.shared.cfg.pause_timeout;
        let reply = self.shared.wait_placed(id, r.generation, limit).await?;
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let r = request.into_inner();
        self.shared.check_session(&r.session, r.worker_id)?;
        let mut s = self.state();
        let id = r.worker_id as usize;
        if s.members.is_lost(id) {
            return Err(Refusal::Lost(format!("worker {id} was declared lost; join again")).into());
        }
        s.last_seen[id] = Some(Instant::now());
        Ok(Response::new(HeartbeatReply {
            abort: s.abort.clone().unwrap_or_default(),
            generation: s.members.newest(),
            rows_task: s.rows_task,
            rows_through: s.rows_through.clone(),
        }))
    }

    async fn next_task(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<TaskAssignment>, Status> {
        let r = request.into_inner();
        self.shared.check_session(&r.session, r.worker_id)?;
        let id = r.worker_id as usize;
        let mut v = self.shared.version.subscribe();
        loop {
            {
                let s = self.state();
                if let Some(reason) = &s.shutdown {
                    return Ok(Response::new(TaskAssignment {
                        task: s.task,
                        kind: Some(task_assignment::Kind::Shutdown(Shutdown {
                            reason: reason.clone(),
                        })),
                    }));
                }
                let behind = s.members.generation() > r.generation;
                if (s.members.is_forming() && r.generation == s.members.generation()) || behind {
                    return Ok(Response::new(TaskAssignment {
                        task: s.task,
                        kind: Some(task_assignment::Kind::Regroup(RegroupNow {
                            generation: s.members.newest(),
                        })),
                    }));
                }
                if s.task > r.done_task
                    && s.members.rank_of(id).is_some()
                    && let Some(kind) = &s.spec
                {
                    // A run that ended is not handed to a worker that joined after it, nor
                    // a benchmark to a worker of another generation (its collectives are
                    // numbered within one).
                    let stale = match kind {
                        task_assignment::Kind::Run(_) => s.open != s.task,
                        _ => s.task_generation != r.generation,
                    };
                    if !stale {
                        return Ok(Response::new(TaskAssignment {
                            task: s.task,
                            kind: Some(kind.clone()),
                        }));
                    }
                }
            }
            if v.changed().await.is_err() {
                return Err(Refusal::Unavailable("the coordinator is shutting down".into()).into());
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
            self.shared.check_session(&m.session, m.worker_id)?;
            let from = format!("rank {}", m.rank);
            let event = Report::from_wire(m)
                .map_err(|why| Refusal::counted(Reason::Malformed, &from, why))?;
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
        let mut r = Membership::new(3, 3, 3);
        for a in ["a", "b", "c"] {
            r.join(member(a, None)).unwrap();
        }
        assert_eq!(r.peers().unwrap(), ["a", "b", "c"]);

        let mut r = Membership::new(3, 3, 3);
        for (a, k) in [("a", 2), ("b", 0), ("c", 1)] {
            r.join(member(a, Some(k))).unwrap();
        }
        assert_eq!(r.peers().unwrap(), ["b", "c", "a"]);
        assert_eq!(r.rank_of(0), Some(2));

        // A duplicate request is not a permutation: join order wins.
        let mut r = Membership::new(2, 2, 2);
        r.join(member("a", Some(1))).unwrap();
        r.join(member("b", Some(1))).unwrap();
        assert_eq!(r.peers().unwrap(), ["a", "b"]);
    }

    #[test]
    fn an_extra_or_out_of_range_worker_is_refused_with_its_address() {
        let mut r = Membership::new(1, 1, 1);
        assert!(!r.is_complete());
        r.join(member("a:1", None)).unwrap();
        assert!(r.is_complete());
        let e = r.join(member("b:2", None)).unwrap_err();
        assert!(
            e.contains("complete with 1 workers") && e.contains("b:2"),
            "{e}"
        );
        let e = Membership::new(2, 2, 2)
            .join(member("c:3", Some(5)))
            .unwrap_err();
        assert!(e.contains("requested rank 5") && e.contains("c:3"), "{e}");
        // A fixed cluster neither regroups nor goes on without a member.
        let mut r = Membership::new(2, 2, 2);
        r.join(member("a", None)).unwrap();
        r.join(member("b", None)).unwrap();
        assert!(!r.elastic());
        assert_eq!(r.lose(1), Some(1));
        assert!(!r.is_forming());
        assert!(matches!(r.regroup(0, 1), Err(Refusal::Stale(m)) if m.contains("not elastic")));
    }

    #[test]
    fn survivors_form_the_next_generation_once_all_answered_in_their_old_order() {
        let mut r = Membership::new(3, 2, 3);
        for a in ["a", "b", "c"] {
            r.join(member(a, None)).unwrap();
        }
        assert_eq!((r.generation(), r.newest()), (1, 1));
        // Rank 1 is lost: generation 2 forms once ranks 0 and 2 asked to regroup.
        assert_eq!(r.lose(1), Some(1));
        assert_eq!(r.newest(), 2);
        r.regroup(2, 1).unwrap();
        assert_eq!(r.try_form(), Forming::Waiting);
        r.regroup(0, 1).unwrap();
        assert_eq!(r.try_form(), Forming::Formed(2));
        assert_eq!(r.peers().unwrap(), ["a", "c"]);
        assert_eq!((r.rank_of(2), r.rank_of(1)), (Some(1), None));
        // The lost worker cannot come back under its old id; it joins as a new one.
        assert!(matches!(r.regroup(1, 1), Err(Refusal::Lost(m)) if m.contains("declared lost")));
        // A late joiner waits for the next generation and goes last.
        let d = r.join(member("d", None)).unwrap();
        assert!(r.is_forming());
        assert_eq!(r.try_form(), Forming::Waiting);
        r.regroup(0, 2).unwrap();
        r.regroup(2, 2).unwrap();
        assert_eq!(r.try_form(), Forming::Formed(3));
        assert_eq!(r.peers().unwrap(), ["a", "c", "d"]);
        assert_eq!(r.rank_of(d), Some(2));
        // At --max-workers a further joiner waits for a place, and takes the first lost one's.
        let e = r.join(member("e", None)).unwrap();
        assert!(!r.is_forming());
        assert_eq!(r.lose(2), Some(1));
        for id in [0, d] {
            r.regroup(id, 3).unwrap();
        }
        assert_eq!(r.try_form(), Forming::Formed(4));
        assert_eq!(r.peers().unwrap(), ["a", "d", "e"]);
        assert_eq!(r.rank_of(e), Some(2));
    }

    #[test]
    fn with_growth_joiners_wait_as_standby_until_the_batch_wants_them() {
        let mut r = Membership::new(1, 1, 4);
        r.join(member("a", None)).unwrap();
        assert_eq!(r.want(1), 1);
        for b in ["b", "c", "d"] {
            r.join(member(b, None)).unwrap();
        }
        // Three standby, no place: nothing forms.
        assert!(!r.is_forming());
        assert_eq!((r.waiting(), r.try_form()), (3, Forming::Idle));
        // The batch doubles: one more place, taken by the first joiner.
        assert_eq!(r.want(2), 2);
        assert!(r.is_forming());
        r.regroup(0, 1).unwrap();
        assert_eq!(r.try_form(), Forming::Formed(2));
        assert_eq!(r.peers().unwrap(), ["a", "b"]);
        assert_eq!(r.waiting(), 2);
        // Beyond --max-workers the cap stops at it.
        assert_eq!(r.want(100), 4);
        for id in [0, 1] {
            r.regroup(id, 2).unwrap();
        }
        assert_eq!(r.try_form(), Forming::Formed(3));
        assert_eq!(r.peers().unwrap(), ["a", "b", "c", "d"]);
        // A smaller cap never drops a member: a loss is replaced only up to the cap.
        assert_eq!(r.want(2), 2);
        let e = r.join(member("e", None)).unwrap();
        assert!(!r.is_forming(), "four members already exceed two places");
        assert_eq!(r.lose(3), Some(3));
        for id in [0, 1, 2] {
            r.regroup(id, 3).unwrap();
        }
        assert_eq!(r.try_form(), Forming::Formed(4));
        assert_eq!(r.peers().unwrap(), ["a", "b", "c"]);
        assert_eq!(r.rank_of(e), None);
        // A standby joiner that stops waiting never gets a place.
        r.lose(e);
        assert_eq!(r.waiting(), 0);
        assert_eq!(r.want(4), 4);
        assert!(!r.is_forming());
    }

    #[test]
    fn below_the_minimum_the_cluster_pauses_until_a_joiner_makes_up_the_number() {
        let mut r = Membership::new(2, 2, 4);
        r.join(member("a", None)).unwrap();
        r.join(member("b", None)).unwrap();
        r.lose(0);
        r.regroup(1, 1).unwrap();
        assert_eq!(r.try_form(), Forming::Paused { have: 1 });
        assert_eq!(r.generation(), 1);
        r.join(member("c", None)).unwrap();
        assert_eq!(r.try_form(), Forming::Formed(2));
        assert_eq!(r.peers().unwrap(), ["b", "c"]);
    }
}
