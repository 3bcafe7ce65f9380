//! The TCP data plane: collective payloads on plain TCP streams, one per ordered pair of
//! ranks, beside the gRPC control plane (and instead of the `Peer.Exchange` gRPC stream when a
//! task asks for `transport = "tcp"`, the default).
//!
//! Why: through tonic a payload byte is copied four times in user space (encode, gRPC framing,
//! HTTP/2 reassembly, protobuf decode) besides the kernel's two; on a small machine those
//! copies, not the network, set the all-reduce bandwidth. Here a sender writes the elements'
//! little-endian bytes straight from its buffer and the receiver reads them into one buffer that
//! the reduction consumes: the same work per byte as Gloo's or MPI's TCP transports.
//!
//! ```text
//!   connect ─► hello: "BLDP" version token session generation from_rank to_rank
//!           ◄─ 0 (accepted) | 1, message (refused: wrong token, session, generation, rank)
//!   then, per piece: collective u64 | step u32 | length u32 | payload (little-endian elements)
//! ```
//!
//! The hello is checked like a gRPC call (token in constant time, protocol version, session,
//! generation, ranks) before any payload is accepted; a refused connection is closed and
//! logged and changes nothing. A length beyond the message limit closes the stream with an
//! error that names it.

use std::sync::Arc;
use std::time::Duration;

use batchlab_proto::PROTOCOL_VERSION;
use batchlab_proto::v1::Chunk;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::NetError;
use crate::mesh::{Inbound, Routes};
use crate::transport::MAX_MESSAGE;

const MAGIC: &[u8; 4] = b"BLDP";
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
    fn encode(&self) -> Vec<u8> {
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

    async fn read(r: &mut TcpStream) -> Result<Self, String> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).await.map_err(|e| e.to_string())?;
        if &magic[..4] != MAGIC {
            return Err(format!(
                "not a batchlab data-plane connection (first bytes {:?})",
                String::from_utf8_lossy(&magic[..4])
            ));
        }
        let version = u32::from_le_bytes(magic[4..].try_into().expect("4 bytes"));
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "this worker speaks batchlab protocol {PROTOCOL_VERSION}; the peer sent version {version}"
            ));
        }
        let token = read_string(r, MAX_TOKEN, "token").await?;
        let session = read_string(r, MAX_SESSION, "session").await?;
        let mut rest = [0u8; 16];
        r.read_exact(&mut rest).await.map_err(|e| e.to_string())?;
        Ok(Self {
            token,
            session,
            generation: u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
            from_rank: u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")),
            to_rank: u32::from_le_bytes(rest[12..].try_into().expect("4 bytes")),
        })
    }
}

async fn read_string(r: &mut TcpStream, max: usize, what: &str) -> Result<String, String> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = usize::from(u16::from_le_bytes(len));
    if len > max {
        return Err(format!("{what} of {len} bytes: at most {max} accepted"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    String::from_utf8(buf).map_err(|_| format!("{what} is not UTF-8"))
}

/// Checks a hello against this worker's routes; the refusal names what differed.
fn check(hello: &Hello, token: &str, routes: &Routes, me: Option<usize>) -> Result<(), String> {
    if !constant_time_eq::constant_time_eq(hello.token.as_bytes(), token.as_bytes()) {
        return Err("wrong or missing token".to_string());
    }
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

/// Accepts data-plane connections on `listener` until the routes channel closes.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: watch::Receiver<Option<Arc<Routes>>>,
    token: Arc<str>,
    route_timeout: Duration,
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
        tokio::spawn(async move {
            if let Err(why) = receive(stream, routes, &token, route_timeout).await {
                tracing::warn!(%from, "data plane connection refused or broken: {why}");
            }
        });
    }
}

async fn receive(
    mut stream: TcpStream,
    mut routes: watch::Receiver<Option<Arc<Routes>>>,
    token: &str,
    route_timeout: Duration,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let hello = tokio::time::timeout(Duration::from_secs(10), Hello::read(&mut stream))
        .await
        .map_err(|_| "no hello within 10 s".to_string())??;
    let routes = tokio::time::timeout(route_timeout, routes.wait_for(Option::is_some))
        .await
        .map_err(|_| "this worker has not joined a cluster yet".to_string())?
        .map_err(|_| "this worker is shutting down".to_string())?
        .clone()
        .expect("waited for Some");
    if let Err(why) = check(&hello, token, &routes, routes.rank) {
        let mut reply = vec![1u8];
        reply.extend_from_slice(&(why.len().min(u16::MAX as usize) as u16).to_le_bytes());
        reply.extend_from_slice(&why.as_bytes()[..why.len().min(u16::MAX as usize)]);
        let _ = stream.write_all(&reply).await;
        return Err(why);
    }
    stream.write_all(&[0]).await.map_err(|e| e.to_string())?;
    let from = hello.from_rank as usize;
    let inbox = &routes.inboxes[from];
    let mut header = [0u8; HEADER];
    loop {
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let _ = inbox.send(Inbound::Closed("stream ended".to_string()));
                return Ok(());
            }
            Err(e) => {
                let _ = inbox.send(Inbound::Closed(format!("stream broke: {e}")));
                return Err(e.to_string());
            }
        }
        let collective = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let step = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(header[12..].try_into().expect("4 bytes")) as usize;
        if len > MAX_MESSAGE {
            let why = format!(
                "a piece of {len} bytes from rank {from}: at most {MAX_MESSAGE} bytes accepted"
            );
            let _ = inbox.send(Inbound::Closed(why.clone()));
            return Err(why);
        }
        // Read into the spare capacity: no zeroing, no growth (read_to_end would grow the
        // buffer, copying it, to look for an end of stream).
        let mut payload = Vec::with_capacity(len);
        while payload.len() < len {
            let want = (len - payload.len()) as u64;
            match (&mut stream).take(want).read_buf(&mut payload).await {
                Ok(0) => {
                    let why = format!(
                        "stream ended inside a piece ({} of {len} bytes)",
                        payload.len()
                    );
                    let _ = inbox.send(Inbound::Closed(why.clone()));
                    return Err(why);
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = inbox.send(Inbound::Closed(format!("stream broke: {e}")));
                    return Err(e.to_string());
                }
            }
        }
        // A receiver that is gone means this worker is leaving the run.
        let _ = inbox.send(Inbound::Chunk(Chunk {
            session: String::new(),
            from_rank: from as u32,
            generation: routes.generation,
            collective,
            step,
            payload,
        }));
    }
}

/// Opens the data-plane stream to `addr` and has the hello accepted.
pub(crate) async fn connect(
    addr: &str,
    hello: &Hello,
    timeout: Duration,
) -> Result<TcpStream, NetError> {
    let who = format!("rank {} ({addr}, data plane)", hello.to_rank);
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&hello.encode())
            .await
            .map_err(|e| e.to_string())?;
        let mut status = [0u8; 1];
        stream
            .read_exact(&mut status)
            .await
            .map_err(|e| format!("closed before answering the hello: {e}"))?;
        if status[0] != 0 {
            let mut len = [0u8; 2];
            stream
                .read_exact(&mut len)
                .await
                .map_err(|e| e.to_string())?;
            let mut msg = vec![0u8; usize::from(u16::from_le_bytes(len))];
            stream
                .read_exact(&mut msg)
                .await
                .map_err(|e| e.to_string())?;
            return Err(format!("refused: {}", String::from_utf8_lossy(&msg)));
        }
        Ok(stream)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(why)) => Err(NetError::Peer(format!("{who}: {why}"))),
        Err(_) => Err(NetError::Timeout {
            what: format!("{who} to accept the connection"),
            after: timeout,
        }),
    }
}

/// Writes one piece: header and payload (one write for small pieces).
pub(crate) async fn write_piece(
    stream: &mut TcpStream,
    collective: u64,
    step: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&collective.to_le_bytes());
    header[8..12].copy_from_slice(&step.to_le_bytes());
    header[12..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    if payload.len() <= 64 << 10 {
        let mut one = Vec::with_capacity(HEADER + payload.len());
        one.extend_from_slice(&header);
        one.extend_from_slice(payload);
        stream.write_all(&one).await
    } else {
        stream.write_all(&header).await?;
        stream.write_all(payload).await
    }
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
        }
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
        let bad = |h: Hello| check(&h, "t", &r, Some(1)).unwrap_err();
        assert!(
            bad(Hello {
                token: "x".into(),
                ..ok.clone()
            })
            .contains("token")
        );
        assert!(
            bad(Hello {
                session: "z".into(),
                ..ok.clone()
            })
            .contains("\"z\"")
        );
        assert!(
            bad(Hello {
                generation: 2,
                ..ok.clone()
            })
            .contains("generation 2")
        );
        assert!(
            bad(Hello {
                from_rank: 5,
                ..ok.clone()
            })
            .contains("rank 5")
        );
        assert!(
            bad(Hello {
                to_rank: 0,
                ..ok.clone()
            })
            .contains("calling rank 0")
        );
    }
}
