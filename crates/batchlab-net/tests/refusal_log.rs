//! What the log says of refusals, in a process of its own (the counts and the log's rate
//! limit are the process's): a refused TLS handshake names the client's address, and a client
//! retrying with a wrong token 300 times is logged once, then summed up in one line once the
//! summary interval is over (this test waits for it: about 10 s).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchlab_net::auth::Stamp;
use batchlab_net::{Coordinator, CoordinatorConfig, transport};
use batchlab_proto::v1::JoinRequest;
use batchlab_proto::v1::coordinator_client::CoordinatorClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::field::{Field, Visit};
use tracing::span;

/// Keeps batchlab-net's log events as `LEVEL message field=value ...` lines.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl Capture {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target().starts_with("batchlab_net")
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

async fn start_coordinator(tls: Option<batchlab_net::tls::Tls>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = CoordinatorConfig::new(1, "secret");
    cfg.tls = tls;
    let c = Coordinator::new(cfg);
    tokio::spawn(async move { c.serve(l, std::future::pending()).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_naming_the_sender_and_a_burst_once() {
    let log = Capture::default();
    tracing::subscriber::set_global_default(log.clone()).unwrap();

    // A plaintext HTTP/2 client of a TLS coordinator.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = ck.cert.pem().into_bytes();
    let key = ck.signing_key.serialize_pem().into_bytes();
    let tls = batchlab_net::tls::Tls::from_pem(cert.clone(), key, cert, None).unwrap();
    let addr = start_coordinator(Some(tls)).await;
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let me = plain.local_addr().unwrap().to_string();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut reply)).await;
    let counted = tokio::time::timeout(Duration::from_secs(5), async {
        while batchlab_net::refused::counts().tls < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the failed handshake was counted");
    let lines = log.lines();
    let tls_lines: Vec<_> = lines.iter().filter(|l| l.contains("\"tls\"")).collect();
    assert_eq!(tls_lines.len(), 1, "{lines:#?}");
    assert!(
        tls_lines[0].starts_with("WARN")
            && tls_lines[0].contains(&format!("the coordinator refused the connection from {me}"))
            && tls_lines[0].contains("the client speaks plaintext HTTP/2")
            && tls_lines[0].contains(&format!("from={me}")),
        "{}",
        tls_lines[0]
    );

    // 300 calls with a wrong token: all refused and counted, one line in the log.
    let addr = start_coordinator(None).await;
    let channel = transport::endpoint(&format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CoordinatorClient::with_interceptor(channel, Stamp::new("wrong").unwrap());
    let started = std::time::Instant::now();
    for _ in 0..300 {
        let status = client
            .join(JoinRequest {
                advertise_addr: "127.0.0.1:9".into(),
                hostname: "test".into(),
                pid: 1,
                requested_rank: -1,
                data_addr: String::new(),
                data_unix: String::new(),
                host_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    assert_eq!(batchlab_net::refused::counts().token, 300);
    // Within the summary interval, the first refusal's line is the only one.
    assert!(started.elapsed() < batchlab_net::refused::SUMMARY_INTERVAL);
    let lines = log.lines();
    let token_lines: Vec<_> = lines.iter().filter(|l| l.contains("\"token\"")).collect();
    assert_eq!(token_lines.len(), 1, "{token_lines:#?}");
    assert!(
        token_lines[0].contains("wrong or missing token")
            && token_lines[0].contains("from=127.0.0.1:"),
        "{}",
        token_lines[0]
    );
    // Once the interval is over, the other 299 are summed up in one line.
    let summary = tokio::time::timeout(
        batchlab_net::refused::SUMMARY_INTERVAL + Duration::from_secs(5),
        async {
            loop {
                let lines = log.lines();
                if let Some(l) = lines.iter().find(|l| l.contains("more refusals")) {
                    return l.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await
    .expect("a summary line once the interval was over");
    assert!(
        summary.starts_with("WARN refused: 299 more refusals (token) in the last 10 s")
            && summary.contains("refused_so_far=300"),
        "{summary}"
    );
    let lines = log.lines();
    assert_eq!(
        lines.iter().filter(|l| l.contains("\"token\"")).count(),
        2,
        "{lines:#?}"
    );
}
