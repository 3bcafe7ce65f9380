//! Random bytes into every decoder a peer's bytes reach: the protobuf messages of both
//! services, the CBOR report payloads, the run's TOML, the data plane's hello and piece
//! headers, a live data-plane listener and a live coordinator. Each must answer with a value
//! or an error, never a panic or a hang; the listeners must refuse, count the refusal, and
//! keep serving.

use std::time::Duration;

use crate::protocol::PROTOCOL_VERSION;
use crate::protocol::pb;
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
    fn a_run_spec_decodes_or_is_refused_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(spec) = pb::RunSpec::decode(bytes.as_slice())
            && let Ok(order) = crate::protocol::RunOrder::from_wire(&spec)
        {
            let _ = order.config.build();
        }
        let _ = batchlab_core::driver::RunState::from_bytes(&bytes);
    }

    #[test]
    fn a_corrupted_run_config_is_refused_or_builds(pos in 0usize..4096, byte in any::<u8>()) {
        let mut bytes = crate::encode(&batchlab_core::train::TrainConfig::default());
        let at = pos % bytes.len();
        bytes[at] = byte;
        if let Ok(cfg) = crate::decode::<batchlab_core::train::TrainConfig>(&bytes) {
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

/// A gRPC codec that sends its bytes as they are: a message that need not decode.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `method` of the coordinator on `channel` with `body` as its message(s), stamped with
/// `token`: one message for a unary method, a stream of one for `Report`.
async fn raw_call(
    channel: tonic::transport::Channel,
    token: &str,
    method: &'static str,
    body: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(crate::auth::TOKEN_KEY, token.parse().unwrap());
    metadata.insert(
        crate::auth::PROTOCOL_KEY,
        PROTOCOL_VERSION.to_string().parse().unwrap(),
    );
    let ext = tonic::Extensions::default();
    let result = if method.ends_with("/Report") {
        let stream = tokio_stream::iter(vec![body]);
        let request = tonic::Request::from_parts(metadata, ext, stream);
        grpc.client_streaming(request, path, Raw).await.map(|_| ())
    } else {
        let request = tonic::Request::from_parts(metadata, ext, body);
        grpc.unary(request, path, Raw).await.map(|_| ())
    };
    result.expect_err("the message was refused")
}

/// A live coordinator fed messages that do not decode as their protobuf (with the run's token)
/// refuses each before any handler (INTERNAL, naming the decoding error), counts each as
/// malformed, and still serves a proper join; with a wrong token the message is refused for
/// the token, never decoded.
#[test]
fn a_coordinator_refuses_undecodable_messages_counts_them_and_keeps_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let coordinator = crate::Coordinator::new(crate::CoordinatorConfig::new(1, "tok"));
        let serving = coordinator.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        let channel = crate::transport::endpoint(&format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut rng = batchlab_core::rng::rng(20261207, batchlab_core::rng::Stream::Init, 0);
        let before = crate::refused::counts();
        let mut sent = 0u64;
        while sent < 24 {
            use rand::Rng;
            let body: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            // Random bytes that happen to decode are a (random) proper message: not these.
            if pb::JoinRequest::decode(body.as_slice()).is_ok()
                || pb::RunReport::decode(body.as_slice()).is_ok()
            {
                continue;
            }
            let method = if sent.is_multiple_of(2) {
                "/batchlab.v1.Coordinator/Join"
            } else {
                "/batchlab.v1.Coordinator/Report"
            };
            let status = raw_call(channel.clone(), "tok", method, body).await;
            assert_eq!(status.code(), tonic::Code::Internal, "{method}: {status:?}");
            assert!(
                status
                    .message()
                    .contains("failed to decode Protobuf message"),
                "{method}: {status:?}"
            );
            sent += 1;
        }
        // The coordinator's counts are the process's: at least ours.
        let after = crate::refused::counts();
        assert!(
            after.malformed >= before.malformed + sent,
            "{sent} undecodable messages, malformed counted {} -> {}",
            before.malformed,
            after.malformed
        );
        // A wrong token: refused for it before the message is looked at.
        let status = raw_call(
            channel.clone(),
            "not-tok",
            "/batchlab.v1.Coordinator/Join",
            vec![0xff; 3],
        )
        .await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(crate::refused::counts().token > before.token);
        // Nobody joined; a proper join is still served.
        assert!(
            coordinator
                .wait_ready(Duration::from_millis(10))
                .await
                .is_err()
        );
        let mut client = pb::coordinator_client::CoordinatorClient::with_interceptor(
            channel,
            crate::auth::Stamp::new("tok").unwrap(),
        );
        let reply = client
            .join(pb::JoinRequest {
                advertise_addr: "127.0.0.1:9".into(),
                hostname: "fuzz".into(),
                pid: 1,
                requested_rank: -1,
                data_addr: String::new(),
                data_unix: String::new(),
                host_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.rank, reply.world_size), (0, 1));
    });
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("batchlab-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
