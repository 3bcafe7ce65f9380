//! batchlab's cross-process and cross-host tests: coordinators and workers as real processes
//! (one machine's loopback, Unix sockets, a stand-in Slurm), and the architecture's map. This
//! library holds what they share with the binary's own tests (`crates/batchlab-cli/tests/`);
//! each `*.rs` beside it is one test binary.
//!
//! The binary is the one `cargo test --workspace` builds for the binary's own tests before it
//! runs any test (the workspace's test profile, in `target/<profile>/`, beside every test
//! executable's `deps/` folder).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `batchlab` binary under test.
pub fn exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        // target/<profile>/deps/<test> → target/<profile>/batchlab
        let me = std::env::current_exe().expect("the test's own path");
        let dir = me
            .parent()
            .and_then(Path::parent)
            .expect("a test executable in target/<profile>/deps");
        let bin = dir.join(format!("batchlab{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.exists(),
            "{} is missing: run these tests with `cargo test --workspace`, which builds it first",
            bin.display()
        );
        bin
    })
}

/// Runs the `batchlab` binary with `args` and waits for it.
pub fn batchlab(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .output()
        .expect("run batchlab")
}

/// Standard output and standard error together, for messages and assertions.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A loopback port that was free a moment ago, below the kernel's ephemeral range: a port
/// handed out for `:0` (a worker's, a client's) can never take it between this check and the
/// caller's bind, which is how a port from `:0` itself was lost to concurrent tests.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.max(10_001));
    // A random start: concurrent tests of one binary (and of others) spread over the range.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let start = h.finish();
    let span = u64::from(hi - lo);
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}

/// Every number a study folder holds (each trial's `metrics.csv`, `trials.json`,
/// `analysis.json`, `probe.json`), by path relative to `dir`, sorted.
pub fn study_numbers(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if ["metrics.csv", "trials.json", "analysis.json", "probe.json"]
                .contains(&p.file_name().unwrap().to_str().unwrap())
            {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                files.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// A `batchlab worker` command for the coordinator at `addr` with token `t`, listening on
/// loopback, logging warnings, keeping to `connect_timeout` seconds, with `extra` flags; the
/// caller sets its output and spawns it.
pub fn worker(addr: &str, connect_timeout: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(exe());
    c.args(["worker", "--coordinator", addr, "--token", "t"])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--connect-timeout", &connect_timeout.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    c
}

/// The values of column `name` of a CSV text (a run's metrics.csv), parsed.
pub fn csv_column<T: std::str::FromStr>(csv_text: &str, name: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    let mut rows = csv::Reader::from_reader(csv_text.as_bytes());
    let col = rows
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    rows.records()
        .map(|r| r.unwrap()[col].parse().unwrap())
        .collect()
}
