//! `batchlab bench allreduce` on real worker processes: every result checked, wrong results
//! fail the run, the table's figures follow their definitions, stress mode and timelines.

use batchlab_tests::{batchlab, text};

fn rows(dir: &std::path::Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(dir.join("allreduce.csv")).expect("allreduce.csv");
    let headers = r.headers().unwrap().clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        [
            "algorithm",
            "bytes",
            "count",
            "type",
            "ranks",
            "iters",
            "time_us",
            "algbw_gbs",
            "busbw_gbs",
            "wrong",
            "checked",
            "min_us",
            "p50_us",
            "p99_us",
            "max_us"
        ]
    );
    r.records().map(Result::unwrap).collect()
}

fn num(r: &csv::StringRecord, i: usize) -> f64 {
    r[i].parse().unwrap()
}

#[test]
fn every_algorithm_and_size_is_checked_exact_and_the_bandwidths_follow_their_definitions() {
    // Exact over TCP, fast over Unix sockets (the default between workers on one host).
    for (reduce, elem, ty, transport) in [
        ("exact", 8.0, "int64", "tcp"),
        ("fast", 4.0, "float", "auto"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = batchlab(&[
            "bench",
            "allreduce",
            "--workers",
            "3",
            "-b",
            "8",
            "-e",
            "96K",
            "-f",
            "8",
            "-n",
            "3",
            "-w",
            "1",
            "--chunk-bytes",
            "4K",
            "--reduce",
            reduce,
            "--transport",
            transport,
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains(&format!("{transport} transport")), "{t}");
        assert!(t.contains("Out of bounds values : 0 OK"), "{t}");
        for a in ["ring", "tree", "rhd", "centralized"] {
            assert!(t.contains(&format!("{a:>11}: avg bus bandwidth")), "{t}");
        }
        let rows = rows(dir.path());
        // Sizes 8, 64, 512, 4K, 32K (96K is not reached by ×8 from 32K) for 4 algorithms;
        // a size under one element is dropped.
        let sizes: Vec<u64> = [8u64, 64, 512, 4096, 32768]
            .into_iter()
            .filter(|&s| s as f64 >= elem)
            .collect();
        assert_eq!(rows.len(), 4 * sizes.len(), "{t}");
        for r in &rows {
            let bytes = num(r, 1);
            assert!(sizes.contains(&(bytes as u64)), "{r:?}");
            assert_eq!(num(r, 2), bytes / elem);
            assert_eq!(&r[3], ty);
            assert_eq!((&r[4], &r[5], &r[9], &r[10]), ("3", "3", "0", "9"), "{r:?}");
            let (time, algbw, busbw) = (num(r, 6), num(r, 7), num(r, 8));
            assert!((algbw - bytes / (time * 1e-6) / 1e9).abs() <= 1e-9 * algbw.max(1.0));
            assert!((busbw - algbw * 4.0 / 3.0).abs() <= 1e-9 * busbw.max(1.0));
            let (min, p50, p99, max) = (num(r, 11), num(r, 12), num(r, 13), num(r, 14));
            assert!(min > 0.0 && min <= p50 && p50 <= p99 && p99 <= max, "{r:?}");
            assert!(min <= time && time <= max, "{r:?}");
        }
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("allreduce.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["world"], 3);
        assert_eq!(json["wrong"], 0);
        assert_eq!(json["algorithms"].as_array().unwrap().len(), 4);
        for a in json["algorithms"].as_array().unwrap() {
            // Sizes up to 32 KiB are latency-bound: a positive α; β may be unresolved (null).
            assert!(a["alpha_us"].as_f64().unwrap() > 0.0, "{a}");
            assert!(
                a["beta_gbs"].is_null() || a["beta_gbs"].as_f64().unwrap() > 0.0,
                "{a}"
            );
        }
    }
}

#[test]
fn a_rank_that_returns_a_wrong_sum_fails_the_benchmark_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let out = batchlab(&[
        "bench",
        "allreduce",
        "--workers",
        "2",
        "-b",
        "1K",
        "-e",
        "1K",
        "-n",
        "4",
        "-w",
        "0",
        "-a",
        "ring",
        "--corrupt-rank",
        "1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("4 elements were wrong"), "{t}");
    assert!(t.contains("Out of bounds values : 4 FAILED"), "{t}");
    let rows = rows(dir.path());
    assert_eq!(&rows[0][9], "4");
}

#[test]
fn a_minimum_bus_bandwidth_out_of_reach_fails_naming_both_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = batchlab(&[
        "bench",
        "allreduce",
        "--workers",
        "2",
        "-b",
        "1K",
        "-e",
        "4K",
        "-n",
        "2",
        "-w",
        "0",
        "-a",
        "tree",
        "--min-busbw",
        "1000000",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("below --min-busbw 1000000 GB/s"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_flags_are_refused_naming_the_value_and_what_is_accepted() {
    for (args, says) in [
        (
            &["-b", "64K", "-e", "1K"][..],
            "-b 65536 is larger than -e 1024",
        ),
        (&["-a", "butterfly"][..], "-a butterfly"),
        (
            &["--reduce", "bf16"][..],
            "invalid value 'bf16' for '--reduce <REDUCE>'\n  [possible values: exact, fast]",
        ),
        (&["-b", "12Q"][..], "\"12Q\": expected a byte count"),
        (&["-f", "1"][..], "-f 1: expected a factor of at least 2"),
    ] {
        let mut a = vec!["bench", "allreduce", "--workers", "2"];
        a.extend_from_slice(args);
        let out = batchlab(&a);
        assert!(!out.status.success());
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
}

#[test]
fn stress_mode_interleaves_algorithms_on_changing_members_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = batchlab(&[
        "bench",
        "allreduce",
        "--workers",
        "4",
        "--stress",
        "3",
        "-b",
        "8",
        "-e",
        "256K",
        "--chunk-bytes",
        "16K",
        "--trace-every",
        "1",
        "--reduce",
        "fast",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("wrong elements: 0; lost results: 0 OK"), "{t}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stress.json")).unwrap())
            .unwrap();
    assert_eq!(
        (report["wrong"].as_u64(), report["lost"].as_u64()),
        (Some(0), Some(0))
    );
    let rounds = report["rounds"].as_u64().unwrap();
    assert!(rounds >= 10, "{report}");
    assert_eq!(report["all_reduces"].as_u64().unwrap(), 8 * rounds);
    // Every algorithm and more than one membership size took part.
    assert_eq!(
        report["by_algorithm"].as_object().unwrap().len(),
        4,
        "{report}"
    );
    assert!(
        report["by_members"].as_object().unwrap().len() >= 2,
        "{report}"
    );
    // The timeline has every rank as a process and every phase kind.
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("trace.json")).unwrap())
            .unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let pids: std::collections::BTreeSet<u64> =
        events.iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 4);
    for phase in ["iteration", "send", "wait", "reduce", "copy"] {
        assert!(events.iter().any(|e| e["cat"] == phase), "no {phase} event");
    }
    assert!(
        events
            .iter()
            .all(|e| e["ph"] == "X" && e["dur"].as_f64().unwrap() >= 0.0)
    );
}

#[test]
fn the_grpc_transport_gives_the_same_exact_sums() {
    let dir = tempfile::tempdir().unwrap();
    let out = batchlab(&[
        "bench",
        "allreduce",
        "--workers",
        "3",
        "-b",
        "8",
        "-e",
        "32K",
        "-f",
        "16",
        "-n",
        "2",
        "-w",
        "1",
        "--chunk-bytes",
        "1K",
        "--transport",
        "grpc",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("grpc transport") && t.contains("Out of bounds values : 0 OK"),
        "{t}"
    );
    let rows = rows(dir.path());
    // 8, 128, 2048, 32768 bytes for 4 algorithms, each checked on 3 ranks × 2 iterations.
    assert_eq!(rows.len(), 16);
    assert!(
        rows.iter().all(|r| &r[9] == "0" && &r[10] == "6"),
        "{rows:?}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_benchmark_without_a_panic_message() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(batchlab_tests::exe())
        .args([
            "bench",
            "allreduce",
            "--workers",
            "2",
            "-b",
            "8",
            "-e",
            "64K",
            "-n",
            "1",
            "-w",
            "0",
            "-a",
            "ring",
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -0`: the reader closes the pipe before anything is printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_zero_checks_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = batchlab(&[
        "bench",
        "allreduce",
        "--workers",
        "2",
        "-b",
        "1K",
        "-e",
        "4K",
        "-f",
        "4",
        "-n",
        "3",
        "-w",
        "0",
        "-a",
        "ring",
        "-c",
        "0",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("results not checked"), "{}", text(&out));
    let rows = rows(dir.path());
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| &r[9] == "0" && &r[10] == "0"),
        "{rows:?}"
    );
}

/// Stress mode on an elastic cluster: a worker is killed mid-stress and another joins later;
/// the interrupted round runs again on the next generation, and nothing is wrong or lost.
#[test]
fn stress_mode_survives_workers_leaving_and_joining_and_loses_nothing() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let exe = batchlab_tests::exe();
    let addr = format!("127.0.0.1:{}", batchlab_tests::free_port());
    let coordinator = Command::new(exe)
        .args(["bench", "allreduce", "--listen", &addr, "--token", "t"])
        .args(["--workers", "3", "--min-workers", "2", "--max-workers", "3"])
        .args(["--heartbeat-timeout-ms", "1000", "--stress", "7"])
        .args(["-b", "8", "-e", "64K", "--chunk-bytes", "16K"])
        .args(["--out", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker = || {
        batchlab_tests::worker(&addr, 30, &[])
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut workers: Vec<_> = (0..3).map(|_| worker()).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    // After the loss is declared (1 s) and the survivors regrouped, a new worker comes.
    std::thread::sleep(Duration::from_millis(2000));
    workers.push(worker());
    let o = coordinator.wait_with_output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(start.elapsed() < Duration::from_secs(40), "{t}");
    assert!(t.contains("wrong elements: 0; lost results: 0 OK"), "{t}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stress.json")).unwrap())
            .unwrap();
    // Three generations: 3 workers, 2 after the loss, 3 again with the new one.
    let sizes: Vec<u64> = report["generations"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [3, 2, 3], "{report}");
    assert!(
        report["by_members"].as_object().unwrap().len() >= 2,
        "{report}"
    );
    for (i, w) in workers.iter_mut().enumerate().skip(1) {
        assert!(w.wait().unwrap().success(), "worker {i}");
    }
}
