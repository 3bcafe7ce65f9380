//! The network layer of batchlab: the only crate with tokio and tonic.
//!
//! - [`protocol`]: what the coordinator asks of its workers, typed ([`RunOrder`],
//!   [`BenchOrder`]), and its protobuf form.
//! - [`coordinator`]: rendezvous (a plain state machine), heartbeats, handing out runs; a run's
//!   reports are collected by another plain state machine (`collect.rs`).
//! - [`worker`]: joins, connects to its peers, and executes each run's
//!   `batchlab_core::driver::RunDriver` over the mesh; `abort.rs` is how every wait of a
//!   session is cut short.
//! - [`mod@bench`]: the all-reduce benchmark a worker runs: timed, checked collectives.
//! - [`dataplane`]: collective payloads on plain TCP streams (the default transport).
//! - [`mesh`]: the peer service and the networked executor of `batchlab-collective` plans
//!   (over `wire.rs`'s element types).
//! - [`auth`]: token and protocol-version checks on every call.
//! - [`refused`]: what this process refused, counted by reason.
//! - [`tls`]: optional mutual TLS for the control plane and the data plane's TCP streams.
//! - [`transport`]: HTTP/2 windows, frame and message limits shared by every endpoint.

mod abort;
pub mod auth;
pub mod bench;
mod collect;
pub mod coordinator;
pub mod dataplane;
pub mod error;
pub mod mesh;
pub mod protocol;
pub mod refused;
pub mod tls;
pub mod transport;
mod wire;
pub mod worker;

#[cfg(test)]
mod fuzz_tests;

pub use coordinator::{Checkpoint, Coordinator, CoordinatorConfig, RunOutcome};
pub use error::NetError;
pub use protocol::{BenchOp, BenchOrder, RunOrder, Transport};
pub use worker::{RankResult, RankTiming, WorkerConfig, run_worker};

/// Encodes a report payload (a metrics row, a rank's result) as CBOR, which keeps NaN and
/// infinities exactly where JSON would turn them into `null`.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

/// Decodes a payload written by [`encode`].
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_keep_non_finite_numbers() {
        let v = (
            f64::NAN,
            f64::INFINITY,
            Some(f64::NEG_INFINITY),
            None::<f64>,
            0.1_f64,
        );
        let back: (f64, f64, Option<f64>, Option<f64>, f64) =
            super::decode(&super::encode(&v)).unwrap();
        assert!(back.0.is_nan());
        assert_eq!(
            (back.1, back.2, back.3, back.4),
            (f64::INFINITY, Some(f64::NEG_INFINITY), None, 0.1)
        );
        assert!(super::decode::<f64>(b"\xff").is_err());
    }
}
