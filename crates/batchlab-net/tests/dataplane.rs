//! The TCP data plane: all-reduces over it equal the in-memory reference; a connection without
//! the token, from another session, or with an oversized piece is refused naming what was
//! wrong, and a refused connection changes nothing.

use std::sync::Arc;
use std::time::Duration;

use batchlab_collective::{Algorithm, PlanConfig};
use batchlab_net::dataplane::DataListener;
use batchlab_net::mesh::{Mesh, PeerEndpoint, Transport, World};
use batchlab_net::transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "secret";

/// A worker's listeners: the gRPC peer service and the data plane, on TCP and on a Unix
/// socket (its path).
async fn endpoint() -> (PeerEndpoint, String, String, String) {
    let e = PeerEndpoint::new(Duration::from_secs(5));
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap().to_string();
    let svc = e.service(TOKEN);
    tokio::spawn(async move {
        transport::server()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
            .await
    });
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data_addr = data.local_addr().unwrap().to_string();
    e.serve_data(DataListener::Tcp(data), TOKEN);
    let path = std::env::temp_dir().join(format!(
        "batchlab-test-{}-{}.sock",
        std::process::id(),
        data_addr.replace([':', '.'], "-")
    ));
    let _ = std::fs::remove_file(&path);
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    e.serve_data(DataListener::Unix(unix), TOKEN);
    (e, grpc_addr, data_addr, path.to_string_lossy().into_owned())
}

/// `n` connected meshes with the data plane (over Unix sockets with `unix`), in rank order,
/// their endpoints (kept alive) and the TCP data-plane addresses.
async fn meshes(n: usize, unix: bool) -> (Vec<Mesh>, Vec<Arc<PeerEndpoint>>, Vec<String>) {
    let mut endpoints = Vec::new();
    let (mut peers, mut data, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (e, p, d, u) = endpoint().await;
        endpoints.push(Arc::new(e));
        peers.push(p);
        data.push(d);
        if unix {
            paths.push(u);
        } else {
            let _ = std::fs::remove_file(&u);
            paths.push(String::new());
        }
    }
    // Every rank connects at once: a hello is answered once its receiver has joined too.
    let tasks: Vec<_> = (0..n)
        .map(|rank| {
            let e = endpoints[rank].clone();
            let (peers, data, paths) = (peers.clone(), data.clone(), paths.clone());
            tokio::spawn(async move {
                let w = World {
                    session: "s",
                    generation: 1,
                    rank,
                    peers: &peers,
                    data_peers: &data,
                    data_unix: &paths,
                };
                e.connect(&w, TOKEN, Duration::from_secs(5)).await.unwrap()
            })
        })
        .collect();
    let mut meshes = Vec::new();
    for t in tasks {
        meshes.push(t.await.unwrap());
    }
    // Connected: the socket files are no longer needed.
    for p in paths.iter().filter(|p| !p.is_empty()) {
        let _ = std::fs::remove_file(p);
    }
    (meshes, endpoints, data)
}

/// Rank `r`'s input: distinct per rank and element.
fn input(r: usize, len: usize) -> Vec<i64> {
    (0..len)
        .map(|i| (i as i64 * 31 + r as i64 * 1000) % 977 - 400)
        .collect()
}

async fn all_reduce_everywhere(
    meshes: Vec<Mesh>,
    algorithm: Algorithm,
    len: usize,
) -> Vec<Vec<i64>> {
    let n = meshes.len();
    let tasks: Vec<_> = meshes
        .into_iter()
        .enumerate()
        .map(|(r, mut m)| {
            tokio::spawn(async move {
                let plan = batchlab_collective::plan(
                    &PlanConfig {
                        algorithm,
                        chunk_elems: 1000,
                    },
                    r,
                    n,
                    len,
                );
                let mut buf = input(r, len);
                m.all_reduce_i64(&mut buf, &plan).await.map(|_| buf)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_algorithm_over_tcp_and_unix_sockets_gives_the_exact_sum_on_every_rank() {
    for (n, unix) in [(2, false), (3, false), (4, false), (2, true), (3, true)] {
        for algorithm in Algorithm::ALL {
            let (meshes, _endpoints, _) = meshes(n, unix).await;
            let len = 10_007;
            let inputs: Vec<Vec<i64>> = (0..n).map(|r| input(r, len)).collect();
            let want: Vec<i64> = (0..len)
                .map(|i| inputs.iter().map(|x| x[i]).sum())
                .collect();
            for (r, got) in all_reduce_everywhere(meshes, algorithm, len)
                .await
                .iter()
                .enumerate()
            {
                assert!(
                    got == &want,
                    "{algorithm:?} n={n} unix={unix}: rank {r} differs"
                );
            }
        }
    }
}

/// The hello of the data plane, written from its documentation (not from the crate's code).
fn hello(token: &str, session: &str, generation: u64, from: u32, to: u32) -> Vec<u8> {
    let mut h = b"BLDP".to_vec();
    h.extend_from_slice(&batchlab_proto::PROTOCOL_VERSION.to_le_bytes());
    h.extend_from_slice(&(token.len() as u16).to_le_bytes());
    h.extend_from_slice(token.as_bytes());
    h.extend_from_slice(&(session.len() as u16).to_le_bytes());
    h.extend_from_slice(session.as_bytes());
    h.extend_from_slice(&generation.to_le_bytes());
    h.extend_from_slice(&from.to_le_bytes());
    h.extend_from_slice(&to.to_le_bytes());
    h
}

/// Sends `bytes` to `addr` and returns the answer: `Ok(())` accepted, `Err(message)` refused.
async fn say(addr: &str, bytes: &[u8]) -> (TcpStream, Result<(), String>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut status = [0u8; 1];
    let answer = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut status))
        .await
        .expect("an answer within 5 s");
    if answer.is_err() {
        return (s, Err("closed without an answer".into()));
    }
    if status[0] == 0 {
        return (s, Ok(()));
    }
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut msg = vec![0u8; u16::from_le_bytes(len) as usize];
    s.read_exact(&mut msg).await.unwrap();
    (s, Err(String::from_utf8(msg).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_connections_name_what_was_wrong_and_change_nothing() {
    let (meshes, _endpoints, data) = meshes(2, false).await;
    let to_rank0 = &data[0];
    for (bytes, says) in [
        (hello("wrong", "s", 1, 1, 0), "wrong or missing token"),
        (hello(TOKEN, "other", 1, 1, 0), "session \"other\""),
        (hello(TOKEN, "s", 7, 1, 0), "generation 7"),
        (hello(TOKEN, "s", 1, 9, 0), "rank 9"),
        (hello(TOKEN, "s", 1, 1, 1), "calling rank 1"),
    ] {
        let (_s, answer) = say(to_rank0, &bytes).await;
        let why = answer.unwrap_err();
        assert!(why.contains(says), "{why}");
    }
    // Not a batchlab connection at all: closed without an answer.
    let (_s, answer) = say(to_rank0, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.is_err());
    // The refusals changed nothing: the ranks still reduce exactly.
    let len = 3000;
    let got = all_reduce_everywhere(meshes, Algorithm::Ring, len).await;
    let want: Vec<i64> = (0..len)
        .map(|i| input(0, len)[i] + input(1, len)[i])
        .collect();
    assert!(got.iter().all(|g| g == &want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_piece_fails_the_collective_naming_its_size_and_the_limit() {
    let (e0, p0, d0, u0) = endpoint().await;
    // Rank 1 is played by hand: its data plane accepts rank 0's hello, and it connects to rank
    // 0 with a valid hello, then announces a piece beyond the limit.
    let (_e1, p1, _, u1) = endpoint().await;
    for u in [u0, u1] {
        std::fs::remove_file(u).unwrap();
    }
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let d1 = fake.local_addr().unwrap().to_string();
    let hello_len = hello(TOKEN, "s", 1, 0, 1).len();
    let accepting = tokio::spawn(async move {
        let (mut s, _) = fake.accept().await.unwrap();
        let mut h = vec![0u8; hello_len];
        s.read_exact(&mut h).await.unwrap();
        s.write_all(&[0]).await.unwrap();
        s
    });
    let peers = [p0, p1];
    let data = [d0.clone(), d1];
    let w0 = World {
        session: "s",
        generation: 1,
        rank: 0,
        peers: &peers,
        data_peers: &data,
        data_unix: &[],
    };
    let mut m0 = e0
        .connect(&w0, TOKEN, Duration::from_secs(5))
        .await
        .unwrap();
    let _from_rank0 = accepting.await.unwrap();
    m0.set_transport(Transport::Tcp).unwrap();
    m0.set_recv_timeout(Duration::from_secs(5));
    let (mut raw, answer) = say(&d0, &hello(TOKEN, "s", 1, 1, 0)).await;
    answer.unwrap();
    let len = transport::MAX_MESSAGE as u32 + 1;
    let mut header = 1u64.to_le_bytes().to_vec();
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    raw.write_all(&header).await.unwrap();
    let plan = batchlab_collective::plan(&PlanConfig::unchunked(Algorithm::Ring), 0, 2, 4);
    let e = m0
        .all_reduce_i64(&mut [1, 2, 3, 4], &plan)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rank 1")
            && e.contains(&len.to_string())
            && e.contains(&format!("at most {}", transport::MAX_MESSAGE)),
        "{e}"
    );
}
