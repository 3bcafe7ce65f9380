//! The peer mesh: every worker's `Peer` service, its outgoing streams, and the networked
//! executor of `batchlab-collective` plans.
//!
//! ```text
//!   rank a ──Exchange stream (a→b, ordered)──► rank b's Peer service ──► inbox[a] of rank b
//!   rank b ──Exchange stream (b→a, ordered)──► rank a's Peer service ──► inbox[b] of rank a
//! ```
//!
//! One long-lived client stream per ordered pair carries the sender's chunks in order; the
//! receiving service routes each chunk into the inbox of its sender. The executor runs a plan
//! step by step: it encodes all of a step's sends from the buffer as it was at the start of
//! the step, then takes each receive from the matching inbox in order, checks it (collective
//! number, step, length), and reduces or copies it into the buffer. Every wait has a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::pb::peer_client::PeerClient;
use crate::protocol::pb::peer_server::{Peer, PeerServer};
use crate::protocol::pb::{Chunk, ExchangeAck};
use batchlab_collective::{Op, Plan};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::NetError;
use crate::auth::{Check, Stamp};
use crate::dataplane::{Inbound, Routes};
use crate::refused::{Reason, Refusal, refuse};
use crate::transport;
pub use crate::wire::Wire;

/// The `Peer` service of one worker.
#[derive(Clone)]
pub struct PeerService {
    routes: watch::Receiver<Option<Arc<Routes>>>,
    route_timeout: Duration,
}

type ExchangeResult = Result<Response<ExchangeAck>, Status>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn exchange(&self, request: Request<Streaming<Chunk>>) -> ExchangeResult {
        let from_addr = request
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let mut stream = request.into_inner();
        let mut routes = self.routes.clone();
        let routes = tokio::time::timeout(self.route_timeout, routes.wait_for(Option::is_some))
            .await
            .map_err(|_| Refusal::Unavailable("this worker has not joined a cluster yet".into()))?
            .map_err(|_| Refusal::Unavailable("this worker is shutting down".into()))?
            .clone()
            .expect("waited for Some");
        let mut from: Option<usize> = None;
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    if chunk.session != routes.session {
                        return Err(Status::from(Refusal::counted(
                            Reason::OtherRun,
                            &from_addr,
                            format!(
                                "chunk from {from_addr} belongs to coordinator session {:?}, this worker's is {:?}: \
                                 a worker of another cluster is talking to this one",
                                chunk.session, routes.session
                            ),
                        )));
                    }
                    if chunk.generation != routes.generation {
                        return Err(Status::from(Refusal::counted(
                            Reason::OtherRun,
                            &from_addr,
                            format!(
                                "chunk from {from_addr} is of generation {}, this worker is in generation {}",
                                chunk.generation, routes.generation
                            ),
                        )));
                    }
                    let rank = chunk.from_rank as usize;
                    let Some(inbox) = routes.inboxes.get(rank) else {
                        return Err(Status::from(Refusal::counted(
                            Reason::OtherRun,
                            &from_addr,
                            format!(
                                "chunk from {from_addr} claims rank {rank}, the world has {} ranks",
                                routes.inboxes.len()
                            ),
                        )));
                    };
                    if from.is_some_and(|f| f != rank) {
                        return Err(Status::from(Refusal::counted(
                            Reason::Malformed,
                            &from_addr,
                            format!(
                                "stream from {from_addr} switched from rank {} to rank {rank}",
                                from.unwrap_or_default()
                            ),
                        )));
                    }
                    from = Some(rank);
                    // A receiver that is gone means this worker is leaving the run.
                    let _ = inbox.send(Inbound::Chunk(chunk));
                }
                Some(Err(status)) => {
                    if let Some(rank) = from {
                        let _ = routes.inboxes[rank].send(Inbound::Closed(format!(
                            "stream broke: {}",
                            status.message()
                        )));
                    }
                    return Err(status);
                }
                None => {
                    if let Some(rank) = from {
                        let _ =
                            routes.inboxes[rank].send(Inbound::Closed("stream ended".to_string()));
                    }
                    return Ok(Response::new(ExchangeAck {}));
                }
            }
        }
    }
}

/// The world a worker joined: what the coordinator's join reply says.
#[derive(Debug, Clone, Copy)]
pub struct World<'a> {
    /// The coordinator's session.
    pub session: &'a str,
    /// The membership generation.
    pub generation: u64,
    /// This worker's rank.
    pub rank: usize,
    /// Peer-service addresses by rank (`peers[rank]` is this worker).
    pub peers: &'a [String],
    /// TCP data-plane addresses by rank (empty: no data plane; gRPC streams carry payloads).
    pub data_peers: &'a [String],
    /// Unix-socket paths of the peers on this host, by rank (empty entries or an empty slice:
    /// none; those peers are reached over TCP).
    pub data_unix: &'a [String],
}

/// The server half of a worker's mesh, created before the world is known.
pub struct PeerEndpoint {
    install: watch::Sender<Option<Arc<Routes>>>,
    service: PeerService,
    tls: Option<crate::tls::Tls>,
}

impl PeerEndpoint {
    /// A peer endpoint that waits up to `route_timeout` for the mesh to be installed.
    pub fn new(route_timeout: Duration) -> Self {
        let (install, routes) = watch::channel(None);
        Self {
            install,
            service: PeerService {
                routes,
                route_timeout,
            },
            tls: None,
        }
    }

    /// The same, speaking TLS on every TCP connection it makes or accepts.
    pub fn with_tls(mut self, tls: Option<crate::tls::Tls>) -> Self {
        self.tls = tls;
        self
    }

    /// The tonic service, with the token check in front.
    pub fn service(&self, token: &str) -> InterceptedService<PeerServer<PeerService>, Check> {
        let server = PeerServer::new(self.service.clone())
            .max_decoding_message_size(transport::MAX_MESSAGE)
            .max_encoding_message_size(transport::MAX_MESSAGE);
        InterceptedService::new(server, Check::new(token, "worker"))
    }

    /// Serves the TCP data plane on `listener` (see [`crate::dataplane`]) until the process
    /// ends; connections are accepted once they present `token` and this world's session.
    pub fn serve_data(&self, listener: crate::dataplane::DataListener, token: &str) {
        tokio::spawn(crate::dataplane::serve(
            listener,
            self.service.routes.clone(),
            token.into(),
            self.service.route_timeout,
            self.tls.clone(),
        ));
    }

    /// Connects to every peer and installs the routes of `w`: from now on chunks are accepted.
    pub async fn connect(
        &self,
        w: &World<'_>,
        token: &str,
        timeout: Duration,
    ) -> Result<Mesh, NetError> {
        let World {
            session,
            generation,
            rank,
            peers,
            data_peers,
            data_unix,
        } = *w;
        let world = peers.len();
        let mut senders = Vec::with_capacity(world);
        let mut inboxes = Vec::with_capacity(world);
        let mut txs = Vec::with_capacity(world);
        let (mut stream_txs, mut streams) = (Vec::new(), Vec::new());
        for _ in 0..world {
            let (tx, rx) = mpsc::unbounded_channel();
            txs.push(tx);
            inboxes.push(Mutex::new(rx));
            let (tx, rx) = mpsc::unbounded_channel();
            stream_txs.push(tx);
            streams.push(rx);
        }
        self.install
            .send(Some(Arc::new(Routes {
                session: session.to_string(),
                generation,
                rank: Some(rank),
                inboxes: txs,
                streams: stream_txs,
            })))
            .map_err(|_| NetError::Peer("the peer service stopped".to_string()))?;
        let stamp = Stamp::new(token)?;
        for (r, addr) in peers.iter().enumerate() {
            if r == rank {
                senders.push(None);
                continue;
            }
            let channel = connect_peer(r, addr, timeout, self.tls.as_ref()).await?;
            let mut client = PeerClient::with_interceptor(channel, stamp.clone())
                .max_decoding_message_size(transport::MAX_MESSAGE)
                .max_encoding_message_size(transport::MAX_MESSAGE);
            // Deep enough to keep a few pieces in flight; bounded so memory stays bounded.
            let (tx, rx) = mpsc::channel::<Chunk>(8);
            let addr = addr.clone();
            let (done_tx, done_rx) = watch::channel(None);
            tokio::spawn(async move {
                let outcome = client
                    .exchange(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await;
                let msg = match outcome {
                    Ok(_) => "stream closed".to_string(),
                    Err(s) => s.message().to_string(),
                };
                let _ = done_tx.send(Some(msg));
            });
            senders.push(Some(Sender {
                tx,
                addr,
                done: done_rx,
            }));
        }
        // The TCP data plane, when every peer offers one.
        let mut data = Vec::with_capacity(world);
        let complete = data_peers.len() == world && data_peers.iter().all(|a| !a.is_empty());
        for (r, addr) in data_peers.iter().enumerate().filter(|_| complete) {
            if r == rank {
                data.push(None);
                continue;
            }
            let hello = crate::dataplane::Hello {
                token: token.to_string(),
                session: session.to_string(),
                generation,
                from_rank: rank as u32,
                to_rank: r as u32,
            };
            let unix = data_unix
                .get(r)
                .filter(|p| !p.is_empty())
                .map(String::as_str);
            data.push(Some(
                crate::dataplane::connect(addr, unix, &hello, timeout, self.tls.as_ref()).await?,
            ));
        }
        let unix = data
            .iter()
            .filter(|d| matches!(d, Some(crate::dataplane::DataStream::Unix(_))))
            .count();
        tracing::debug!(
            rank,
            unix,
            tcp = data.iter().flatten().count() - unix,
            "data plane connected"
        );
        Ok(Mesh {
            transport: if complete {
                Transport::Tcp
            } else {
                Transport::Grpc
            },
            data,
            data_in: (0..world).map(|_| None).collect(),
            streams,
            rank,
            world,
            session: session.to_string(),
            generation,
            peers: peers.to_vec(),
            senders,
            inboxes,
            collective: 0,
            recv_timeout: timeout,
        })
    }
}

async fn connect_peer(
    rank: usize,
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::Tls>,
) -> Result<Channel, NetError> {
    let uri = crate::tls::uri(addr, tls.is_some());
    let unreachable = |e| NetError::Unreachable {
        what: format!("rank {rank}"),
        addr: addr.to_string(),
        source: e,
    };
    let mut endpoint: Endpoint = transport::endpoint(&uri)
        .map_err(unreachable)?
        .connect_timeout(timeout);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.grpc_client(addr))
            .map_err(unreachable)?;
    }
    endpoint.connect().await.map_err(|e| NetError::Unreachable {
        what: format!("rank {rank}"),
        addr: addr.to_string(),
        source: e,
    })
}

struct Sender {
    tx: mpsc::Sender<Chunk>,
    addr: String,
    done: watch::Receiver<Option<String>>,
}

/// A worker's connections to all its peers in one generation, and the collective executor.
pub struct Mesh {
    transport: Transport,
    /// TCP data-plane streams to each rank (empty without a data plane).
    data: Vec<Option<crate::dataplane::DataStream>>,
    /// TCP data-plane streams from each rank, taken from `streams` on first use.
    data_in: Vec<Option<crate::dataplane::DataStream>>,
    /// Accepted data-plane streams by sending rank.
    streams: Vec<mpsc::UnboundedReceiver<crate::dataplane::DataStream>>,
    rank: usize,
    world: usize,
    session: String,
    generation: u64,
    peers: Vec<String>,
    senders: Vec<Option<Sender>>,
    inboxes: Vec<Mutex<mpsc::UnboundedReceiver<Inbound>>>,
    collective: u64,
    recv_timeout: Duration,
}

impl Mesh {
    /// This worker's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Chooses how collective payloads travel; TCP needs every peer's data plane.
    pub fn set_transport(&mut self, t: Transport) -> Result<(), NetError> {
        if t == Transport::Tcp && self.data.is_empty() && self.world > 1 {
            return Err(NetError::Config(
                "transport tcp: a peer offered no data-plane address (an older worker?); use --transport grpc".into(),
            ));
        }
        self.transport = t;
        Ok(())
    }

    /// Sets the deadline of any one receive.
    pub fn set_recv_timeout(&mut self, t: Duration) {
        self.recv_timeout = t;
    }

    fn peer_name(&self, rank: usize) -> String {
        peer_label(&self.peers, rank)
    }

    /// All-reduces `buf` by `plan` (which must be this rank's plan for `buf.len()` elements):
    /// wrapping addition for `i64` (exact mode), float addition for `f32` (fast mode).
    pub async fn all_reduce<T: Wire>(
        &mut self,
        buf: &mut [T],
        plan: &Plan,
    ) -> Result<(), NetError> {
        self.all_reduce_in(buf, plan, None, None).await
    }

    /// Skips `n` collectives this rank sits out (a benchmark round it is not a member of), so
    /// that its sequence numbers stay those of the ranks that ran them.
    pub fn skip_collectives(&mut self, n: u64) {
        self.collective += n;
    }

    /// [`Mesh::all_reduce`] among a subset of the ranks: `group[i]` is the mesh rank of the
    /// plan's rank `i` (`plan` made for `group.len()` ranks; `None`: every rank, in order). With
    /// `trace`, every send, wait and reduction is appended to it with its start and end.
    pub async fn all_reduce_in<T: Wire>(
        &mut self,
        buf: &mut [T],
        plan: &Plan,
        group: Option<&[usize]>,
        mut trace: Option<&mut Vec<Phase>>,
    ) -> Result<(), NetError> {
        assert_eq!(plan.len, buf.len(), "plan length");
        let rank_of = |peer: usize| group.map_or(peer, |g| g[peer]);
        self.collective += 1;
        let seq = self.collective;
        for (k, step) in plan.steps.iter().enumerate() {
            let k = k as u32;
            if self.transport == Transport::Tcp {
                // Plan ranks become mesh ranks; without a group they are the same.
                let ops: std::borrow::Cow<'_, [Op]> = match group {
                    None => std::borrow::Cow::Borrowed(&step.ops),
                    Some(_) => step
                        .ops
                        .iter()
                        .map(|op| match op {
                            Op::Send { peer, range } => Op::Send {
                                peer: rank_of(*peer),
                                range: range.clone(),
                            },
                            Op::RecvReduce { peer, range } => Op::RecvReduce {
                                peer: rank_of(*peer),
                                range: range.clone(),
                            },
                            Op::RecvCopy { peer, range } => Op::RecvCopy {
                                peer: rank_of(*peer),
                                range: range.clone(),
                            },
                        })
                        .collect(),
                };
                self.tcp_step(buf, &ops, seq, k, trace.as_deref_mut())
                    .await?;
                continue;
            }
            // Sends first, from the buffer as it is at the start of the step.
            for op in &step.ops {
                if let Op::Send { peer, range } = op {
                    let t0 = Instant::now();
                    let bytes = range.len() * T::SIZE;
                    let payload = T::encode(&buf[range.clone()]);
                    self.send(rank_of(*peer), seq, k, payload).await?;
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(Phase::new(PhaseKind::Send, k, rank_of(*peer), bytes, t0));
                    }
                }
            }
            for op in &step.ops {
                let (peer, range, add) = match op {
                    Op::Send { .. } => continue,
                    Op::RecvReduce { peer, range } => (rank_of(*peer), range.clone(), true),
                    Op::RecvCopy { peer, range } => (rank_of(*peer), range.clone(), false),
                };
                let t0 = Instant::now();
                let chunk = self.recv(peer, seq, k).await?;
                let t1 = Instant::now();
                let dst = &mut buf[range];
                if chunk.payload.len() != dst.len() * T::SIZE {
                    let who = self.peer_name(peer);
                    return Err(NetError::Peer(refuse(
                        Reason::Malformed,
                        &who,
                        format!(
                            "{who} sent {} bytes in step {k} of collective {seq}; expected {} ({} {} elements)",
                            chunk.payload.len(),
                            dst.len() * T::SIZE,
                            dst.len(),
                            T::NAME
                        ),
                    )));
                }
                T::decode(&chunk.payload, dst, add);
                if let Some(t) = trace.as_deref_mut() {
                    let bytes = chunk.payload.len();
                    t.push(Phase::new(PhaseKind::Wait, k, peer, bytes, t0).ending(t1));
                    let what = if add {
                        PhaseKind::Reduce
                    } else {
                        PhaseKind::Copy
                    };
                    t.push(Phase::new(what, k, peer, bytes, t1));
                }
            }
        }
        Ok(())
    }

    /// [`Mesh::all_reduce`] on exact-mode words.
    pub async fn all_reduce_i64(&mut self, words: &mut [i64], plan: &Plan) -> Result<(), NetError> {
        self.all_reduce(words, plan).await
    }

    async fn send(
        &self,
        peer: usize,
        seq: u64,
        step: u32,
        payload: Vec<u8>,
    ) -> Result<(), NetError> {
        let s = self.senders[peer].as_ref().expect("never sends to itself");
        let chunk = Chunk {
            session: self.session.clone(),
            from_rank: self.rank as u32,
            generation: self.generation,
            collective: seq,
            step,
            payload,
        };
        let lost = |why: &str| NetError::Peer(format!("lost rank {peer} ({}): {why}", s.addr));
        match tokio::time::timeout(self.recv_timeout, s.tx.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                let why = s
                    .done
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "stream closed".to_string());
                Err(lost(&why))
            }
            Err(_) => Err(NetError::Timeout {
                what: format!(
                    "rank {peer} ({}) to accept data in collective {seq}",
                    s.addr
                ),
                after: self.recv_timeout,
            }),
        }
    }

    /// One plan step over the TCP data plane: every send and every receive of the step at
    /// once (two lanes), the sends written straight from `buf`, the received bytes read straight
    /// into place (copies) or through a small cache-resident scratch (reductions). Ops' peers
    /// are mesh ranks.
    async fn tcp_step<T: Wire>(
        &mut self,
        buf: &mut [T],
        ops: &[Op],
        seq: u64,
        k: u32,
        trace: Option<&mut Vec<Phase>>,
    ) -> Result<(), NetError> {
        let timeout = self.recv_timeout;
        // Names are only formatted for a message: nothing is allocated per step.
        let Mesh {
            data,
            data_in,
            streams,
            peers,
            ..
        } = self;
        let name = |r: usize| peer_label(peers, r);
        // Receivers' streams arrive through the inboxes once the peer's hello was accepted.
        for op in ops.iter().filter(|op| !op.is_send()) {
            let p = op.peer();
            if data_in[p].is_none() {
                data_in[p] = Some(take_stream(&mut streams[p], &name(p), timeout).await?);
            }
        }
        let sends: Vec<std::ops::Range<usize>> = ops
            .iter()
            .filter(|o| o.is_send())
            .map(|o| o.range().clone())
            .collect();
        let recvs: Vec<std::ops::Range<usize>> = ops
            .iter()
            .filter(|o| !o.is_send())
            .map(|o| o.range().clone())
            .collect();
        // A plan whose step receives into a range it also sends from would need a snapshot;
        // none of batchlab's algorithms does, so that is a bug in the plan.
        let (send_segs, mut recv_segs) = crate::dataplane::split_segments(buf, &sends, &recvs)
            .ok_or_else(|| {
                NetError::Config(format!(
                    "step {k} of collective {seq} receives into a range it also sends from"
                ))
            })?;
        let tracing = trace.is_some();
        let mut send_trace = Vec::new();
        let mut recv_trace = Vec::new();
        let lane_s = async {
            for op in ops {
                let Op::Send { peer, range } = op else {
                    continue;
                };
                let t0 = Instant::now();
                let stream = data[*peer].as_mut().expect("never sends to itself");
                let parts = send_segs
                    .iter()
                    .filter(|(start, _)| range.contains(start))
                    .map(|(_, seg)| T::le_bytes(seg));
                let write =
                    crate::dataplane::write_piece(stream, seq, k, range.len() * T::SIZE, parts);
                match tokio::time::timeout(timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(NetError::Peer(format!("lost {}: {e}", name(*peer))));
                    }
                    Err(_) => {
                        return Err(NetError::Timeout {
                            what: format!("{} to accept data in collective {seq}", name(*peer)),
                            after: timeout,
                        });
                    }
                }
                if tracing {
                    send_trace.push(Phase::new(
                        PhaseKind::Send,
                        k,
                        *peer,
                        range.len() * T::SIZE,
                        t0,
                    ));
                }
            }
            Ok(())
        };
        let lane_r = async {
            let mut scratch = Vec::new();
            for op in ops {
                let (peer, range, add) = match op {
                    Op::Send { .. } => continue,
                    Op::RecvReduce { peer, range } => (*peer, range, true),
                    Op::RecvCopy { peer, range } => (*peer, range, false),
                };
                let stream = data_in[peer].as_mut().expect("taken above");
                let bytes = range.len() * T::SIZE;
                let t0 = Instant::now();
                let read = crate::dataplane::read_piece::<T>(
                    stream,
                    seq,
                    k,
                    bytes,
                    recv_segs
                        .iter_mut()
                        .filter(|(start, _)| range.contains(start))
                        .map(|(_, seg)| &mut **seg),
                    add,
                    &mut scratch,
                );
                match tokio::time::timeout(timeout, read).await {
                    Ok(Ok(waited)) => {
                        if tracing {
                            let t1 = waited.unwrap_or(t0);
                            recv_trace
                                .push(Phase::new(PhaseKind::Wait, k, peer, bytes, t0).ending(t1));
                            let what = if add {
                                PhaseKind::Reduce
                            } else {
                                PhaseKind::Copy
                            };
                            recv_trace.push(Phase::new(what, k, peer, bytes, t1));
                        }
                    }
                    Ok(Err(crate::dataplane::PieceError::Lost(why))) => {
                        return Err(NetError::Peer(format!("lost {}: {why}", name(peer))));
                    }
                    Ok(Err(crate::dataplane::PieceError::Bad(reason, why))) => {
                        let who = name(peer);
                        return Err(NetError::Peer(refuse(reason, &who, format!("{who} {why}"))));
                    }
                    Err(_) => {
                        return Err(NetError::Timeout {
                            what: format!("{} in step {k} of collective {seq}", name(peer)),
                            after: timeout,
                        });
                    }
                }
            }
            Ok(())
        };
        tokio::try_join!(lane_s, lane_r)?;
        if let Some(t) = trace {
            t.append(&mut send_trace);
            t.append(&mut recv_trace);
        }
        Ok(())
    }

    async fn recv(&self, peer: usize, seq: u64, step: u32) -> Result<Chunk, NetError> {
        let mut inbox = self.inboxes[peer].lock().await;
        let got = tokio::time::timeout(self.recv_timeout, inbox.recv())
            .await
            .map_err(|_| NetError::Timeout {
                what: format!(
                    "{} in step {step} of collective {seq}",
                    self.peer_name(peer)
                ),
                after: self.recv_timeout,
            })?;
        match got {
            Some(Inbound::Chunk(c)) if c.collective == seq && c.step == step => Ok(c),
            Some(Inbound::Chunk(c)) => Err(NetError::Peer(format!(
                "{} sent step {} of collective {}; expected step {step} of collective {seq}",
                self.peer_name(peer),
                c.step,
                c.collective
            ))),
            Some(Inbound::Closed(why)) => Err(NetError::Peer(format!(
                "lost {}: {why}",
                self.peer_name(peer)
            ))),
            None => Err(NetError::Peer(format!(
                "lost {}: this worker's peer service stopped",
                self.peer_name(peer)
            ))),
        }
    }
}

/// `rank r (address)`, for messages.
fn peer_label(peers: &[String], rank: usize) -> String {
    format!(
        "rank {rank} ({})",
        peers.get(rank).map_or("?", String::as_str)
    )
}

/// Waits for a peer's accepted data-plane stream.
async fn take_stream(
    streams: &mut mpsc::UnboundedReceiver<crate::dataplane::DataStream>,
    name: &str,
    timeout: Duration,
) -> Result<crate::dataplane::DataStream, NetError> {
    match tokio::time::timeout(timeout, streams.recv()).await {
        Err(_) => Err(NetError::Timeout {
            what: format!("{name} to open its data-plane stream"),
            after: timeout,
        }),
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(NetError::Peer(format!(
            "lost {name}: this worker's data plane stopped"
        ))),
    }
}

/// How collective payloads travel between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP streams beside the gRPC control plane ([`crate::dataplane`]); the default.
    Tcp,
    /// The `Peer.Exchange` gRPC streams.
    Grpc,
}

impl From<crate::protocol::Transport> for Transport {
    /// The mesh's carrier for a run's transport (whether same-host peers use Unix sockets was
    /// settled at join).
    fn from(t: crate::protocol::Transport) -> Self {
        match t {
            crate::protocol::Transport::Auto | crate::protocol::Transport::Tcp => Transport::Tcp,
            crate::protocol::Transport::Grpc => Transport::Grpc,
        }
    }
}

/// What a rank was doing during one phase of a collective (for timelines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Encoding a piece and handing it to the peer's stream.
    Send,
    /// Waiting for a piece from a peer.
    Wait,
    /// Adding a received piece into the buffer.
    Reduce,
    /// Copying a received piece into the buffer.
    Copy,
}

impl PhaseKind {
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Wait => "wait",
            Self::Reduce => "reduce",
            Self::Copy => "copy",
        }
    }
}

/// One phase of a collective on this rank.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// What it was.
    pub kind: PhaseKind,
    /// The plan step.
    pub step: u32,
    /// The mesh rank on the other end.
    pub peer: usize,
    /// Bytes sent or received.
    pub bytes: usize,
    /// When it started and ended.
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
}

impl Phase {
    fn new(kind: PhaseKind, step: u32, peer: usize, bytes: usize, start: Instant) -> Self {
        Self {
            kind,
            step,
            peer,
            bytes,
            start,
            end: Instant::now(),
        }
    }

    fn ending(mut self, end: Instant) -> Self {
        self.end = end;
        self
    }
}
