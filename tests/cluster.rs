//! Training across real worker processes over gRPC on loopback.

use batchlab_tests::{batchlab, free_port, text};

use std::path::Path;
use std::process::Command;

fn summary(dir: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str::<serde_json::Value>(&s).unwrap()["summary"].clone()
}

/// A 200-step MLP run small enough for CI: 32-16-4 on teacher data, B = 64 in 8 micros.
const MLP: &[&str] = &[
    "--task",
    "mlp",
    "--set",
    "task.hidden=[16]",
    "--set",
    "task.data.input_dim=32",
    "--set",
    "task.data.classes=4",
    "--set",
    "task.data.train_size=1024",
    "--set",
    "task.data.eval_size=256",
    "--batch",
    "64",
    "--micro",
    "8",
    "--lr",
    "0.2",
    "--steps",
    "200",
    "--set",
    "eval_every=50",
];

/// With overlap a rank with no microbatch of its own still takes part in every bucket's
/// all-reduce; with or without overlap the run equals `batchlab train`'s, on every algorithm.
#[test]
fn overlapped_runs_equal_train_even_when_a_rank_has_no_microbatch() {
    let dir = tempfile::tempdir().unwrap();
    let args_with = |cmd: &str, out: &std::path::Path, micro: &str, extra: &[&str]| {
        let mut a: Vec<String> = vec![cmd.into(), "--out".into(), out.to_str().unwrap().into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        let mut it = MLP.iter();
        while let Some(&x) = it.next() {
            if x == "--micro" {
                it.next();
                a.extend(["--micro".to_string(), micro.to_string()]);
            } else {
                a.push(x.to_string());
            }
        }
        a
    };
    let run = |a: Vec<String>| {
        let o = batchlab(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{a:?}: {}", text(&o));
    };
    // More local workers than microbatches are refused (`run`); workers started on their own
    // may outnumber them, so the rank without one is reached through a coordinator.
    let run_on_own_workers = |a: Vec<String>, workers: usize| {
        let addr = format!("127.0.0.1:{}", batchlab_tests::free_port());
        let coordinator = Command::new(batchlab_tests::exe())
            .arg("coordinator")
            .args(["--listen", &addr, "--token", "t"])
            .args(&a[1..])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ws: Vec<_> = (0..workers)
            .map(|_| batchlab_tests::worker(&addr, 30, &[]).spawn().unwrap())
            .collect();
        let o = coordinator.wait_with_output().unwrap();
        for w in &mut ws {
            let _ = w.wait();
        }
        assert!(o.status.success(), "{a:?}: {}", text(&o));
    };
    // 64 samples in micros of 32 on 3 workers: one rank has none; in micros of 8 on 2 workers:
    // each rank has several, the last one streamed.
    for (micro, workers) in [("32", "3"), ("8", "2")] {
        let reference = dir.path().join(format!("train-{micro}"));
        run(args_with("train", &reference, micro, &[]));
        let want = std::fs::read_to_string(reference.join("metrics.csv")).unwrap();
        for (overlap, algo) in [
            ("false", "ring"),
            ("true", "ring"),
            ("true", "tree"),
            ("true", "rhd"),
            ("true", "centralized"),
        ] {
            let out = dir.path().join(format!("{micro}-{overlap}-{algo}"));
            let extra = [
                "--workers",
                workers,
                "--overlap",
                overlap,
                "--allreduce",
                algo,
            ];
            if workers == "3" {
                run_on_own_workers(args_with("run", &out, micro, &extra), 3);
            } else {
                run(args_with("run", &out, micro, &extra));
            }
            let got = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
            assert!(
                got == want,
                "micro {micro}, overlap {overlap}, {algo}: metrics differ from batchlab train's"
            );
        }
    }
}

/// A batch that follows the measured noise scale is a decision every rank makes alike: on
/// three worker processes the rows equal `batchlab train`'s, batch column included.
#[test]
fn a_batch_that_follows_the_noise_scale_gives_train_s_numbers_on_worker_processes() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = [
        "--set",
        "batch_schedule.kind=\"noise\"",
        "--set",
        "batch_schedule.min=16",
        "--set",
        "batch_schedule.max=512",
        "--set",
        "batch_schedule.every=10",
    ];
    let metrics = |cmd: &str, extra: &[&str]| {
        let out = dir.path().join(cmd);
        let mut a = vec![cmd, "--out", out.to_str().unwrap()];
        a.extend(MLP);
        a.extend(schedule);
        a.extend(extra);
        let o = batchlab(&a);
        assert!(o.status.success(), "{a:?}: {}", text(&o));
        std::fs::read_to_string(out.join("metrics.csv")).unwrap()
    };
    let want = metrics("train", &[]);
    let got = metrics("run", &["--workers", "3"]);
    assert!(got == want, "metrics differ from batchlab train's");
    let batches: Vec<u64> = batchlab_tests::csv_column(&want, "batch");
    assert_eq!(batches[0], 64, "the first batch is --batch");
    assert!(
        batches.iter().any(|&b| b != 64),
        "the batch followed the noise scale: {batches:?}"
    );
}

/// Elastic growth: a run that starts on one local worker with a batch that doubles twice
/// starts three standby workers and admits them mid-run as the batch needs them (a worker
/// per 64 samples, up to four), and its numbers equal `batchlab train`'s.
#[test]
fn a_growing_batch_admits_standby_local_workers_as_it_needs_them_and_keeps_train_s_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // MLP's run, 1500 steps long: the workers have time to start while it runs.
    let mut base: Vec<&str> = MLP.to_vec();
    let s = base.iter().position(|&a| a == "--steps").unwrap();
    base[s + 1] = "1500";
    base.extend([
        "--set",
        "batch_schedule.kind=\"step\"",
        "--set",
        "batch_schedule.at=[20, 40]",
    ]);
    let run = |cmd: &str, extra: &[&str]| {
        let out = dir.path().join(cmd);
        let mut a = vec![cmd, "--out", out.to_str().unwrap()];
        a.extend(&base);
        a.extend(extra);
        let o = batchlab(&a);
        assert!(o.status.success(), "{a:?}: {}", text(&o));
        (out, text(&o))
    };
    let (want, _) = run("train", &[]);
    let (got, log) = run(
        "run",
        &[
            "--workers",
            "1",
            "--max-workers",
            "4",
            "--heartbeat-timeout-ms",
            "1000",
        ],
    );
    let rows = |d: &Path| std::fs::read_to_string(d.join("metrics.csv")).unwrap();
    assert!(
        rows(&got) == rows(&want),
        "metrics differ from batchlab train's"
    );
    let batches: Vec<u64> = batchlab_tests::csv_column(&rows(&want), "batch");
    assert_eq!((batches[0], batches[30], batches[1499]), (64, 128, 256));
    // 64 samples per worker (the first batch on one worker): four workers at B = 256,
    // admitted while the run went on (the growth lags the batch by a heartbeat or so).
    let resumed: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("resuming at step ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        resumed.iter().any(|&s| (20..1500).contains(&s)),
        "no generation formed mid-run: {log}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(got.join("summary.json")).unwrap()).unwrap();
    let timing = json["timing"].as_array().unwrap().len();
    assert_eq!(timing, 4, "the final generation had four ranks: {log}");
}

#[test]
fn mlp_runs_are_bit_identical_on_any_number_of_workers_and_algorithm_and_equal_train() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("train");
    let mut args = vec!["train", "--out", reference.to_str().unwrap()];
    args.extend_from_slice(MLP);
    let o = batchlab(&args);
    assert!(o.status.success(), "{}", text(&o));
    let want = summary(&reference);
    let want_rows = std::fs::read_to_string(reference.join("metrics.csv")).unwrap();
    assert_eq!(want["steps"], 200);

    let mut cases = vec![(1, "ring")];
    for world in [2, 3, 4] {
        for algo in ["ring", "tree", "rhd", "centralized"] {
            cases.push((world, algo));
        }
    }
    for (world, algo) in cases {
        let out = dir.path().join(format!("w{world}-{algo}"));
        let workers = world.to_string();
        let mut args = vec![
            "run",
            "--workers",
            &workers,
            "--allreduce",
            algo,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(MLP);
        let o = batchlab(&args);
        assert!(o.status.success(), "{world} workers, {algo}: {}", text(&o));
        let got = summary(&out);
        assert_eq!(
            got["params_digest"], want["params_digest"],
            "{world} workers, {algo}"
        );
        assert_eq!(
            got["final_eval_loss"], want["final_eval_loss"],
            "{world} workers, {algo}"
        );
        let rows = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        assert!(
            rows == want_rows,
            "{world} workers, {algo}: metrics differ from batchlab train's"
        );
    }

    // Fast mode (f32 sums): not bit-identical, but each step's gradient is within
    // W·2⁻²⁴·Σ|rank sums| per element, so 200 steps end close to the exact run.
    let out = dir.path().join("fast");
    let mut args = vec![
        "run",
        "--workers",
        "3",
        "--reduce",
        "fast",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(MLP);
    let o = batchlab(&args);
    assert!(o.status.success(), "fast: {}", text(&o));
    let got = summary(&out)["final_eval_loss"].as_f64().unwrap();
    let exact = want["final_eval_loss"].as_f64().unwrap();
    assert!(
        (got - exact).abs() <= 1e-3 * exact,
        "fast {got} vs exact {exact}"
    );
}

#[test]
fn a_worker_with_the_wrong_token_is_refused_with_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let mut coordinator = Command::new(batchlab_tests::exe())
        .args([
            "coordinator",
            "--listen",
            &addr,
            "--workers",
            "1",
            "--token",
            "right",
            "--steps",
            "5",
        ])
        .args(["--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let o = Command::new(batchlab_tests::exe())
        .args([
            "worker",
            "--coordinator",
            &addr,
            "--token",
            "wrong",
            "--listen",
            "127.0.0.1:0",
            "--connect-timeout",
            "20",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("wrong or missing token") && t.contains(&addr),
        "{t}"
    );
    // The refusal changed nothing: a worker with the token completes the run, and the
    // coordinator counted the refused call in the summary.
    let ok = Command::new(batchlab_tests::exe())
        .args(["worker", "--coordinator", &addr, "--token", "right"])
        .args(["--listen", "127.0.0.1:0", "--connect-timeout", "20"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    let status = coordinator.wait().unwrap();
    assert!(status.success());
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(
        written["refused"]["token"].as_u64().unwrap() >= 1,
        "{}",
        written["refused"]
    );
    assert_eq!(written["summary"]["steps"], 5);
}

/// Waits for `child` to exit, up to `limit`; kills it and fails the test otherwise.
fn wait_exit(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts a coordinator and three workers on a long run, applies `fault` to rank 1 once training
/// is under way, and checks that the coordinator stops within `limit` naming rank 1 (and, in its
/// message, `cause`), and that every other process ends.
fn lose_rank_one(fault: &str, cause: &str, limit: std::time::Duration) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let exe = batchlab_tests::exe();
    let coordinator = Command::new(exe)
        .args([
            "coordinator",
            "--listen",
            &addr,
            "--workers",
            "3",
            "--token",
            "t",
            "--heartbeat-timeout-ms",
            "2000",
        ])
        .args([
            "--steps",
            "100000000",
            "--set",
            "task.dim=2000",
            "--set",
            "eval_every=0",
        ])
        .args(["--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut workers: Vec<_> = (0..3)
        .map(|rank| {
            Command::new(exe)
                .args([
                    "worker",
                    "--coordinator",
                    &addr,
                    "--token",
                    "t",
                    "--listen",
                    "127.0.0.1:0",
                ])
                .args(["--rank", &rank.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Training is under way once metrics reach the file.
    let start = Instant::now();
    let metrics = out.join("metrics.csv");
    while std::fs::metadata(&metrics).map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args([fault, &workers[1].id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let killed_at = Instant::now();
    let mut coordinator = coordinator;
    let status = wait_exit(&mut coordinator, Duration::from_secs(30), "the coordinator");
    let detected = killed_at.elapsed();
    let o = coordinator.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(status.code(), Some(2), "{t}");
    assert!(
        t.contains("rank 1") && t.contains(cause),
        "the message names the lost rank and why: {t}"
    );
    assert!(
        detected < limit,
        "stopped {detected:?} after the fault: {t}"
    );
    let _ = workers[1].kill(); // a stopped process stays until killed
    for (rank, w) in workers.iter_mut().enumerate() {
        wait_exit(w, Duration::from_secs(15), &format!("worker {rank}"));
    }
}

#[test]
fn a_worker_killed_mid_run_stops_the_run_naming_the_lost_rank_and_nothing_hangs() {
    // Its connections break: the peers see it at once.
    lose_rank_one("-KILL", "lost rank 1", std::time::Duration::from_secs(7));
}

#[test]
fn a_frozen_worker_is_lost_by_heartbeat_within_the_timeout_and_nothing_hangs() {
    // SIGSTOP keeps its connections open: only the missing heartbeats (timeout 2 s) reveal it.
    lose_rank_one(
        "-STOP",
        "no heartbeat",
        std::time::Duration::from_secs(2 + 5),
    );
}

#[test]
fn launchers_environment_variables_give_the_world_size_coordinator_and_ranks() {
    use std::process::Stdio;
    let port = free_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let exe = batchlab_tests::exe();
    // torchrun-style for the coordinator's world size, Slurm- and torchrun-style for the ranks.
    let coordinator = Command::new(exe)
        .args([
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--steps",
            "20",
        ])
        .args(["--out", out.to_str().unwrap()])
        .env("WORLD_SIZE", "2")
        .env("BATCHLAB_TOKEN", "env-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each worker's data plane on a port of its own choosing (as a firewall would want).
    let data_ports = [free_port().to_string(), free_port().to_string()];
    let workers: Vec<_> = [("RANK", "1"), ("SLURM_PROCID", "0")]
        .into_iter()
        .zip(&data_ports)
        .map(|((var, rank), data_port)| {
            Command::new(exe)
                .args([
                    "worker",
                    "--listen",
                    "127.0.0.1:0",
                    "--data-port",
                    data_port,
                ])
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("BATCHLAB_TOKEN", "env-token")
                .env(var, rank)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let o = coordinator.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let timing = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(out.join("summary.json")).unwrap(),
    )
    .unwrap()["timing"]
        .clone();
    assert_eq!(
        timing.as_array().unwrap().len(),
        2,
        "two ranks reported: {timing}"
    );
    for (w, data_port) in workers.into_iter().zip(&data_ports) {
        let o = w.wait_with_output().unwrap();
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(
            t.contains(&format!("data_addr=\"127.0.0.1:{data_port}\"")),
            "{t}"
        );
    }
}

/// Child processes of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn ctrl_c_on_run_stops_it_and_leaves_no_worker_process_behind() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let mut run = Command::new(batchlab_tests::exe())
        .args([
            "run",
            "--workers",
            "2",
            "--steps",
            "100000000",
            "--set",
            "task.dim=2000",
            "--set",
            "eval_every=0",
        ])
        .args(["--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::metadata(out.join("metrics.csv")).map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let children = children_of(run.id());
    assert_eq!(children.len(), 2, "two worker processes: {children:?}");
    let sent = Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_exit(
        &mut run,
        Duration::from_secs(20),
        "batchlab run after Ctrl-C",
    );
    let o = run.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("interrupted"), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|&c| alive(c)) {
        assert!(
            Instant::now() < deadline,
            "worker processes outlived batchlab run: {children:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A straggler (`--inject-delay`) slows every step by its delay, which the other rank spends
/// waiting in the all-reduce; the numbers are those of `batchlab train`.
#[test]
fn a_straggler_slows_the_run_by_its_delay_and_changes_no_number() {
    use std::process::Stdio;
    const STEPS: u64 = 40;
    const DELAY_MS: u64 = 25;
    let port = free_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let exe = batchlab_tests::exe();
    let run = ["--steps", "40", "--set", "task.dim=50", "--batch", "16"];
    let coordinator = Command::new(exe)
        .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--workers", "2", "--out", out.to_str().unwrap()])
        .args(run)
        .env("BATCHLAB_TOKEN", "t")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let workers: Vec<_> = [("0", "0"), ("1", &DELAY_MS.to_string()[..])]
        .into_iter()
        .map(|(rank, delay)| {
            Command::new(exe)
                .args(["worker", "--coordinator", &format!("127.0.0.1:{port}")])
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--rank",
                    rank,
                    "--inject-delay",
                    delay,
                ])
                .env("BATCHLAB_TOKEN", "t")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let o = coordinator.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    let alone = dir.path().join("train");
    let mut args = vec!["train", "--out", alone.to_str().unwrap()];
    args.extend(run);
    let t = batchlab(&args);
    assert!(t.status.success(), "{}", text(&t));
    assert_eq!(
        summary(&out)["params_digest"],
        summary(&alone)["params_digest"]
    );
    assert_eq!(
        summary(&out)["final_eval_loss"],
        summary(&alone)["final_eval_loss"]
    );
    let timing = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(out.join("summary.json")).unwrap(),
    )
    .unwrap()["timing"]
        .clone();
    let of = |rank: u64, field: &str| {
        timing
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["rank"] == rank)
            .unwrap()[field]
            .as_f64()
            .unwrap()
    };
    let delayed = (STEPS * DELAY_MS) as f64 / 1e3;
    // The straggler computed for at least its delays; the other rank waited for most of them.
    assert!(of(1, "compute_s") >= delayed, "{timing}");
    assert!(of(0, "comm_s") >= 0.8 * delayed, "{timing}");
    assert!(of(0, "compute_s") < 0.5 * delayed, "{timing}");
}

#[test]
fn a_worker_refuses_to_listen_beyond_loopback_without_a_token() {
    let o = Command::new(batchlab_tests::exe())
        .args([
            "worker",
            "--coordinator",
            "127.0.0.1:9",
            "--listen",
            "0.0.0.0:0",
        ])
        .env_remove("BATCHLAB_TOKEN")
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("refusing to listen on 0.0.0.0:0 without a token")
            && t.contains("BATCHLAB_TOKEN"),
        "{t}"
    );
}

/// A self-signed certificate for `localhost` and 127.0.0.1, as (certificate, key) files.
fn self_signed(dir: &Path, name: &str) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

/// With mutual TLS on the control plane and on the data plane's TCP streams (and on gRPC
/// peer streams), a run gives `batchlab train`'s numbers; a worker without TLS, or with a
/// certificate the run's CA did not sign, is kept out with an error naming the coordinator.
#[test]
fn runs_under_mutual_tls_equal_train_and_workers_without_the_ca_s_certificate_are_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "run");
    let tls = ["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &cert];
    let alone = dir.path().join("train");
    let mut a = vec!["train", "--out", alone.to_str().unwrap()];
    a.extend(MLP);
    let o = batchlab(&a);
    assert!(o.status.success(), "{}", text(&o));
    for transport in ["tcp", "grpc"] {
        let out = dir.path().join(transport);
        let mut a = vec!["run", "--workers", "2", "--transport", transport];
        a.extend(["--out", out.to_str().unwrap()]);
        a.extend(tls);
        a.extend(MLP);
        let o = batchlab(&a);
        assert!(o.status.success(), "{transport}: {}", text(&o));
        assert_eq!(
            summary(&out)["params_digest"],
            summary(&alone)["params_digest"],
            "{transport}"
        );
    }

    // A coordinator under TLS; workers without it, or with another CA's certificate.
    let (other_cert, other_key) = self_signed(dir.path(), "other");
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let out = dir.path().join("c");
    let mut coordinator = Command::new(batchlab_tests::exe())
        .args([
            "coordinator",
            "--listen",
            &addr,
            "--workers",
            "1",
            "--steps",
            "5",
        ])
        .args(["--out", out.to_str().unwrap()])
        .args(tls)
        .env("BATCHLAB_TOKEN", "t")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let worker = |extra: &[&str]| {
        Command::new(batchlab_tests::exe())
            .args(["worker", "--coordinator", &addr, "--listen", "127.0.0.1:0"])
            .args(["--connect-timeout", "3"])
            .args(extra)
            .env("BATCHLAB_TOKEN", "t")
            .output()
            .unwrap()
    };
    let plain = worker(&[]);
    let foreign = worker(&[
        "--tls-cert",
        &other_cert,
        "--tls-key",
        &other_key,
        "--tls-ca",
        &cert,
    ]);
    for (what, o) in [
        ("without TLS", &plain),
        ("with another CA's certificate", &foreign),
    ] {
        assert!(!o.status.success(), "a worker {what} joined");
        let t = text(o);
        assert!(t.contains(&addr), "a worker {what}: {t}");
    }
    // The coordinator is unharmed: a worker with the run's certificate completes the run.
    let ok = worker(&tls);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(coordinator.wait().unwrap().success());
    assert_eq!(summary(&out)["steps"], 5);
}

/// `bench step --compare-overlap` times each worker count without and with overlap, side by
/// side, and the two runs end with the same parameters (it fails otherwise).
#[test]
fn bench_step_compares_overlap_off_and_on_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("step");
    let o = batchlab(&[
        "bench",
        "step",
        "--workers",
        "2",
        "--compare-overlap",
        "--steps",
        "4",
        "--set",
        "task.hidden=[32]",
        "--set",
        "task.data.input_dim=32",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let rows: Vec<&str> = t
        .lines()
        .filter(|l| l.trim_start().starts_with("2 "))
        .collect();
    assert_eq!(rows.len(), 2, "{t}");
    assert!(rows[0].split_whitespace().nth(1) == Some("off"), "{t}");
    assert!(rows[1].split_whitespace().nth(1) == Some("on"), "{t}");
    let digest = |r: &str| r.split_whitespace().last().unwrap().to_string();
    assert_eq!(digest(rows[0]), digest(rows[1]));
    // The goal line: the overlapped step over the larger of the computation (gradients and
    // update) and the all-reduce of the run without overlap, from the table's own columns.
    let col = |r: &str, i: usize| -> f64 { r.split_whitespace().nth(i).unwrap().parse().unwrap() };
    let (off, on) = (rows[0], rows[1]);
    let goal = (col(off, 3) + col(off, 6)).max(col(off, 4));
    let line = t
        .lines()
        .find(|l| l.starts_with("overlap goal, 2 workers:"))
        .unwrap_or_else(|| panic!("no goal line: {t}"));
    let printed: f64 = line
        .split("= ")
        .last()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let expected = col(on, 2) / goal;
    // The table's columns are rounded to 0.001 ms: a goal of a fraction of a millisecond (two
    // columns, each within 0.0005) and the step (within 0.0005) bound the ratio's error.
    let rounding = expected * (0.001 / goal + 0.0005 / col(on, 2));
    assert!(
        (printed - expected).abs() <= 0.01 + 0.002 * expected + rounding,
        "{printed} against {expected}: {t}"
    );
}
