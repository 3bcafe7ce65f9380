//! What this process refused, counted by reason: calls and connections without the run's
//! token or protocol version, messages of another run or generation, malformed and oversized
//! messages, failed TLS handshakes. Every refusal is counted; a refused call or message changes
//! no state. The coordinator writes its counts into the run's summary and each worker reports
//! its own with its timing.
//!
//! The log is rate-limited per reason ([`Throttle`]): the first refusal is logged with its
//! sender and what was wrong, and the further ones of the same reason are summarised, at most
//! one line per [`SUMMARY_INTERVAL`] ("299 more refusals (token) in the last 10 s"), so that a
//! misconfigured client retrying in a loop does not flood the log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// The shortest time between two log lines of one reason, after its first.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// The log's rate limit for the whole process.
static THROTTLE: Mutex<Throttle> = Mutex::new(Throttle::new(SUMMARY_INTERVAL));

/// Counts a refusal and logs it with who sent it and what was wrong (or, when refusals of this
/// reason come faster than one per [`SUMMARY_INTERVAL`], sums them up in one line per
/// interval); returns `why` for the caller's error.
pub fn refuse(reason: Reason, from: &str, why: String) -> String {
    let n = COUNTS[reason.index()].fetch_add(1, Ordering::Relaxed) + 1;
    let now = Instant::now();
    let line = lock_throttle().note(reason, now);
    match line {
        Line::Detail => tracing::warn!(
            %from,
            reason = reason.name(),
            refused_so_far = n,
            "refused: {why}"
        ),
        Line::Quiet { flush_at } => {
            if let Some(at) = flush_at {
                schedule_flush(reason, at);
            }
        }
        Line::Summary { more, over } => log_summary(reason, more, over),
    }
    why
}

/// Why a service answers a call with an error. `From<Refusal> for tonic::Status` is the one
/// mapping of these to gRPC codes, and [`Refusal::is_lost`] the one reading of a code back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Counted and logged under its reason when made ([`Refusal::counted`]).
    Counted {
        /// What was wrong, by kind.
        reason: Reason,
        /// What was wrong, said to the caller.
        why: String,
    },
    /// Every place in the run is taken.
    Full(String),
    /// The caller was declared lost (silent too long): it must join again.
    Lost(String),
    /// The request does not fit the run's state now (a regroup from a past generation).
    Stale(String),
    /// The run was stopped, for the reason given.
    Stopped(String),
    /// This process cannot answer now (not in a cluster yet, or shutting down).
    Unavailable(String),
    /// A wait for a place in the run ran out.
    TimedOut(String),
}

impl Refusal {
    /// A refusal of `reason`, counted and logged with its sender `from` (see [`refuse`]).
    pub fn counted(reason: Reason, from: &str, why: String) -> Self {
        let why = refuse(reason, from, why);
        Self::Counted { reason, why }
    }

    /// Whether `status` says the caller was declared lost ([`Refusal::Lost`]).
    pub fn is_lost(status: &tonic::Status) -> bool {
        status.code() == tonic::Code::NotFound
    }
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        use tonic::Code;
        let (code, message) = match r {
            Refusal::Counted { reason, why } => {
                let code = match reason {
                    Reason::Token | Reason::Tls => Code::Unauthenticated,
                    Reason::Version => Code::FailedPrecondition,
                    Reason::OtherRun => Code::PermissionDenied,
                    Reason::Malformed => Code::InvalidArgument,
                    Reason::Oversized => Code::ResourceExhausted,
                };
                (code, why)
            }
            Refusal::Full(m) => (Code::ResourceExhausted, m),
            Refusal::Lost(m) => (Code::NotFound, m),
            Refusal::Stale(m) => (Code::FailedPrecondition, m),
            Refusal::Stopped(m) => (Code::Aborted, m),
            Refusal::Unavailable(m) => (Code::Unavailable, m),
            Refusal::TimedOut(m) => (Code::DeadlineExceeded, m),
        };
        tonic::Status::new(code, message)
    }
}

fn lock_throttle() -> std::sync::MutexGuard<'static, Throttle> {
    // The throttle's state stays consistent whatever panicked while it was held.
    THROTTLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the summary of refusals that were counted but not logged by `at`, when there is a
/// runtime to wait on (otherwise the next refusal of the reason after `at` writes it).
fn schedule_flush(reason: Reason, at: Instant) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        let summary = lock_throttle().flush(reason, Instant::now());
        if let Some(Line::Summary { more, over }) = summary {
            log_summary(reason, more, over);
        }
    });
}

fn log_summary(reason: Reason, more: u64, over: Duration) {
    tracing::warn!(
        reason = reason.name(),
        refused_so_far = COUNTS[reason.index()].load(Ordering::Relaxed),
        "{}",
        summary_line(reason, more, over)
    );
}

/// The text of a summary: `more` refusals of `reason` not logged one by one, over `over`.
pub fn summary_line(reason: Reason, more: u64, over: Duration) -> String {
    let s = if more == 1 { "" } else { "s" };
    format!(
        "refused: {more} more refusal{s} ({}) in the last {} s",
        reason.name(),
        over.as_secs_f64().round()
    )
}

/// What to log of one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// This refusal, with its sender and what was wrong.
    Detail,
    /// Nothing now; counted for a later summary. `flush_at` is set on the first refusal so
    /// held back: when the summary is due, call [`Throttle::flush`].
    Quiet {
        /// When the summary of the refusals held back is due.
        flush_at: Option<Instant>,
    },
    /// A summary: `more` refusals not logged one by one (from [`Throttle::note`], this one
    /// among them), over `over`.
    Summary {
        /// How many.
        more: u64,
        /// Since the reason's previous log line.
        over: Duration,
    },
}

/// The log's rate limit, per reason: a line with details for the first refusal (and for the
/// first after a quiet interval), then at most one summary line per interval. Pure logic: the
/// caller says what time it is.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// Per reason: when its last line was written.
    last_line: [Option<Instant>; 6],
    /// Per reason: refusals counted since then, not logged yet.
    held: [u64; 6],
}

impl Throttle {
    /// A throttle writing at most one line per reason per `interval` after the first.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_line: [None; 6],
            held: [0; 6],
        }
    }

    /// What to log of a refusal of `reason` at `now`.
    pub fn note(&mut self, reason: Reason, now: Instant) -> Line {
        let i = reason.index();
        let due = self.last_line[i]
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            self.held[i] += 1;
            let flush_at = (self.held[i] == 1).then(|| {
                self.last_line[i].expect("a line was written, or it would be due") + self.interval
            });
            return Line::Quiet { flush_at };
        }
        let line = match (self.held[i], self.last_line[i]) {
            (held, Some(last)) if held > 0 => Line::Summary {
                more: held + 1,
                over: now.saturating_duration_since(last),
            },
            _ => Line::Detail,
        };
        self.last_line[i] = Some(now);
        self.held[i] = 0;
        line
    }

    /// The summary of the refusals of `reason` held back, if there are any and the interval
    /// since the reason's last line is over at `now` (a [`Line::Summary`]); else `None`.
    pub fn flush(&mut self, reason: Reason, now: Instant) -> Option<Line> {
        let i = reason.index();
        let last = self.last_line[i]?;
        let over = now.saturating_duration_since(last);
        if self.held[i] == 0 || over < self.interval {
            return None;
        }
        let more = std::mem::take(&mut self.held[i]);
        self.last_line[i] = Some(now);
        Some(Line::Summary { more, over })
    }
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
    /// Failed TLS handshakes (gRPC and data-plane listeners).
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
    fn only_a_lost_caller_reads_as_lost_and_every_refusal_keeps_its_message() {
        let plain = |why: &str| why.to_string();
        let all = [
            Refusal::Full(plain("full")),
            Refusal::Lost(plain("lost")),
            Refusal::Stale(plain("stale")),
            Refusal::Stopped(plain("stopped")),
            Refusal::Unavailable(plain("unavailable")),
            Refusal::TimedOut(plain("timed out")),
        ]
        .into_iter()
        .chain(Reason::ALL.map(|reason| Refusal::Counted {
            reason,
            why: reason.name().to_string(),
        }));
        let mut codes = std::collections::BTreeSet::new();
        for r in all {
            let lost = matches!(r, Refusal::Lost(_));
            let why = match &r {
                Refusal::Counted { why, .. } => why.clone(),
                Refusal::Full(m)
                | Refusal::Lost(m)
                | Refusal::Stale(m)
                | Refusal::Stopped(m)
                | Refusal::Unavailable(m)
                | Refusal::TimedOut(m) => m.clone(),
            };
            let status = tonic::Status::from(r);
            assert_eq!(Refusal::is_lost(&status), lost, "{status:?}");
            assert_eq!(status.message(), why);
            codes.insert(status.code() as i32);
        }
        // The codes callers check: a wrong token, another version, another run.
        let code = |reason| {
            tonic::Status::from(Refusal::Counted {
                reason,
                why: String::new(),
            })
            .code()
        };
        assert_eq!(code(Reason::Token), tonic::Code::Unauthenticated);
        assert_eq!(code(Reason::Version), tonic::Code::FailedPrecondition);
        assert_eq!(code(Reason::OtherRun), tonic::Code::PermissionDenied);
        assert!(codes.len() >= 7, "{codes:?}");
    }

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

    /// 300 refusals in a burst: one line with details, then one summary of the other 299 once
    /// the interval is over; the next burst is summed up after the next interval, and a
    /// refusal after a quiet interval is logged with details again.
    #[test]
    fn a_burst_of_refusals_is_logged_once_then_summed_up_per_interval() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut t = Throttle::new(s(10));
        assert_eq!(t.note(Reason::Token, t0), Line::Detail);
        let mut lines = Vec::new();
        for k in 1..300u32 {
            lines.push(t.note(Reason::Token, t0 + Duration::from_millis(u64::from(k))));
        }
        // Only the first one held back asks for a flush, at the end of the interval.
        assert_eq!(
            lines[0],
            Line::Quiet {
                flush_at: Some(t0 + s(10))
            }
        );
        assert!(
            lines[1..]
                .iter()
                .all(|l| *l == Line::Quiet { flush_at: None })
        );
        // Too early: nothing to write yet.
        assert_eq!(t.flush(Reason::Token, t0 + s(9)), None);
        assert_eq!(
            t.flush(Reason::Token, t0 + s(10)),
            Some(Line::Summary {
                more: 299,
                over: s(10)
            })
        );
        // Flushed: a second flush has nothing to say.
        assert_eq!(t.flush(Reason::Token, t0 + s(11)), None);
        // Two more within the next interval: held back until it is over; the next refusal
        // after it (its flush never ran) writes the summary, itself included.
        assert_eq!(
            t.note(Reason::Token, t0 + s(12)),
            Line::Quiet {
                flush_at: Some(t0 + s(20))
            }
        );
        assert_eq!(
            t.note(Reason::Token, t0 + s(13)),
            Line::Quiet { flush_at: None }
        );
        assert_eq!(
            t.note(Reason::Token, t0 + s(25)),
            Line::Summary {
                more: 3,
                over: s(15)
            }
        );
        // Quiet for an interval: the next one is logged in full again.
        assert_eq!(t.note(Reason::Token, t0 + s(40)), Line::Detail);
    }

    #[test]
    fn each_reason_has_its_own_rate_limit() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.note(Reason::Token, t0), Line::Detail);
        assert!(matches!(t.note(Reason::Token, t0), Line::Quiet { .. }));
        // Another reason's first refusal is logged in full despite the token burst.
        assert_eq!(t.note(Reason::Malformed, t0), Line::Detail);
        assert!(matches!(t.note(Reason::Malformed, t0), Line::Quiet { .. }));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            t.flush(Reason::Tls, later),
            None,
            "nothing was refused for TLS"
        );
        assert!(matches!(
            t.flush(Reason::Malformed, later),
            Some(Line::Summary { more: 1, .. })
        ));
    }

    #[test]
    fn a_summary_says_how_many_of_which_reason_over_how_long() {
        assert_eq!(
            summary_line(Reason::Token, 299, Duration::from_millis(10_020)),
            "refused: 299 more refusals (token) in the last 10 s"
        );
        assert_eq!(
            summary_line(Reason::Tls, 1, Duration::from_secs(12)),
            "refused: 1 more refusal (tls) in the last 12 s"
        );
    }
}
