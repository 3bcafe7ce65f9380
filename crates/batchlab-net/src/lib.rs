//! The network layer of batchlab: the only crate with tokio and tonic.
//!
//! - [`coordinator`]: rendezvous (a plain state machine), heartbeats, handing out runs,
//!   collecting metrics.
//! - [`worker`]: joins, connects to its peers, and runs training steps in lock step.
//! - [`mesh`]: the peer service and the networked executor of `batchlab-collective` plans.
//! - [`auth`]: token and protocol-version checks on every call.
//! - [`transport`]: HTTP/2 windows, frame and message limits shared by every endpoint.

pub mod auth;
pub mod coordinator;
pub mod error;
pub mod mesh;
pub mod transport;
pub mod worker;

pub use coordinator::{Coordinator, CoordinatorConfig, RunOutcome};
pub use error::{NetError, to_status};
pub use worker::{RankResult, RankTiming, WorkerConfig, run_worker};
