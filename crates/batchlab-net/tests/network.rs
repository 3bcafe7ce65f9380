//! The network layer: bad input is refused naming who, where and what was expected, nothing
//! hangs (every wait here is bounded), and fast mode stays within its error bound.

use std::time::Duration;

use batchlab_collective::{Algorithm, PlanConfig};
use batchlab_net::auth::{PROTOCOL_KEY, Stamp, TOKEN_KEY};
use batchlab_net::mesh::{PeerEndpoint, World};
use batchlab_net::{Coordinator, CoordinatorConfig, NetError, transport};
use batchlab_proto::v1::coordinator_client::CoordinatorClient;
use batchlab_proto::v1::peer_client::PeerClient;
use batchlab_proto::v1::{Chunk, HeartbeatRequest, JoinRequest};
use tokio::net::TcpListener;
use tonic::Request;

const TOKEN: &str = "secret";

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

async fn start_coordinator(workers: usize) -> (Coordinator, String) {
    let (l, addr) = listener().await;
    let c = Coordinator::new(CoordinatorConfig::new(workers, TOKEN));
    let serving = c.clone();
    tokio::spawn(async move { serving.serve(l, std::future::pending()).await });
    (c, addr)
}

async fn start_peer(endpoint: &PeerEndpoint) -> String {
    let (l, addr) = listener().await;
    let svc = endpoint.service(TOKEN);
    tokio::spawn(async move {
        transport::server()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
    });
    addr
}

fn join(addr: &str) -> JoinRequest {
    JoinRequest {
        advertise_addr: addr.to_string(),
        hostname: "test".into(),
        pid: 1,
        requested_rank: -1,
        data_addr: String::new(),
        data_unix: String::new(),
        host_id: String::new(),
    }
}

#[tokio::test]
async fn a_caller_of_another_protocol_version_is_refused_naming_both_versions() {
    let (_c, addr) = start_coordinator(1).await;
    let channel = transport::endpoint(&format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CoordinatorClient::with_interceptor(channel, |mut r: Request<()>| {
        r.metadata_mut().insert(TOKEN_KEY, TOKEN.parse().unwrap());
        r.metadata_mut().insert(PROTOCOL_KEY, "99".parse().unwrap());
        Ok(r)
    });
    let status = client.join(join("127.0.0.1:9")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains(&format!(
            "speaks batchlab protocol {}",
            batchlab_proto::PROTOCOL_VERSION
        )) && status.message().contains("sent version 99"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_worker_of_another_coordinator_is_refused_and_changes_nothing() {
    let (_a, addr_a) = start_coordinator(1).await;
    let (b, addr_b) = start_coordinator(1).await;
    let connect = |addr: String| async move {
        let ch = transport::endpoint(&format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        CoordinatorClient::with_interceptor(ch, Stamp::new(TOKEN).unwrap())
    };
    let reply = connect(addr_a)
        .await
        .join(join("127.0.0.1:9"))
        .await
        .unwrap()
        .into_inner();
    let status = connect(addr_b)
        .await
        .heartbeat(HeartbeatRequest {
            session: reply.session.clone(),
            rank: 0,
            generation: 1,
            worker_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("belongs to coordinator session"),
        "{}",
        status.message()
    );
    let e = b
        .wait_ready(Duration::from_millis(50))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(0 joined)"),
        "the refused worker did not join b: {e}"
    );
}

#[tokio::test]
async fn an_unreachable_peer_address_is_named_in_the_error() {
    let endpoint = PeerEndpoint::new(Duration::from_secs(1));
    // Port 1 on loopback: nothing listens there.
    let peers = ["127.0.0.1:0".to_string(), "127.0.0.1:1".to_string()];
    let e = endpoint
        .connect(
            &World {
                session: "s",
                generation: 1,
                rank: 0,
                peers: &peers,
                data_peers: &[],
                data_unix: &[],
            },
            TOKEN,
            Duration::from_millis(500),
        )
        .await
        .err()
        .expect("unreachable");
    assert!(matches!(e, NetError::Unreachable { .. }), "{e}");
    let m = e.to_string();
    assert!(m.contains("rank 1") && m.contains("127.0.0.1:1"), "{m}");
}

/// Two peer endpoints serving; rank 0's mesh connected; a raw client that speaks as rank 1.
type RawPeer =
    PeerClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Stamp>>;

/// Rank 0's mesh, a raw client that speaks to rank 0 as rank 1, and rank 1's endpoint (kept
/// alive by the caller).
async fn two_ranks() -> (batchlab_net::mesh::Mesh, RawPeer, PeerEndpoint) {
    let a = PeerEndpoint::new(Duration::from_secs(5));
    let b = PeerEndpoint::new(Duration::from_secs(5));
    let (addr_a, addr_b) = (start_peer(&a).await, start_peer(&b).await);
    let peers = [addr_a.clone(), addr_b];
    let mut mesh = a
        .connect(
            &World {
                session: "s",
                generation: 1,
                rank: 0,
                peers: &peers,
                data_peers: &[],
                data_unix: &[],
            },
            TOKEN,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    mesh.set_recv_timeout(Duration::from_secs(5));
    let ch = transport::endpoint(&format!("http://{addr_a}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = PeerClient::with_interceptor(ch, Stamp::new(TOKEN).unwrap())
        .max_encoding_message_size(usize::MAX);
    (mesh, client, b)
}

fn chunk(payload: Vec<u8>) -> Chunk {
    Chunk {
        session: "s".into(),
        from_rank: 1,
        generation: 1,
        collective: 1,
        step: 0,
        payload,
    }
}

#[tokio::test]
async fn a_gradient_piece_of_the_wrong_length_fails_the_collective_naming_the_peer() {
    let (mut mesh, mut client, _b) = two_ranks().await;
    tokio::spawn(async move {
        client
            .exchange(tokio_stream::iter(vec![chunk(vec![0u8; 3])]))
            .await
    });
    let plan = batchlab_collective::plan(&PlanConfig::unchunked(Algorithm::Ring), 0, 2, 4);
    let mut words = vec![1i64; 4];
    let e = mesh
        .all_reduce_i64(&mut words, &plan)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rank 1") && e.contains("sent 3 bytes") && e.contains("expected 16"),
        "{e}"
    );
}

#[tokio::test]
async fn a_chunk_from_another_session_is_refused() {
    let (_mesh, mut client, _b) = two_ranks().await;
    let mut c = chunk(vec![0u8; 8]);
    c.session = "other".into();
    let status = client
        .exchange(tokio_stream::iter(vec![c]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("another cluster"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_oversized_message_is_refused_with_its_size_and_the_service_keeps_serving() {
    let (mut mesh, mut client, _b) = two_ranks().await;
    let big = chunk(vec![0u8; transport::MAX_MESSAGE + 1]);
    let status = client
        .exchange(tokio_stream::iter(vec![big]))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("too large")
            || status
                .message()
                .contains(&(transport::MAX_MESSAGE + 1).to_string()),
        "{status:?}"
    );
    // A well-formed piece afterwards still arrives and is reduced.
    let plan = batchlab_collective::plan(&PlanConfig::unchunked(Algorithm::Ring), 0, 2, 2);
    let ok = chunk(5i64.to_le_bytes().to_vec());
    tokio::spawn(async move { client.exchange(tokio_stream::iter(vec![ok])).await });
    mesh.set_recv_timeout(Duration::from_millis(500));
    let mut words = vec![1i64; 2];
    // Two ranks, two elements: rank 0 receives one element's partial sum in step 0; the raw
    // client then closes its stream, so the all-gather step fails naming rank 1.
    let e = mesh
        .all_reduce_i64(&mut words, &plan)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lost rank 1 (127.0.0.1:") && e.contains("stream ended"),
        "{e}"
    );
    assert_eq!(
        words.iter().sum::<i64>(),
        7,
        "the well-formed piece was reduced into the buffer: {words:?}"
    );
}

/// Fast mode's documented bound (`compute_micros_fast`): per element, the `f32` all-reduce of
/// the ranks' local sums (each rounded once to `f32`) is within `W · 2⁻²⁴ · Σ_r |s_r|` of the
/// exact sum, for every algorithm and world size, on sums of mixed signs and magnitudes.
#[test]
fn fast_mode_stays_within_its_documented_error_bound() {
    use rand::Rng;
    let len = 257;
    for world in 1..=8 {
        for algorithm in Algorithm::ALL {
            let mut r = batchlab_core::rng::rng(world as u64, batchlab_core::rng::Stream::Aux, 0);
            let sums: Vec<Vec<f64>> = (0..world)
                .map(|_| {
                    (0..len)
                        .map(|_| r.random_range(-1.0..1.0) * 10f64.powi(r.random_range(-6..6)))
                        .collect()
                })
                .collect();
            let plans = batchlab_collective::plan_all(
                &PlanConfig {
                    algorithm,
                    chunk_elems: 17,
                },
                world,
                len,
            );
            let mut bufs: Vec<Vec<f32>> = sums
                .iter()
                .map(|s| s.iter().map(|&x| x as f32).collect())
                .collect();
            batchlab_collective::run_in_memory(&plans, &mut bufs, |a, b| *a += b);
            for i in 0..len {
                let exact: f64 = sums.iter().map(|s| s[i]).sum();
                let magnitude: f64 = sums.iter().map(|s| s[i].abs()).sum();
                let bound = world as f64 * (2f64).powi(-24) * magnitude * (1.0 + 1e-6);
                for (rank, b) in bufs.iter().enumerate() {
                    let err = (f64::from(b[i]) - exact).abs();
                    assert!(
                        err <= bound,
                        "{algorithm} W={world} rank {rank} element {i}: error {err:e} > bound {bound:e}"
                    );
                }
            }
        }
    }
}

fn spec(cfg: &batchlab_core::train::TrainConfig, allreduce: Algorithm) -> batchlab_net::RunOrder {
    let reduction = batchlab_core::driver::Reduction {
        algorithm: allreduce,
        chunk_bytes: 1 << 12,
        overlap: true,
        ..Default::default()
    };
    let mut order = batchlab_net::RunOrder::new(cfg.clone(), vec![], reduction);
    order.peer_timeout_ms = 20_000;
    // The gRPC streams for tree, the TCP data plane otherwise: both must agree exactly.
    order.transport = match allreduce {
        Algorithm::Tree => batchlab_net::Transport::Grpc,
        _ => batchlab_net::Transport::Tcp,
    };
    order
}

/// The same scenario in one process and across workers (TCP data plane and gRPC streams):
/// several runs, one after another, on the same
/// three in-process workers end exactly where single-process training ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consecutive_runs_on_the_same_workers_match_single_process_training() {
    use batchlab_core::driver::{Progress, Trainer};
    use batchlab_core::group::SeedMean;
    use batchlab_core::tasks::{TaskConfig, linreg::LinregConfig};
    use batchlab_core::train::{Status, TrainConfig};
    let (coordinator, addr) = start_coordinator(3).await;
    let workers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(batchlab_net::run_worker(batchlab_net::WorkerConfig {
                coordinator: addr.clone(),
                token: TOKEN.into(),
                listen: "127.0.0.1:0".parse().unwrap(),
                data_port: 0,
                advertise: None,
                requested_rank: None,
                connect_timeout: Duration::from_secs(20),
                inject_delay: Duration::ZERO,
                tls: None,
                rejoin: false,
            }))
        })
        .collect();
    coordinator
        .wait_ready(Duration::from_secs(20))
        .await
        .unwrap();
    for (seed, allreduce) in [
        (0, Algorithm::Ring),
        (1, Algorithm::Rhd),
        (2, Algorithm::Tree),
    ] {
        let cfg = TrainConfig {
            task: TaskConfig::Linreg(LinregConfig {
                dim: 30,
                train_size: Some(600),
                ..LinregConfig::default()
            }),
            batch: 48,
            micro: Some(4),
            lr: 0.3,
            steps: 30,
            seed,
            eval_every: 10,
            ..TrainConfig::default()
        };
        let want = Trainer::new(&cfg.build().unwrap()).run(|_| {});
        let mut rows = 0;
        let got = coordinator
            .run(spec(&cfg, allreduce), |_, _| rows += 1)
            .await
            .unwrap();
        assert_eq!(got.summary, want, "seed {seed}, {allreduce}");
        assert_eq!(rows, 30);
        assert_eq!(got.timings.len(), 3);
        assert!(got.timings.iter().all(|t| t.steps == 30));
    }
    // A seed-mean group (two seeds in lock step, ended on their mean eval loss) with its final
    // parameters, against the same group stepped in this process.
    let cfg = TrainConfig {
        task: TaskConfig::Linreg(LinregConfig {
            dim: 30,
            train_size: Some(600),
            ..LinregConfig::default()
        }),
        batch: 24,
        micro: Some(4),
        lr: 0.2,
        steps: 400,
        eval_every: 5,
        target_loss: Some(0.5),
        ..TrainConfig::default()
    };
    let seeds = [3, 8];
    let mut trainers: Vec<Trainer> = seeds
        .iter()
        .map(|&s| Trainer::new(&SeedMean::member_config(&cfg, s).build().unwrap()))
        .collect();
    let mut rule = SeedMean::new(&cfg, 4, seeds.len());
    let mut want_rows = vec![0; seeds.len()];
    let end = 'run: loop {
        for (i, t) in trainers.iter_mut().enumerate() {
            match t.step() {
                Progress::Step(row) => {
                    want_rows[i] += 1;
                    rule.record(i, &row);
                }
                Progress::Done(row, s) => {
                    if let Some(row) = row {
                        want_rows[i] += 1;
                        rule.record(i, &row);
                    }
                    break 'run rule.member_ended(i, &s);
                }
            }
        }
        if let Some(end) = rule.check() {
            break end;
        }
    };
    assert_eq!(end.status, Status::Complete, "{}", end.message);
    let want_params: Vec<f64> = trainers
        .iter()
        .flat_map(|t| t.replica().params.clone())
        .collect();
    let want = rule.summary(end, trainers.iter().map(|t| t.replica().params.as_slice()));
    let mut group_spec = spec(&cfg, Algorithm::Ring);
    group_spec.seeds = seeds.to_vec();
    group_spec.return_params = true;
    let mut rows = vec![0; seeds.len()];
    let got = coordinator
        .run(group_spec, |member, _| rows[member] += 1)
        .await
        .unwrap();
    assert_eq!(got.summary, want);
    assert_eq!(rows, want_rows);
    assert_eq!(got.params.as_deref(), Some(want_params.as_slice()));
    coordinator.shutdown_workers("test over");
    for w in workers {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// A message above the transport's limit is refused by gRPC itself, before any handler: the
/// caller hears why, the refusal is counted as oversized, and the coordinator goes on serving.
#[tokio::test]
async fn an_oversized_message_is_refused_counted_and_changes_nothing() {
    let (c, addr) = start_coordinator(1).await;
    let ch = transport::endpoint(&format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CoordinatorClient::with_interceptor(ch, Stamp::new(TOKEN).unwrap());
    let before = batchlab_net::refused::counts().oversized;
    let huge = "x".repeat(transport::MAX_MESSAGE + 1);
    let status = client.join(join(&huge)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    assert!(batchlab_net::refused::counts().oversized > before);
    // Nobody joined; a proper join is still served.
    assert!(c.wait_ready(Duration::from_millis(10)).await.is_err());
    let reply = client.join(join("127.0.0.1:9")).await.unwrap().into_inner();
    assert_eq!((reply.rank, reply.world_size), (0, 1));
}
