//! Random bytes into every decoder a peer's bytes reach: the protobuf messages of both
//! services, the CBOR report payloads, the run's TOML, the data plane's hello and piece
//! headers, and a live data-plane listener. Each must answer with a value or an error, never a
//! panic or a hang; the listener must refuse, count the refusal, and keep serving.

use std::time::Duration;

use batchlab_proto::PROTOCOL_VERSION;
use batchlab_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::dataplane::{DataListener, DataStream, Hello, PieceError, read_piece};
use crate::refused::Reason;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `bytes` into one end of a socket pair, closes it, and returns the other end.
async fn fed(bytes: &[u8]) -> DataStream {
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(bytes).await.unwrap();
    drop(a);
    DataStream::Unix(b)
}

/// Bytes that get past the hello's first checks some of the time: the magic and version,
/// then random bytes; or random bytes alone.
fn hello_bytes() -> impl Strategy<Value = Vec<u8>> {
    (0u8..3, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(prefix, rest)| {
        let mut out = Vec::new();
        if prefix >= 1 {
            out.extend_from_slice(b"BLDP");
        }
        if prefix == 2 {
            out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        }
        out.extend(rest);
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn protobuf_messages_decode_or_fail_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = pb::JoinRequest::decode(bytes.as_slice());
        let _ = pb::JoinReply::decode(bytes.as_slice());
        let _ = pb::HeartbeatRequest::decode(bytes.as_slice());
        let _ = pb::HeartbeatReply::decode(bytes.as_slice());
        let _ = pb::TaskRequest::decode(bytes.as_slice());
        let _ = pb::TaskAssignment::decode(bytes.as_slice());
        let _ = pb::RunSpec::decode(bytes.as_slice());
        let _ = pb::BenchSpec::decode(bytes.as_slice());
        let _ = pb::RunReport::decode(bytes.as_slice());
        let _ = pb::Chunk::decode(bytes.as_slice());
    }

    #[test]
    fn report_payloads_decode_or_fail_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = crate::decode::<batchlab_core::train::StepMetrics>(&bytes);
        let _ = crate::decode::<crate::RankResult>(&bytes);
        let _ = crate::decode::<crate::bench::BenchRankResult>(&bytes);
    }

    #[test]
    fn a_run_spec_s_config_parses_or_fails_on_random_text(text in "[ -~\n]{0,200}") {
        if let Ok(cfg) = toml::from_str::<batchlab_core::train::TrainConfig>(&text) {
            let _ = cfg.build();
        }
    }

    #[test]
    fn a_hello_of_random_bytes_is_refused_with_a_reason(bytes in hello_bytes()) {
        let got = rt().block_on(async { Hello::read(&mut fed(&bytes).await).await });
        if let Err((reason, why)) = got {
            prop_assert!(!why.is_empty());
            prop_assert!(matches!(reason, Reason::Malformed | Reason::Version | Reason::Oversized));
        }
        // A hello that decodes (random session, token and ranks) still has to pass `check`.
    }

    #[test]
    fn a_piece_of_random_bytes_is_refused_or_lost(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let got = rt().block_on(async {
            let mut stream = fed(&bytes).await;
            let mut dst = vec![0i64; 8];
            let mut scratch = Vec::new();
            read_piece::<i64>(&mut stream, 7, 1, 64, std::iter::once(dst.as_mut_slice()), true, &mut scratch)
                .await
                .map(|_| ())
        });
        match got {
            // Only a header naming collective 7, step 1 and 64 bytes, then 64 bytes, is read.
            Ok(()) => prop_assert!(bytes.len() >= 80 && bytes[..16] == [7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 64, 0, 0, 0]),
            Err(PieceError::Lost(_)) => prop_assert!(bytes.len() < 80),
            Err(PieceError::Bad(reason, _)) => prop_assert!(matches!(reason, Reason::Malformed | Reason::Oversized)),
        }
    }
}

/// A live data-plane listener fed random connections refuses each (replying with the reason
/// where it got that far), counts them, and still accepts a proper hello afterwards.
#[test]
fn a_data_plane_listener_refuses_random_connections_counts_them_and_keeps_serving() {
    use rand::Rng;
    let dir = tempfile_dir();
    let path = dir.join("fuzz.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mut stream_rx = crate::dataplane::serve_rank_one(DataListener::Unix(listener), 3, None);
        let before = crate::refused::counts();
        let mut rng = batchlab_core::rng::rng(20261122, batchlab_core::rng::Stream::Init, 0);
        const N: u64 = 40;
        for i in 0..N {
            let mut bytes: Vec<u8> = (0..rng.random_range(1..200))
                .map(|_| rng.random())
                .collect();
            if i % 2 == 0 {
                // Past the magic and version: the token, session and ranks are random.
                let mut head = b"BLDP".to_vec();
                head.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
                bytes.splice(0..0, head);
            }
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            s.shutdown().await.unwrap();
            // The listener answers (a refusal) or closes; it never hands the stream on.
            let mut reply = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut reply)).await;
            assert!(read.is_ok(), "connection {i} left hanging");
            if let Some(&first) = reply.first() {
                assert_eq!(first, 1, "connection {i} was accepted");
            }
        }
        // The refusals are counted (the counters are the process's: at least ours).
        let counted = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let now = crate::refused::counts();
                if now.total() >= before.total() + N {
                    break now;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every random connection counted as refused");
        assert!(
            counted.malformed + counted.oversized + counted.token
                > before.malformed + before.oversized + before.token
        );
        assert!(
            stream_rx.try_recv().is_err(),
            "no random connection reached the mesh"
        );
        // A proper hello is still accepted.
        let hello = Hello {
            token: "tok".into(),
            session: "s".into(),
            generation: 3,
            from_rank: 0,
            to_rank: 1,
        };
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(&hello.encode()).await.unwrap();
        let mut ack = [9u8; 1];
        s.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0]);
        let handed = tokio::time::timeout(Duration::from_secs(5), stream_rx.recv()).await;
        assert!(
            matches!(handed, Ok(Some(_))),
            "the good connection reached the mesh"
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("batchlab-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
