//! Elastic membership across real worker processes: workers lost and added mid-run, and the
//! run's numbers equal those of `batchlab train` in one process.

use batchlab_tests::{batchlab, free_port, text};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A 400-step MLP run with momentum, evaluations and sharpness: every part of a replica's
/// state matters when it moves to another worker.
const RUN: &[&str] = &[
    "--task",
    "mlp",
    "--set",
    "task.hidden=[16]",
    "--set",
    "task.data.input_dim=24",
    "--set",
    "task.data.classes=4",
    "--set",
    "task.data.train_size=1024",
    "--set",
    "task.data.eval_size=256",
    "--set",
    "optimizer.kind=\"momentum\"",
    "--set",
    "optimizer.momentum=0.9",
    "--batch",
    "48",
    "--micro",
    "8",
    "--lr",
    "0.05",
    "--steps",
    "400",
    "--set",
    "eval_every=25",
    "--set",
    "sharpness_every=100",
];

/// Milliseconds each worker adds to every step, so that faults land mid-run.
const DELAY: &str = "6";

struct Elastic {
    dir: tempfile::TempDir,
    addr: String,
    coordinator: Child,
    workers: Vec<Child>,
}

impl Elastic {
    /// A coordinator for `workers` workers with `flags` (elastic ones), and the workers.
    fn start(workers: usize, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("coordinator.log")).unwrap();
        let coordinator = Command::new(batchlab_tests::exe())
            .args(["coordinator", "--listen", &addr, "--token", "t"])
            .args(["--workers", &workers.to_string()])
            .args(["--heartbeat-timeout-ms", "1000"])
            .args(flags)
            .args(RUN)
            .args(["--out", dir.path().join("run").to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut e = Self {
            dir,
            addr,
            coordinator,
            workers: Vec::new(),
        };
        for _ in 0..workers {
            e.add_worker();
        }
        e
    }

    fn add_worker(&mut self) {
        let n = self.workers.len();
        let log = std::fs::File::create(self.dir.path().join(format!("worker{n}.log"))).unwrap();
        let w = batchlab_tests::worker(&self.addr, 20, &["--inject-delay", DELAY])
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push(w);
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Waits until the run has written `rows` metrics rows.
    fn wait_rows(&self, rows: usize) {
        let start = Instant::now();
        let metrics = self.out().join("metrics.csv");
        while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < rows {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} rows never came:\n{}",
                rows,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self, i: usize) {
        let _ = self.workers[i].kill();
        let _ = self.workers[i].wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap_or_default()
    }

    /// Waits for the coordinator (up to a minute) and returns its exit code.
    fn finish(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.coordinator.try_wait().unwrap() {
                return s.code();
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.coordinator.kill();
                panic!("the coordinator still runs after a minute:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Elastic {
    fn drop(&mut self) {
        let _ = self.coordinator.kill();
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The same run in one process: its summary and metrics rows.
fn alone(dir: &Path) -> (serde_json::Value, String) {
    let out = dir.join("train");
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend(RUN);
    let t = batchlab(&args);
    assert!(t.status.success(), "{}", text(&t));
    read(&out)
}

fn read(out: &Path) -> (serde_json::Value, String) {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rows = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    (s, rows)
}

/// Checks that the elastic run ended like `batchlab train`: same summary, same rows.
fn assert_equals_train(e: &Elastic) -> serde_json::Value {
    let (want, want_rows) = alone(e.dir.path());
    let (got, got_rows) = read(&e.out());
    assert_eq!(got["summary"], want["summary"], "{}", e.log());
    assert_eq!(got_rows.lines().count(), 401, "a header and 400 rows");
    assert!(got_rows == want_rows, "the rows differ from train's");
    got
}

#[test]
fn a_worker_killed_mid_run_is_survived_and_the_numbers_equal_train() {
    let mut e = Elastic::start(3, &["--min-workers", "2"]);
    e.wait_rows(60);
    e.kill(1);
    assert_eq!(e.finish(), Some(0), "{}", e.log());
    let log = e.log();
    // Ranks follow join order, which need not be the order the workers were started in.
    assert!(log.contains("lost rank "), "{log}");
    assert!(log.contains("generation 2 formed with 2 workers"), "{log}");
    let got = assert_equals_train(&e);
    // The survivors finished it: two final members, plus nothing from the lost one.
    assert_eq!(got["timing"].as_array().unwrap().len(), 2, "{got}");
    for i in [0, 2] {
        assert!(e.workers[i].wait().unwrap().success());
    }
}

#[test]
fn a_worker_joining_mid_run_takes_the_state_from_a_peer_and_the_numbers_equal_train() {
    let mut e = Elastic::start(2, &["--max-workers", "3"]);
    e.wait_rows(60);
    e.add_worker();
    assert_eq!(e.finish(), Some(0), "{}", e.log());
    let log = e.log();
    assert!(log.contains("generation 2 formed with 3 workers"), "{log}");
    let got = assert_equals_train(&e);
    assert_eq!(got["timing"].as_array().unwrap().len(), 3, "{got}");
    let joiner = std::fs::read_to_string(e.dir.path().join("worker2.log")).unwrap();
    assert!(
        joiner.contains("took the run's state from rank"),
        "{joiner}"
    );
    for w in &mut e.workers {
        assert!(w.wait().unwrap().success());
    }
}

#[test]
fn below_the_minimum_the_run_pauses_and_a_new_worker_lets_it_finish_unchanged() {
    let mut e = Elastic::start(2, &["--min-workers", "2", "--max-workers", "3"]);
    e.wait_rows(60);
    e.kill(0);
    // Paused: one worker left of the two it needs.
    let start = Instant::now();
    while !e.log().contains("paused: 1 workers left") {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", e.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    e.add_worker();
    assert_eq!(e.finish(), Some(0), "{}", e.log());
    assert!(e.log().contains("generation 2 formed with 2 workers"));
    assert_equals_train(&e);
}

#[test]
fn paused_below_the_minimum_past_its_timeout_the_run_stops_saying_why() {
    let mut e = Elastic::start(
        2,
        &[
            "--min-workers",
            "2",
            "--max-workers",
            "3",
            "--pause-timeout",
            "2",
            "--checkpoint-every",
            "20",
        ],
    );
    e.wait_rows(50);
    e.kill(1);
    let killed = Instant::now();
    let code = e.finish();
    let log = e.log();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("fewer than --min-workers 2 workers; stopping"),
        "{log}"
    );
    // Lost after the 1 s heartbeat timeout, then 2 s paused.
    assert!(killed.elapsed() < Duration::from_secs(15), "{log}");
    // It stopped with its state saved, and says where.
    assert!(e.out().join("checkpoint.cbor").exists());
    assert!(
        log.contains("is saved in") && log.contains("checkpoint.cbor"),
        "{log}"
    );
}

/// `batchlab coordinator` saves the run's state every `--checkpoint-every` steps; killed
/// (SIGKILL) and started again with the same command, it resumes from the checkpoint, its
/// workers join it by themselves, and the rows and summary equal `batchlab train`'s.
#[test]
fn a_coordinator_killed_mid_run_resumes_from_its_checkpoint_with_the_numbers_of_train() {
    let mut e = Elastic::start(2, &["--checkpoint-every", "40"]);
    let checkpoint = e.out().join("checkpoint.cbor");
    e.wait_rows(150);
    assert!(checkpoint.exists(), "no checkpoint after 150 rows");
    let _ = e.coordinator.kill();
    let _ = e.coordinator.wait();
    let rows_at_kill = std::fs::read_to_string(e.out().join("metrics.csv"))
        .unwrap()
        .lines()
        .count();
    // The same command again, on the same port and folder.
    let log = std::fs::File::create(e.dir.path().join("coordinator2.log")).unwrap();
    e.coordinator = Command::new(batchlab_tests::exe())
        .args(["coordinator", "--listen", &e.addr, "--token", "t"])
        .args(["--workers", "2", "--heartbeat-timeout-ms", "1000"])
        .args(["--checkpoint-every", "40"])
        .args(RUN)
        .args(["--out", e.out().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(e.finish(), Some(0), "{}", e.log());
    let said = std::fs::read_to_string(e.dir.path().join("coordinator2.log")).unwrap();
    let step: usize = said
        .split("resuming from the checkpoint at step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume in: {said}"));
    assert!(
        step.is_multiple_of(40) && step > 0 && step <= rows_at_kill,
        "{step} {rows_at_kill}"
    );
    assert_equals_train(&e);
    assert!(
        !checkpoint.exists(),
        "the checkpoint outlived the finished run"
    );
    for w in &mut e.workers {
        assert!(w.wait().unwrap().success());
    }
}
