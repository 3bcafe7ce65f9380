//! The control plane under TLS: a failed handshake on the coordinator's listener is refused
//! and counted like any other input (and the coordinator goes on serving), and a worker whose
//! TLS settings disagree with the coordinator's is told so, not handed an HTTP/2 error.

use std::time::Duration;

use batchlab_net::auth::Stamp;
use batchlab_net::tls::Tls;
use batchlab_net::{Coordinator, CoordinatorConfig, WorkerConfig, transport};
use batchlab_proto::v1::JoinRequest;
use batchlab_proto::v1::coordinator_client::CoordinatorClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "secret";

/// A self-signed certificate for 127.0.0.1 and its key (PEM); the certificate is its own CA,
/// so two calls give two clusters that do not trust each other.
fn identity() -> (Vec<u8>, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    (
        ck.cert.pem().into_bytes(),
        ck.signing_key.serialize_pem().into_bytes(),
    )
}

fn tls((cert, key): &(Vec<u8>, Vec<u8>)) -> Tls {
    Tls::from_pem(cert.clone(), key.clone(), cert.clone(), None).unwrap()
}

/// Joins the coordinator at `addr` over TLS as a client of `identity`'s cluster.
async fn tls_join(
    (cert, key): &(Vec<u8>, Vec<u8>),
    addr: &str,
) -> Result<batchlab_proto::v1::JoinReply, Box<dyn std::error::Error>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert))
        .identity(Identity::from_pem(cert, key))
        .domain_name("127.0.0.1");
    let channel = transport::endpoint(&format!("https://{addr}"))?
        .tls_config(config)?
        .connect()
        .await?;
    let mut client = CoordinatorClient::with_interceptor(channel, Stamp::new(TOKEN)?);
    Ok(client.join(join()).await?.into_inner())
}

async fn start_coordinator(tls: Option<Tls>) -> (Coordinator, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = CoordinatorConfig::new(1, TOKEN);
    cfg.tls = tls;
    let c = Coordinator::new(cfg);
    let serving = c.clone();
    tokio::spawn(async move { serving.serve(l, std::future::pending()).await });
    (c, addr)
}

fn join() -> JoinRequest {
    JoinRequest {
        advertise_addr: "127.0.0.1:9".into(),
        hostname: "test".into(),
        pid: 1,
        requested_rank: -1,
        data_addr: String::new(),
        data_unix: String::new(),
        host_id: String::new(),
    }
}

fn worker(coordinator: &str, tls: Option<Tls>) -> WorkerConfig {
    WorkerConfig {
        coordinator: coordinator.to_string(),
        token: TOKEN.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_port: 0,
        advertise: None,
        requested_rank: None,
        connect_timeout: Duration::from_secs(20),
        inject_delay: Duration::ZERO,
        tls,
        rejoin: false,
    }
}

/// Waits (up to 5 s) until this process has counted `n` failed TLS handshakes.
async fn tls_refusals_reach(n: u64) -> u64 {
    let wait = async {
        loop {
            let now = batchlab_net::refused::counts().tls;
            if now >= n {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| batchlab_net::refused::counts().tls)
}

/// Plain bytes to the TLS coordinator's port and a client of another CA: both handshakes
/// fail, both are counted as TLS refusals, and the coordinator still serves the cluster's own
/// clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_on_the_coordinator_are_refused_counted_and_it_keeps_serving() {
    let ours = identity();
    let (coordinator, addr) = start_coordinator(Some(tls(&ours))).await;
    let before = batchlab_net::refused::counts().tls;
    // Bytes that are no TLS hello: the coordinator answers with an alert (or closes).
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain.write_all(b"hello, coordinator\n").await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut reply)).await;
    assert!(
        read.is_ok(),
        "the coordinator left a plaintext client hanging"
    );
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "a TLS alert or nothing: {reply:?}"
    );
    assert!(
        tls_refusals_reach(before + 1).await > before,
        "the plaintext connection was counted"
    );
    // A client of another cluster: its certificate is refused (and it refuses ours).
    let stranger = identity();
    let counted = batchlab_net::refused::counts().tls;
    let e = tls_join(&stranger, &addr).await.unwrap_err();
    assert!(batchlab_net::tls::is_tls_failure(e.as_ref()), "{e:?}");
    assert!(
        tls_refusals_reach(counted + 1).await > counted,
        "the stranger's handshake was counted"
    );
    // The cluster's own client: served; nobody else joined.
    assert!(
        coordinator
            .wait_ready(Duration::from_millis(10))
            .await
            .is_err()
    );
    let reply = tls_join(&ours, &addr).await.unwrap();
    assert_eq!((reply.rank, reply.world_size), (0, 1));
}

/// A worker without TLS against a TLS coordinator is told to give the TLS flags (it used to
/// get "h2 protocol error: FRAME_SIZE_ERROR" or a broken pipe), and gives up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_worker_of_a_tls_coordinator_is_told_to_give_the_tls_flags() {
    let (_c, addr) = start_coordinator(Some(tls(&identity()))).await;
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(15),
        batchlab_net::run_worker(worker(&addr, None)),
    )
    .await
    .expect("the worker gave up")
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!(
            "the coordinator at {addr} speaks TLS and this process does not"
        )) && e.contains("--tls-cert, --tls-key and --tls-ca"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not retried until the 20 s connect timeout"
    );
}

/// A worker with TLS against a coordinator without it is told so too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_worker_of_a_plaintext_coordinator_is_told_it_does_not_speak_tls() {
    let (_c, addr) = start_coordinator(None).await;
    let e = tokio::time::timeout(
        Duration::from_secs(15),
        batchlab_net::run_worker(worker(&addr, Some(tls(&identity())))),
    )
    .await
    .expect("the worker gave up")
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!(
            "the coordinator at {addr} does not speak TLS and this process does"
        )),
        "{e}"
    );
}

/// A worker of another cluster (another CA) is not taken for a TLS mismatch: its error names
/// the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_ca_hears_about_the_certificate() {
    let (_c, addr) = start_coordinator(Some(tls(&identity()))).await;
    let e = tokio::time::timeout(
        Duration::from_secs(15),
        batchlab_net::run_worker(worker(&addr, Some(tls(&identity())))),
    )
    .await
    .expect("the worker gave up")
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("cannot reach the coordinator at {addr}"))
            && e.contains("certificate")
            && !e.contains("speak"),
        "{e}"
    );
}
