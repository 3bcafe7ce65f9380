//! Optional TLS for every TCP connection: the gRPC control plane (coordinator and peer
//! services) and the data plane's TCP streams. Mutual: each process presents its certificate,
//! and accepts only peers whose certificate the run's CA signed. Unix-socket data-plane
//! streams stay on one host and are not wrapped. The token is checked as well.
//!
//! The gRPC servers' handshakes are done here rather than inside tonic, so that a failed one
//! is refused like any other input: counted, and logged naming the client's address (a
//! plaintext client said to be one).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::NetError;
use crate::refused::{Reason, refuse};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection of a gRPC server under TLS, handshake done.
pub(crate) type GrpcStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A process's TLS settings: its certificate chain and key, the CA its peers' certificates
/// must chain to, and optionally the one name every peer's certificate is checked against
/// (for a cluster-wide certificate; by default, the host name or address dialled).
#[derive(Clone)]
pub struct Tls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
    server_name: Option<String>,
    acceptor: TlsAcceptor,
    /// The same for gRPC servers: HTTP/2 negotiated by ALPN, as tonic's clients require.
    grpc_acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn config_error(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Config(format!("TLS: {what}: {e}"))
}

impl Tls {
    /// Reads the PEM files: `cert` (this process's chain), `key` (its private key), `ca` (the
    /// certificates peers must chain to).
    pub fn from_files(
        cert: &Path,
        key: &Path,
        ca: &Path,
        server_name: Option<String>,
    ) -> Result<Self, NetError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| config_error(&format!("reading {}", p.display()), e))
        };
        Self::from_pem(read(cert)?, read(key)?, read(ca)?, server_name).map_err(|e| {
            NetError::Config(format!(
                "{e} (certificate {}, key {}, CA {})",
                cert.display(),
                key.display(),
                ca.display()
            ))
        })
    }

    /// The same from PEM text.
    pub fn from_pem(
        cert: Vec<u8>,
        key: Vec<u8>,
        ca: Vec<u8>,
        server_name: Option<String>,
    ) -> Result<Self, NetError> {
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_error("the certificate", e))?;
        if chain.is_empty() {
            return Err(config_error("the certificate", "no PEM certificate in it"));
        }
        let private =
            PrivateKeyDer::from_pem_slice(&key).map_err(|e| config_error("the key", e))?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            let c = c.map_err(|e| config_error("the CA", e))?;
            roots.add(c).map_err(|e| config_error("the CA", e))?;
        }
        if roots.is_empty() {
            return Err(config_error("the CA", "no PEM certificate in it"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| config_error("the CA", e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("protocol versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|e| config_error("the certificate and key", e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("protocol versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(|e| config_error("the certificate and key", e))?;
        let mut grpc_server = server.clone();
        grpc_server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            cert,
            key,
            ca,
            server_name,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            grpc_acceptor: TlsAcceptor::from(Arc::new(grpc_server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name a peer at `addr` (`host:port`, `[v6]:port` or a URI) must prove.
    fn name_for(&self, addr: &str) -> String {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        host_of(addr).to_string()
    }

    /// The connections a gRPC server (`what`: `the coordinator`, `a worker's peer service`)
    /// accepts on `listener`, each with its TLS handshake done. Handshakes run side by side (a
    /// slow client holds up nobody); a failed one is refused (counted, and logged naming the
    /// client's address) and never reaches the server. The listener is closed once the server
    /// drops the stream.
    pub(crate) fn grpc_incoming(
        &self,
        listener: TcpListener,
        what: &'static str,
    ) -> ReceiverStream<std::io::Result<GrpcStream>> {
        let (tx, rx) = mpsc::channel(16);
        let acceptor = self.grpc_acceptor.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, from) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before it was accepted:
                        // the next one may do.
                        tracing::warn!("{what}: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match grpc_handshake(&acceptor, tcp).await {
                        Ok(stream) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Err(why) => {
                            let from = from.to_string();
                            refuse(
                                Reason::Tls,
                                &from,
                                format!("{what} refused the connection from {from}: {why}"),
                            );
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// The gRPC client side, for a server at `addr`.
    pub(crate) fn grpc_client(&self, addr: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(self.name_for(addr))
    }

    /// Opens TLS on a data-plane TCP connection to `addr`.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        addr: &str,
    ) -> Result<TlsStream<TcpStream>, String> {
        let name = ServerName::try_from(self.name_for(addr))
            .map_err(|e| format!("TLS server name of {addr}: {e}"))?;
        self.connector
            .connect(name, tcp)
            .await
            .map(TlsStream::Client)
            .map_err(|e| format!("TLS handshake: {e}"))
    }

    /// Accepts TLS on an incoming data-plane TCP connection.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        self.acceptor
            .accept(tcp)
            .await
            .map(TlsStream::Server)
            .map_err(|e| format!("TLS handshake: {e}"))
    }
}

/// The server side of a gRPC connection's handshake, or why it failed (a client that sent an
/// HTTP/2 preface instead of a TLS hello is said to speak plaintext).
async fn grpc_handshake(acceptor: &TlsAcceptor, tcp: TcpStream) -> Result<GrpcStream, String> {
    let handshake = async {
        let mut first = [0u8; 4];
        let seen = tcp.peek(&mut first).await.unwrap_or(0);
        let plaintext = first[..seen] == *b"PRI ";
        acceptor.accept(tcp).await.map_err(|e| {
            if plaintext {
                format!(
                    "the client speaks plaintext HTTP/2 and this server TLS (give the client \
                     --tls-cert, --tls-key and --tls-ca): TLS handshake: {e}"
                )
            } else {
                format!("TLS handshake: {e}")
            }
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()))?
}

/// Whether `e` (or an error it wraps) is a TLS failure: a certificate refused on either side,
/// or a handshake that cannot succeed. Such an error is not worth retrying.
pub fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// What a server answered an HTTP/2 client's first bytes with (see [`probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    /// A TLS record (an alert: it expected a TLS hello).
    Tls,
    /// An HTTP/2 SETTINGS frame: plaintext gRPC.
    PlainHttp2,
}

/// What the server at `addr` answers a plaintext HTTP/2 client with, if it answers within two
/// seconds with something recognisable. A TLS server counts the probe as a failed handshake.
pub(crate) async fn probe(addr: &str) -> Option<Speaks> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut tcp = TcpStream::connect(host_port_of(addr)).await.ok()?;
        // The client preface and an empty SETTINGS frame, in one segment.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .ok()?;
        let mut head = [0u8; 4];
        tcp.read_exact(&mut head).await.ok()?;
        Some(head)
    };
    let head = tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()??;
    classify(head)
}

/// A server's first four bytes: a TLS record (content type alert or handshake, version 3.x) or
/// an HTTP/2 frame header of type SETTINGS.
fn classify(head: [u8; 4]) -> Option<Speaks> {
    match head {
        [0x15 | 0x16, 0x03, ..] => Some(Speaks::Tls),
        [_, _, _, 0x04] => Some(Speaks::PlainHttp2),
        _ => None,
    }
}

/// Why a call to the server at `addr` (`what`: `the coordinator`) failed, when it is because
/// one side speaks TLS and the other does not (`tls`: whether this side does); `None` when the
/// server does not answer as the other kind. The caller asks after a transport failure (a
/// plaintext client reads a TLS alert as an oversized HTTP/2 frame, or finds the connection
/// reset; a TLS client reads an HTTP/2 frame as a corrupt TLS record).
pub(crate) async fn mismatch(what: &str, addr: &str, tls: bool) -> Option<String> {
    match (tls, probe(addr).await?) {
        (false, Speaks::Tls) => Some(format!(
            "{what} at {addr} speaks TLS and this process does not: start this process with \
             --tls-cert, --tls-key and --tls-ca (and --tls-server-name if {what}'s \
             certificate does not name the address dialled)"
        )),
        (true, Speaks::PlainHttp2) => Some(format!(
            "{what} at {addr} does not speak TLS and this process does: start {what} with \
             --tls-cert, --tls-key and --tls-ca too, or this process without them"
        )),
        _ => None,
    }
}

/// The `host:port` of `host:port`, `[v6]:port` or `scheme://host:port/...`.
fn host_port_of(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The host of `host:port`, `[v6]:port` or `scheme://host:port`.
fn host_of(addr: &str) -> &str {
    let hostport = host_port_of(addr);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
}

/// `addr` as a URI of the scheme its transport needs.
pub(crate) fn uri(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hosts_are_read_from_every_address_form() {
        assert_eq!(host_of("node1:7070"), "node1");
        assert_eq!(host_of("https://coordinator:7070"), "coordinator");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("10.0.0.2:1"), "10.0.0.2");
        assert_eq!(host_of("host"), "host");
        assert_eq!(
            host_port_of("https://coordinator:7070/x"),
            "coordinator:7070"
        );
        assert_eq!(host_port_of("[::1]:7070"), "[::1]:7070");
    }

    #[test]
    fn a_server_s_first_bytes_tell_tls_from_plaintext_http2() {
        // A TLS alert (TLS 1.2 record version), a TLS handshake record (a hello of 1.0).
        assert_eq!(classify([0x15, 0x03, 0x03, 0x00]), Some(Speaks::Tls));
        assert_eq!(classify([0x16, 0x03, 0x01, 0x02]), Some(Speaks::Tls));
        // An HTTP/2 SETTINGS frame of 18 bytes.
        assert_eq!(classify([0x00, 0x00, 0x12, 0x04]), Some(Speaks::PlainHttp2));
        // HTTP/1.1, or a GOAWAY frame: neither.
        assert_eq!(classify(*b"HTTP"), None);
        assert_eq!(classify([0x00, 0x00, 0x08, 0x07]), None);
    }

    fn tls_for(names: &[&str]) -> (Tls, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = ck.cert.pem().into_bytes();
        let key = ck.signing_key.serialize_pem().into_bytes();
        let tls = Tls::from_pem(cert.clone(), key, cert.clone(), None).unwrap();
        (tls, cert)
    }

    /// A TLS data-plane listener refuses (and counts) a plaintext hello and a certificate of
    /// another CA, and accepts the hello of a peer with the run's certificate.
    #[test]
    fn the_data_plane_under_tls_refuses_plaintext_and_strangers_and_accepts_the_run_s_peers() {
        use crate::dataplane::{DataListener, Hello};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tls, _) = tls_for(&["127.0.0.1"]);
            let (stranger, _) = tls_for(&["127.0.0.1"]);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let mut stream_rx =
                crate::dataplane::serve_rank_one(DataListener::Tcp(listener), 0, Some(tls.clone()));
            let hello = Hello {
                token: "tok".into(),
                session: "s".into(),
                generation: 0,
                from_rank: 0,
                to_rank: 1,
            }
            .encode();
            let before = crate::refused::counts().tls;
            // Plaintext: the handshake fails, nothing is accepted.
            let mut plain = TcpStream::connect(&addr).await.unwrap();
            plain.write_all(&hello).await.unwrap();
            let mut reply = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut reply)).await;
            assert_ne!(reply.first(), Some(&0), "a plaintext hello was accepted");
            // Another CA's certificate: refused by the listener's client verification.
            let tcp = TcpStream::connect(&addr).await.unwrap();
            if let Ok(mut s) = stranger.connect(tcp, &addr).await {
                let _ = s.write_all(&hello).await;
                let mut ack = [9u8; 1];
                let got = s.read_exact(&mut ack).await;
                assert!(
                    got.is_err() || ack != [0],
                    "a stranger's hello was accepted"
                );
            }
            let counted = tokio::time::timeout(Duration::from_secs(5), async {
                while crate::refused::counts().tls < before + 2 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(counted.is_ok(), "both refusals counted as TLS failures");
            assert!(stream_rx.try_recv().is_err());
            // The run's certificate: accepted and handed to the mesh.
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let mut s = tls.connect(tcp, &addr).await.unwrap();
            s.write_all(&hello).await.unwrap();
            let mut ack = [9u8; 1];
            s.read_exact(&mut ack).await.unwrap();
            assert_eq!(ack, [0]);
            let handed = tokio::time::timeout(Duration::from_secs(5), stream_rx.recv()).await;
            assert!(matches!(handed, Ok(Some(_))));
        });
    }

    #[test]
    fn bad_pem_is_refused_naming_the_file_s_role() {
        let e = Tls::from_pem(b"nope".to_vec(), b"nope".to_vec(), b"nope".to_vec(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS: the certificate"), "{e}");
    }
}
