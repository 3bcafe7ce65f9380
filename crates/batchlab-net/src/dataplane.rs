//! The data plane: collective payloads on plain byte streams, one per ordered pair of ranks,
//! beside the gRPC control plane (instead of the `Peer.Exchange` gRPC streams unless a task
//! asks for `transport = "grpc"`). Workers on the same host (same boot id and host name) use
//! Unix sockets when the coordinator allows it, others TCP.
//!
//! Why: through tonic a payload byte is copied four times in user space (encode, gRPC framing,
//! HTTP/2 reassembly, protobuf decode) besides the kernel's two; on a small machine those
//! copies, not the network, set the all-reduce bandwidth. Here each plan step runs its sends
//! and receives at once: a sender writes the elements' little-endian bytes straight from the
//! buffer, a receiver reads a copied piece straight into place and a reduced piece through a
//! small scratch that stays in cache. The only copies left are the kernel's.
//!
//! ```text
//!   connect ─► hello: "BLDP" version token session generation from_rank to_rank
//!           ◄─ 0 (accepted: the stream goes to the mesh) | 1, message (refused)
//!              | 2, message (refused: another session or generation here; the caller retries
//!                until its timeout, as the peer may not have joined the new one yet)
//!   then, per piece: collective u64 | step u32 | length u32 | payload (little-endian elements)
//! ```
//!
//! The hello is checked like a gRPC call (token in constant time, protocol version, session,
//! generation, ranks) before the stream is handed to the mesh; a refused connection is closed
//! and logged and changes nothing. Each piece's header is checked against the plan (collective,
//! step, length, the message limit) before a byte of it is used.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::PROTOCOL_VERSION;
use crate::protocol::pb::Chunk;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::NetError;
use std::ops::Range;

use crate::refused::{Reason, refuse};
use crate::transport::MAX_MESSAGE;
use crate::wire::Wire;

const MAGIC: &[u8; 4] = b"BLDP";

/// A data-plane connection: TCP, or a Unix socket between workers on the same host (no TCP/IP
/// stack between them: fewer kernel cycles per byte).
#[derive(Debug)]
pub enum DataStream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain stream socket.
    Unix(UnixStream),
    /// A TCP connection under TLS.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for DataStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Unix sockets get the default socket buffers (208 KiB here) and, unlike TCP, no automatic
/// growth: multi-MiB pieces then cost a wake-up per fifth of a MiB. 4 MiB each way (the
/// kernel caps it at its `wmem_max`/`rmem_max`).
fn widen_buffers(s: &UnixStream) {
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_send_buffer_size(4 << 20);
    let _ = sock.set_recv_buffer_size(4 << 20);
}

/// This machine's identity for choosing Unix sockets: the kernel's boot id and the host name
/// (containers on one host have their own names and file systems, so they keep to TCP).
pub fn host_id() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{}/{}",
        read("/proc/sys/kernel/random/boot_id"),
        read("/proc/sys/kernel/hostname")
    )
}
const MAX_TOKEN: usize = 4096;
const MAX_SESSION: usize = 256;
/// Bytes of a piece's header: collective, step, length.
pub(crate) const HEADER: usize = 16;

/// Who is connecting, to whom, in which run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub token: String,
    pub session: String,
    pub generation: u64,
    pub from_rank: u32,
    pub to_rank: u32,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.token.len() + self.session.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.token.len() as u16).to_le_bytes());
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(&(self.session.len() as u16).to_le_bytes());
        out.extend_from_slice(self.session.as_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.from_rank.to_le_bytes());
        out.extend_from_slice(&self.to_rank.to_le_bytes());
        out
    }

    pub(crate) async fn read(r: &mut DataStream) -> Result<Self, (Reason, String)> {
        let truncated = |e: std::io::Error| (Reason::Malformed, format!("a truncated hello ({e})"));
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).await.map_err(truncated)?;
        if &magic[..4] != MAGIC {
            return Err((
                Reason::Malformed,
                format!(
                    "not a batchlab data-plane connection (first bytes {:?})",
                    String::from_utf8_lossy(&magic[..4])
                ),
            ));
        }
        let version = u32::from_le_bytes(magic[4..].try_into().expect("4 bytes"));
        if version != PROTOCOL_VERSION {
            return Err((
                Reason::Version,
                format!(
                    "this worker speaks batchlab protocol {PROTOCOL_VERSION}; the peer sent version {version}"
                ),
            ));
        }
        let token = read_string(r, MAX_TOKEN, "token").await?;
        let session = read_string(r, MAX_SESSION, "session").await?;
        let mut rest = [0u8; 16];
        r.read_exact(&mut rest).await.map_err(truncated)?;
        Ok(Self {
            token,
            session,
            generation: u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
            from_rank: u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")),
            to_rank: u32::from_le_bytes(rest[12..].try_into().expect("4 bytes")),
        })
    }
}

async fn read_string(
    r: &mut DataStream,
    max: usize,
    what: &str,
) -> Result<String, (Reason, String)> {
    let truncated = |e: std::io::Error| (Reason::Malformed, format!("a truncated hello ({e})"));
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.map_err(truncated)?;
    let len = usize::from(u16::from_le_bytes(len));
    if len > max {
        return Err((
            Reason::Oversized,
            format!("{what} of {len} bytes: at most {max} accepted"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(truncated)?;
    String::from_utf8(buf).map_err(|_| (Reason::Malformed, format!("{what} is not UTF-8")))
}

/// Checks a hello against this worker's routes; the refusal names what differed.
fn check(
    hello: &Hello,
    token: &str,
    routes: &Routes,
    me: Option<usize>,
) -> Result<(), (Reason, String)> {
    if !constant_time_eq::constant_time_eq(hello.token.as_bytes(), token.as_bytes()) {
        return Err((Reason::Token, "wrong or missing token".to_string()));
    }
    check_run(hello, routes, me).map_err(|why| (Reason::OtherRun, why))
}

/// The hello's session, generation and ranks against this worker's.
fn check_run(hello: &Hello, routes: &Routes, me: Option<usize>) -> Result<(), String> {
    if hello.session != routes.session {
        return Err(format!(
            "the peer belongs to coordinator session {:?}, this worker's is {:?}",
            hello.session, routes.session
        ));
    }
    if hello.generation != routes.generation {
        return Err(format!(
            "the peer is of generation {}, this worker is in generation {}",
            hello.generation, routes.generation
        ));
    }
    let world = routes.inboxes.len();
    if hello.from_rank as usize >= world {
        return Err(format!(
            "the peer claims rank {}, the world has {world} ranks",
            hello.from_rank
        ));
    }
    if me.is_some_and(|m| m != hello.to_rank as usize) {
        return Err(format!(
            "the peer is calling rank {}, this worker is rank {}",
            hello.to_rank,
            me.unwrap_or_default()
        ));
    }
    Ok(())
}

/// A data-plane listener: TCP, or a Unix socket for workers on the same host.
pub enum DataListener {
    /// On a TCP port.
    Tcp(TcpListener),
    /// On a Unix socket path.
    Unix(UnixListener),
}

impl DataListener {
    async fn accept(&self) -> std::io::Result<(DataStream, String)> {
        match self {
            Self::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((DataStream::Tcp(s), a.to_string()))
            }
            Self::Unix(l) => {
                let (s, _) = l.accept().await?;
                widen_buffers(&s);
                Ok((DataStream::Unix(s), "a local Unix socket".to_string()))
            }
        }
    }
}

/// What a receiver gets from a peer's stream.
#[derive(Debug)]
pub(crate) enum Inbound {
    Chunk(Chunk),
    /// The peer's stream ended or broke.
    Closed(String),
}

/// Where this worker's incoming traffic goes once the world is known: each rank's gRPC chunks
/// (to the mesh's inboxes) and its accepted data-plane stream.
#[derive(Debug)]
pub(crate) struct Routes {
    pub session: String,
    pub generation: u64,
    /// This worker's rank.
    pub rank: Option<usize>,
    pub inboxes: Vec<mpsc::UnboundedSender<Inbound>>,
    /// Where each rank's accepted data-plane stream goes.
    pub streams: Vec<mpsc::UnboundedSender<DataStream>>,
}

/// Accepts data-plane connections on `listener` until the process ends.
pub(crate) async fn serve(
    listener: DataListener,
    routes: watch::Receiver<Option<Arc<Routes>>>,
    token: Arc<str>,
    route_timeout: Duration,
    tls: Option<crate::tls::Tls>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("data plane accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        let token = token.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream = match (stream, &tls) {
                (DataStream::Tcp(tcp), Some(tls)) => {
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(s)) => DataStream::Tls(Box::new(s)),
                        Ok(Err(why)) => {
                            refuse(
                                Reason::Tls,
                                &from,
                                format!("a data-plane connection: {why}"),
                            );
                            return;
                        }
                        Err(_) => {
                            refuse(
                                Reason::Tls,
                                &from,
                                "a data-plane connection: no TLS handshake within 10 s".into(),
                            );
                            return;
                        }
                    }
                }
                (s, _) => s,
            };
            match receive(stream, routes, &token, route_timeout).await {
                Ok(()) => {}
                Err((Some(reason), why)) => {
                    refuse(reason, &from, format!("a data-plane connection: {why}"));
                }
                Err((None, why)) => tracing::warn!(%from, "data-plane connection broken: {why}"),
            }
        });
    }
}

async fn receive(
    mut stream: DataStream,
    mut routes: watch::Receiver<Option<Arc<Routes>>>,
    token: &str,
    route_timeout: Duration,
) -> Result<(), (Option<Reason>, String)> {
    let hello = tokio::time::timeout(Duration::from_secs(10), Hello::read(&mut stream))
        .await
        .map_err(|_| (Some(Reason::Malformed), "no hello within 10 s".to_string()))?
        .map_err(|(r, why)| (Some(r), why))?;
    let routes = tokio::time::timeout(route_timeout, routes.wait_for(Option::is_some))
        .await
        .map_err(|_| (None, "this worker has not joined a cluster yet".to_string()))?
        .map_err(|_| (None, "this worker is shutting down".to_string()))?
        .clone()
        .expect("waited for Some");
    if let Err((reason, why)) = check(&hello, token, &routes, routes.rank) {
        // 2: this worker is in another session or generation than the caller, which may be a
        // moment ahead of it (a new generation forming): the caller tries again.
        let mut reply = vec![if reason == Reason::OtherRun { 2u8 } else { 1u8 }];
        reply.extend_from_slice(&(why.len().min(u16::MAX as usize) as u16).to_le_bytes());
        reply.extend_from_slice(&why.as_bytes()[..why.len().min(u16::MAX as usize)]);
        let _ = stream.write_all(&reply).await;
        return Err((Some(reason), why));
    }
    stream
        .write_all(&[0])
        .await
        .map_err(|e| (None, e.to_string()))?;
    // From here on the mesh reads this stream itself, straight into its buffers.
    let _ = routes.streams[hello.from_rank as usize].send(stream);
    Ok(())
}

/// Tests: serves `listener` as rank 1 of a 2-rank world (session "s", token "tok",
/// `generation`); returns what the mesh would be handed from rank 0.
#[cfg(test)]
pub(crate) fn serve_rank_one(
    listener: DataListener,
    generation: u64,
    tls: Option<crate::tls::Tls>,
) -> tokio::sync::mpsc::UnboundedReceiver<DataStream> {
    let (stream_tx, stream_rx) = tokio::sync::mpsc::unbounded_channel();
    let routes = Routes {
        session: "s".into(),
        generation,
        rank: Some(1),
        inboxes: (0..2)
            .map(|_| tokio::sync::mpsc::unbounded_channel().0)
            .collect(),
        streams: vec![stream_tx, tokio::sync::mpsc::unbounded_channel().0],
    };
    let (tx, rx) = watch::channel(Some(Arc::new(routes)));
    tokio::spawn(async move {
        let _keep = tx;
        serve(listener, rx, "tok".into(), Duration::from_secs(5), tls).await;
    });
    stream_rx
}

/// Opens the data-plane stream to a peer (its Unix socket `unix` when given and reachable, else
/// its TCP address `addr`) and has the hello accepted.
pub(crate) async fn connect(
    addr: &str,
    unix: Option<&str>,
    hello: &Hello,
    timeout: Duration,
    tls: Option<&crate::tls::Tls>,
) -> Result<DataStream, NetError> {
    let who = format!("rank {} ({addr}, data plane)", hello.to_rank);
    // Err((true, why)): refused for being of another session or generation; worth a retry.
    let once = || async {
        let unix_stream = match unix {
            Some(path) => UnixStream::connect(path).await.ok(),
            None => None,
        };
        let fail = |why: String| (false, why);
        let mut stream = match unix_stream {
            Some(s) => {
                widen_buffers(&s);
                DataStream::Unix(s)
            }
            None => {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| fail(format!("cannot connect: {e}")))?;
                let _ = s.set_nodelay(true);
                match tls {
                    Some(tls) => {
                        DataStream::Tls(Box::new(tls.connect(s, addr).await.map_err(fail)?))
                    }
                    None => DataStream::Tcp(s),
                }
            }
        };
        stream
            .write_all(&hello.encode())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut status = [0u8; 1];
        stream
            .read_exact(&mut status)
            .await
            .map_err(|e| fail(format!("closed before answering the hello: {e}")))?;
        if status[0] != 0 {
            let mut len = [0u8; 2];
            stream
                .read_exact(&mut len)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut msg = vec![0u8; usize::from(u16::from_le_bytes(len))];
            stream
                .read_exact(&mut msg)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let why = format!("refused: {}", String::from_utf8_lossy(&msg));
            return Err((status[0] == 2, why));
        }
        Ok(stream)
    };
    let mut last = String::new();
    let attempt = async {
        loop {
            match once().await {
                Ok(s) => return Ok(s),
                Err((true, why)) => {
                    last = why;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((false, why)) => return Err(why),
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(why)) => Err(NetError::Peer(format!("{who}: {why}"))),
        Err(_) => Err(NetError::Timeout {
            what: if last.is_empty() {
                format!("{who} to accept the connection")
            } else {
                format!("{who} to accept the connection (last answer: {last})")
            },
            after: timeout,
        }),
    }
}

/// Pieces up to this size go out in one write with their header.
const SMALL: usize = 64 << 10;
/// Scratch for received bytes that are added (a cache-resident slice at a time).
const SCRATCH: usize = 64 << 10;

/// One-way latency added before every piece this process sends, in microseconds (0: none).
static LINK_LATENCY_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Emulates a slow link: every piece this process sends waits `latency` first (a worker's
/// `--link-latency`, for networks the kernel cannot shape).
pub fn set_link_latency(latency: std::time::Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    LINK_LATENCY_US.store(us, std::sync::atomic::Ordering::Relaxed);
}

/// Writes one piece of `len` bytes: the header, then `parts` (one write for small pieces).
pub(crate) async fn write_piece<'a>(
    stream: &mut DataStream,
    collective: u64,
    step: u32,
    len: usize,
    parts: impl Iterator<Item = std::borrow::Cow<'a, [u8]>>,
) -> std::io::Result<()> {
    let latency = LINK_LATENCY_US.load(std::sync::atomic::Ordering::Relaxed);
    if latency > 0 {
        // A thread's sleep (tens of microseconds of slack) rather than tokio's timer, which
        // rounds up to whole milliseconds; no core spins meanwhile.
        let wait = std::time::Duration::from_micros(latency);
        tokio::task::spawn_blocking(move || std::thread::sleep(wait))
            .await
            .map_err(std::io::Error::other)?;
    }
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&collective.to_le_bytes());
    header[8..12].copy_from_slice(&step.to_le_bytes());
    header[12..].copy_from_slice(&(len as u32).to_le_bytes());
    if len <= SMALL {
        let mut one = Vec::with_capacity(HEADER + len);
        one.extend_from_slice(&header);
        parts.for_each(|p| one.extend_from_slice(&p));
        stream.write_all(&one).await
    } else {
        stream.write_all(&header).await?;
        for p in parts {
            stream.write_all(&p).await?;
        }
        Ok(())
    }
}

/// Why a piece could not be read.
#[derive(Debug)]
pub(crate) enum PieceError {
    /// The stream broke or ended.
    Lost(String),
    /// The peer sent something else than the plan expects (reads after the peer's name).
    Bad(Reason, String),
}

/// Reads one piece from `stream` into `dsts` (the piece's ranges in order), adding or
/// copying. Checks the header against the expected collective, step and length. Returns when
/// the header arrived (the end of the wait).
pub(crate) async fn read_piece<'a, T: Wire>(
    stream: &mut DataStream,
    collective: u64,
    step: u32,
    expected: usize,
    dsts: impl Iterator<Item = &'a mut [T]>,
    add: bool,
    scratch: &mut Vec<u8>,
) -> Result<Option<std::time::Instant>, PieceError> {
    let broke = |e: std::io::Error| PieceError::Lost(format!("its data-plane stream broke ({e})"));
    let mut header = [0u8; HEADER];
    stream.read_exact(&mut header).await.map_err(broke)?;
    let arrived = std::time::Instant::now();
    let got_collective = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    let got_step = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(header[12..].try_into().expect("4 bytes")) as usize;
    if len > MAX_MESSAGE {
        return Err(PieceError::Bad(
            Reason::Oversized,
            format!("sent a piece of {len} bytes: at most {MAX_MESSAGE} bytes accepted"),
        ));
    }
    if (got_collective, got_step) != (collective, step) {
        return Err(PieceError::Bad(
            Reason::Malformed,
            format!(
                "sent step {got_step} of collective {got_collective}; expected step {step} of collective {collective}"
            ),
        ));
    }
    if len != expected {
        return Err(PieceError::Bad(
            Reason::Malformed,
            format!(
                "sent {len} bytes in step {step} of collective {collective}; expected {expected} ({} {} elements)",
                expected / T::SIZE,
                T::NAME
            ),
        ));
    }
    for dst in dsts {
        if !add && cfg!(target_endian = "little") {
            // Copies land in place: the buffer's bytes are the wire's.
            stream
                .read_exact(bytemuck::cast_slice_mut(dst))
                .await
                .map_err(broke)?;
            continue;
        }
        for part in dst.chunks_mut((SCRATCH / T::SIZE).max(1)) {
            scratch.resize(part.len() * T::SIZE, 0);
            stream.read_exact(scratch).await.map_err(broke)?;
            T::decode(scratch, part, add);
        }
    }
    Ok(Some(arrived))
}

/// Cuts `buf` at every boundary of the step's ranges into the pieces that are sent from (read
/// only) and received into (writable), each with its start; `None` if a send range and a
/// receive range overlap.
#[allow(clippy::type_complexity)]
pub(crate) fn split_segments<'a, T>(
    buf: &'a mut [T],
    sends: &[Range<usize>],
    recvs: &[Range<usize>],
) -> Option<(Vec<(usize, &'a [T])>, Vec<(usize, &'a mut [T])>)> {
    let overlap = |a: &Range<usize>, b: &Range<usize>| a.start < b.end && b.start < a.end;
    if sends.iter().any(|s| recvs.iter().any(|r| overlap(s, r))) {
        return None;
    }
    let mut cuts: Vec<usize> = sends
        .iter()
        .chain(recvs)
        .flat_map(|r| [r.start, r.end])
        .chain([0, buf.len()])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let (mut send_out, mut recv_out) = (Vec::new(), Vec::new());
    let mut rest = buf;
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (seg, tail) = std::mem::take(&mut rest).split_at_mut(b - a);
        rest = tail;
        if sends.iter().any(|r| r.start <= a && b <= r.end) {
            send_out.push((a, &*seg));
        } else if recvs.iter().any(|r| r.start <= a && b <= r.end) {
            recv_out.push((a, seg));
        }
    }
    Some((send_out, recv_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(session: &str, generation: u64, world: usize) -> Routes {
        Routes {
            session: session.into(),
            generation,
            rank: Some(1),
            inboxes: (0..world)
                .map(|_| tokio::sync::mpsc::unbounded_channel().0)
                .collect(),
            streams: (0..world)
                .map(|_| tokio::sync::mpsc::unbounded_channel().0)
                .collect(),
        }
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn segments_cover_the_step_s_ranges_and_overlaps_are_refused() {
        let mut buf: Vec<u32> = (0..10).collect();
        let (sends, recvs) = split_segments(&mut buf, &[0..3, 2..5], &[6..9]).unwrap();
        let s: Vec<(usize, Vec<u32>)> = sends.iter().map(|(a, x)| (*a, x.to_vec())).collect();
        assert_eq!(s, [(0, vec![0, 1]), (2, vec![2]), (3, vec![3, 4])]);
        assert_eq!(recvs.len(), 1);
        assert_eq!((recvs[0].0, recvs[0].1.to_vec()), (6, vec![6, 7, 8]));
        assert!(split_segments(&mut buf, &[0..5], &[4..6]).is_none());
        // Several receives into one range (a root gathering) share its segments.
        let (s, r) = split_segments(&mut buf, &[], &[0..10, 0..10]).unwrap();
        assert!(s.is_empty() && r.len() == 1 && r[0].1.len() == 10);
    }

    #[test]
    fn a_hello_is_refused_for_each_thing_that_differs_naming_it() {
        let ok = Hello {
            token: "t".into(),
            session: "s".into(),
            generation: 1,
            from_rank: 0,
            to_rank: 1,
        };
        let r = routes("s", 1, 2);
        assert_eq!(check(&ok, "t", &r, Some(1)), Ok(()));
        let cases = [
            (
                Hello {
                    token: "x".into(),
                    ..ok.clone()
                },
                Reason::Token,
                "token",
            ),
            (
                Hello {
                    session: "z".into(),
                    ..ok.clone()
                },
                Reason::OtherRun,
                "\"z\"",
            ),
            (
                Hello {
                    generation: 2,
                    ..ok.clone()
                },
                Reason::OtherRun,
                "generation 2",
            ),
            (
                Hello {
                    from_rank: 5,
                    ..ok.clone()
                },
                Reason::OtherRun,
                "rank 5",
            ),
            (
                Hello {
                    to_rank: 0,
                    ..ok.clone()
                },
                Reason::OtherRun,
                "calling rank 0",
            ),
        ];
        for (hello, reason, names) in cases {
            let (got, why) = check(&hello, "t", &r, Some(1)).unwrap_err();
            assert_eq!(got, reason, "{why}");
            assert!(why.contains(names), "{why} should name {names}");
        }
    }
}
