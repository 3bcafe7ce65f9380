//! What this process refused, counted by reason: calls and connections without the run's
//! token or protocol version, messages of another run or generation, malformed and oversized
//! messages. Every refusal is logged with its sender and the count so far; a refused call or
//! message changes no state. The coordinator writes its counts into the run's summary and each
//! worker reports its own with its timing.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Why a call, connection or message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A wrong or missing token.
    Token,
    /// Another protocol version.
    Version,
    /// Another coordinator session, generation or rank than this process is in.
    OtherRun,
    /// Bytes that do not decode, or decode to something impossible.
    Malformed,
    /// Larger than the limit.
    Oversized,
    /// A failed TLS handshake (no certificate, or one the run's CA did not sign).
    Tls,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::Token,
        Reason::Version,
        Reason::OtherRun,
        Reason::Malformed,
        Reason::Oversized,
        Reason::Tls,
    ];

    /// The reason's name in logs and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Token => "token",
            Reason::Version => "version",
            Reason::OtherRun => "other_run",
            Reason::Malformed => "malformed",
            Reason::Oversized => "oversized",
            Reason::Tls => "tls",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

static COUNTS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Counts a refusal and logs it with who sent it and what was wrong; returns `why` for the
/// caller's error.
pub fn refuse(reason: Reason, from: &str, why: String) -> String {
    let n = COUNTS[reason.index()].fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(
        %from,
        reason = reason.name(),
        refused_so_far = n,
        "refused: {why}"
    );
    why
}

/// This process's refusals so far, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Wrong or missing token.
    pub token: u64,
    /// Another protocol version.
    pub version: u64,
    /// Another session, generation or rank.
    pub other_run: u64,
    /// Did not decode, or decoded to something impossible.
    pub malformed: u64,
    /// Over the size limit.
    pub oversized: u64,
    /// Failed TLS handshakes on the data plane (gRPC's are refused inside its server).
    #[serde(default)]
    pub tls: u64,
}

impl Refused {
    /// Every refusal.
    pub fn total(&self) -> u64 {
        self.token + self.version + self.other_run + self.malformed + self.oversized + self.tls
    }
}

/// The counts so far.
pub fn counts() -> Refused {
    let get = |r: Reason| COUNTS[r.index()].load(Ordering::Relaxed);
    Refused {
        token: get(Reason::Token),
        version: get(Reason::Version),
        other_run: get(Reason::OtherRun),
        malformed: get(Reason::Malformed),
        oversized: get(Reason::Oversized),
        tls: get(Reason::Tls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_counts_in_its_own_field() {
        let before = counts();
        refuse(Reason::Token, "a", "x".into());
        refuse(Reason::Oversized, "b", "y".into());
        refuse(Reason::Oversized, "b", "y".into());
        let after = counts();
        // Other tests of this process may refuse things meanwhile: at least ours counted.
        assert!(after.token > before.token);
        assert!(after.oversized >= before.oversized + 2);
        assert!(after.total() >= before.total() + 3);
    }
}
