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
