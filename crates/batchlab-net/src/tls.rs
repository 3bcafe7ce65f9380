//! Optional TLS for every TCP connection: the gRPC control plane (coordinator and peer
//! services) and the data plane's TCP streams. Mutual: each process presents its certificate,
//! and accepts only peers whose certificate the run's CA signed. Unix-socket data-plane
//! streams stay on one host and are not wrapped. The token is checked as well.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::NetError;

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
        Ok(Self {
            cert,
            key,
            ca,
            server_name,
            acceptor: TlsAcceptor::from(Arc::new(server)),
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

    /// The gRPC server side.
    pub(crate) fn grpc_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
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

/// The host of `host:port`, `[v6]:port` or `scheme://host:port`.
fn host_of(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
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
