//! Why a worker stops what it is doing, and the one way every wait watches for it.
//!
//! The heartbeat task writes an [`Abort`] into a `watch` channel; every long wait of a session
//! (an all-reduce, a long poll, a straggler's delay) races it, so a frozen peer or a new
//! generation ends the wait at once, with a typed error that says whether the run can go on.

use tokio::sync::watch;

use crate::NetError;

/// Why a worker stops what it is doing (the heartbeats say it; every wait watches for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Abort {
    /// The coordinator ended the task, for this reason.
    Task(String),
    /// A new generation forms: leave this one and regroup.
    Regroup {
        /// The generation forming.
        generation: u64,
    },
    /// The coordinator stopped answering, or declared this worker lost.
    LostCoordinator(String),
}

impl Abort {
    /// The error a wait that was cut short returns.
    pub(crate) fn error(&self) -> NetError {
        match self {
            Abort::Task(reason) => NetError::Aborted(reason.clone()),
            Abort::Regroup { generation } => NetError::Regroup {
                generation: *generation,
            },
            Abort::LostCoordinator(why) => NetError::LostCoordinator(why.clone()),
        }
    }

    pub(crate) fn lost(a: &Option<Abort>) -> bool {
        matches!(a, Some(Abort::LostCoordinator(_)))
    }
}

/// What the heartbeats say to every wait of a session.
pub(crate) type AbortWatch = watch::Receiver<Option<Abort>>;

/// Runs `work` unless the coordinator aborts the task first (a frozen peer keeps its streams
/// open: the abort, from the heartbeats, ends the wait before any receive deadline does).
pub(crate) async fn unless_aborted<T>(
    work: impl std::future::Future<Output = Result<T, NetError>>,
    abort: &AbortWatch,
) -> Result<T, NetError> {
    let mut watch = abort.clone();
    tokio::select! {
        r = work => r,
        m = watch.wait_for(Option::is_some) => Err(aborted(m.ok().as_deref())),
    }
}

/// The error of a wait the heartbeats cut short (the channel closes only with the session).
pub(crate) fn aborted(a: Option<&Option<Abort>>) -> NetError {
    match a {
        Some(Some(a)) => a.error(),
        _ => NetError::LostCoordinator("the session ended".into()),
    }
}
