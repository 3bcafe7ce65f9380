//! Errors of the network layer.

use std::time::Duration;

/// What went wrong between processes. Every message names the peer, the address and what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A call was refused for authentication or protocol reasons.
    #[error("{0}")]
    Refused(String),
    /// A peer or the coordinator could not be reached.
    #[error("cannot reach {what} at {addr}: {}", chain(source))]
    Unreachable {
        /// Who: `coordinator`, `rank 3`.
        what: String,
        /// Its address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A wait ran past its deadline.
    #[error("timed out after {:.1}s waiting for {what}", .after.as_secs_f64())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A peer vanished or sent something other than what the protocol expects.
    #[error("{0}")]
    Peer(String),
    /// An RPC failed.
    #[error("{what}: {status}")]
    Rpc {
        /// Which call, to whom.
        what: String,
        /// The status returned.
        status: tonic::Status,
    },
    /// The run's configuration was refused.
    #[error("invalid run configuration: {0}")]
    Config(String),
    /// The run was aborted by the coordinator.
    #[error("run aborted: {0}")]
    Aborted(String),
    /// The coordinator is forming a new generation: this one's work stops, and an elastic run
    /// goes on in the next.
    #[error("a new generation is forming (generation {generation})")]
    Regroup {
        /// The generation forming.
        generation: u64,
    },
    /// The coordinator stopped answering, or declared this worker lost.
    #[error("lost the coordinator: {0}")]
    LostCoordinator(String),
    /// Local I/O (binding a port).
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl NetError {
    /// An RPC failure of `what`.
    pub fn rpc(what: impl Into<String>, status: tonic::Status) -> Self {
        Self::Rpc {
            what: what.into(),
            status,
        }
    }
}

/// `e` and the errors it wraps, each once (tonic's "transport error" says nothing without the
/// certificate or connection error below it).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = e.source();
    }
    out
}
