//! Helpers shared by the binary's integration tests.

use std::process::{Command, Output};

/// Runs the `batchlab` binary with `args` and waits for it.
pub fn batchlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_batchlab"))
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

/// A loopback port that was free a moment ago.
#[allow(dead_code)] // not every test binary uses every helper
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every number a study folder holds (each trial's `metrics.csv`, `trials.json`,
/// `analysis.json`, `probe.json`), by path relative to `dir`, sorted.
#[allow(dead_code)]
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
#[allow(dead_code)]
pub fn worker(addr: &str, connect_timeout: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_batchlab"));
    c.args(["worker", "--coordinator", addr, "--token", "t"])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--connect-timeout", &connect_timeout.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    c
}
