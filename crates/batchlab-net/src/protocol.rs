//! What the coordinator asks of its workers, typed, and its protobuf form.
//!
//! The rest of batchlab speaks in [`RunOrder`] and [`BenchOrder`]: a run's configuration is a
//! [`TrainConfig`], the reduction a [`Reduction`], the transport a [`Transport`]. They become
//! `batchlab-proto` messages here, and here alone are the messages' enums and CBOR fields read
//! back, each refused with the field and what is accepted when it does not fit. A run is named
//! by a digest of its configuration and seeds ([`RunOrder::run_id`]); a checkpoint of another
//! run is recognised by that name.

use batchlab_collective::Algorithm;
use batchlab_core::driver::{ReduceMode, Reduction};
use batchlab_core::train::TrainConfig;
pub use batchlab_proto::PROTOCOL_VERSION;
/// The generated messages and services: the rest of the crate reaches `batchlab-proto`
/// through this module alone.
pub(crate) use batchlab_proto::v1 as pb;

use crate::NetError;

/// How collective payloads travel between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The data plane: Unix sockets between workers on one host, TCP between hosts.
    #[default]
    Auto,
    /// The data plane on TCP only (as Gloo's and MPI's TCP transports).
    Tcp,
    /// The `Peer.Exchange` gRPC streams (about half the bandwidth).
    Grpc,
}

impl Transport {
    /// The name in flags and outputs.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Tcp => "tcp",
            Transport::Grpc => "grpc",
        }
    }

    /// Whether workers on one host may use Unix sockets (the coordinator tells them at join).
    pub fn unix_sockets(self) -> bool {
        self == Transport::Auto
    }

    fn to_wire(self) -> pb::Transport {
        match self {
            Transport::Auto | Transport::Tcp => pb::Transport::Tcp,
            Transport::Grpc => pb::Transport::Grpc,
        }
    }

    fn from_wire(v: i32) -> Result<Self, NetError> {
        match pb::Transport::try_from(v) {
            Ok(pb::Transport::Tcp) => Ok(Transport::Tcp),
            Ok(pb::Transport::Grpc) => Ok(Transport::Grpc),
            _ => Err(refused("transport", v, "TCP (1) or GRPC (2)")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn refused(field: &str, v: i32, expected: &str) -> NetError {
    NetError::Config(format!(
        "{field} = {v} in the coordinator's request: expected {expected}"
    ))
}

fn algorithm_to_wire(a: Algorithm) -> pb::Algorithm {
    match a {
        Algorithm::Ring => pb::Algorithm::Ring,
        Algorithm::Tree => pb::Algorithm::Tree,
        Algorithm::Rhd => pb::Algorithm::Rhd,
        Algorithm::Centralized => pb::Algorithm::Centralized,
    }
}

fn algorithm_from_wire(v: i32) -> Result<Algorithm, NetError> {
    match pb::Algorithm::try_from(v) {
        Ok(pb::Algorithm::Ring) => Ok(Algorithm::Ring),
        Ok(pb::Algorithm::Tree) => Ok(Algorithm::Tree),
        Ok(pb::Algorithm::Rhd) => Ok(Algorithm::Rhd),
        Ok(pb::Algorithm::Centralized) => Ok(Algorithm::Centralized),
        _ => Err(refused(
            "algorithm",
            v,
            "RING (1), TREE (2), RHD (3) or CENTRALIZED (4)",
        )),
    }
}

fn reduce_to_wire(m: ReduceMode) -> pb::Reduce {
    match m {
        ReduceMode::Exact => pb::Reduce::Exact,
        ReduceMode::Fast => pb::Reduce::Fast,
    }
}

fn reduce_from_wire(v: i32) -> Result<ReduceMode, NetError> {
    match pb::Reduce::try_from(v) {
        Ok(pb::Reduce::Exact) => Ok(ReduceMode::Exact),
        Ok(pb::Reduce::Fast) => Ok(ReduceMode::Fast),
        _ => Err(refused("reduce", v, "EXACT (1) or FAST (2)")),
    }
}

/// A training run as the coordinator hands it to every worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOrder {
    /// The run's configuration.
    pub config: TrainConfig,
    /// Empty: one run. Otherwise a seed-mean group, one replica per seed.
    pub seeds: Vec<u64>,
    /// How steps are reduced.
    pub reduction: Reduction,
    /// How collective payloads travel.
    pub transport: Transport,
    /// Deadline for any one receive from a peer, in milliseconds (0: the mesh's default).
    pub peer_timeout_ms: u64,
    /// Rank 0 reports the final parameters (every member's, in member order).
    pub return_params: bool,
    /// Rank 0 sends the run's state every this many steps (0: never).
    pub checkpoint_every: u64,
    /// A checkpoint's run state (CBOR) to start from (empty: step 0); set by the coordinator.
    pub(crate) resume: Vec<u8>,
    /// Elastic growth, on the coordinator only (workers never see it): keep about this many
    /// samples of the step's batch per worker, admitting waiting joiners as the batch grows
    /// (0: admit every joiner at once, up to `--max-workers`).
    pub batch_per_worker: u64,
}

impl RunOrder {
    /// A run of `config` (a group over `seeds` when not empty) with `reduction`, on the
    /// default transport, without parameters or checkpoints.
    pub fn new(config: TrainConfig, seeds: Vec<u64>, reduction: Reduction) -> Self {
        Self {
            config,
            seeds,
            reduction,
            transport: Transport::default(),
            peer_timeout_ms: 0,
            return_params: false,
            checkpoint_every: 0,
            resume: Vec::new(),
            batch_per_worker: 0,
        }
    }

    /// The run's name: a digest of its configuration and seeds (16 hex digits). A checkpoint
    /// carries it; only a run of the same name resumes from it.
    pub fn run_id(&self) -> String {
        run_id(&self.config, &self.seeds)
    }

    pub(crate) fn to_wire(&self) -> pb::RunSpec {
        pb::RunSpec {
            config: cbor(&self.config),
            allreduce: algorithm_to_wire(self.reduction.algorithm).into(),
            reduce: reduce_to_wire(self.reduction.mode).into(),
            chunk_bytes: self.reduction.chunk_bytes,
            peer_timeout_ms: self.peer_timeout_ms,
            seeds: self.seeds.clone(),
            return_params: self.return_params,
            transport: self.transport.to_wire().into(),
            overlap: self.reduction.overlap,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume.clone(),
        }
    }

    pub(crate) fn from_wire(spec: &pb::RunSpec) -> Result<Self, NetError> {
        let config: TrainConfig = crate::decode(&spec.config)
            .map_err(|e| NetError::Config(format!("the run's configuration: {e}")))?;
        Ok(Self {
            config,
            seeds: spec.seeds.clone(),
            reduction: Reduction {
                mode: reduce_from_wire(spec.reduce)?,
                algorithm: algorithm_from_wire(spec.allreduce)?,
                chunk_bytes: spec.chunk_bytes,
                overlap: spec.overlap,
            },
            transport: Transport::from_wire(spec.transport)?,
            peer_timeout_ms: spec.peer_timeout_ms,
            return_params: spec.return_params,
            checkpoint_every: spec.checkpoint_every,
            resume: spec.resume.clone(),
            batch_per_worker: 0,
        })
    }
}

/// The name of the run of `config` over `seeds` (see [`RunOrder::run_id`]).
pub fn run_id(config: &TrainConfig, seeds: &[u64]) -> String {
    let mut bytes = cbor(config);
    bytes.extend(cbor(&seeds));
    batchlab_core::train::digest(&bytes)
}

fn cbor<T: serde::Serialize>(x: &T) -> Vec<u8> {
    crate::encode(x)
}

/// One operation of an all-reduce benchmark: `warmup` untimed then `iters` timed all-reduces
/// of `bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchOp {
    /// Buffer size in bytes.
    pub bytes: u64,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Untimed iterations first.
    pub warmup: u32,
    /// Timed iterations.
    pub iters: u32,
}

/// An all-reduce benchmark as the coordinator hands it to every worker: the ops in order, on
/// integer-valued inputs whose exact sum is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOrder {
    /// The operations, in order.
    pub ops: Vec<BenchOp>,
    /// Exact (i64 elements, wrapping add) or fast (f32 elements).
    pub reduce: ReduceMode,
    /// Largest message piece in bytes.
    pub chunk_bytes: u64,
    /// Deadline for any one receive from a peer, in milliseconds (0: the mesh's default).
    pub peer_timeout_ms: u64,
    /// Check every timed iteration's result against the exact sum (else none).
    pub check_all: bool,
    /// Varies the input pattern between benchmarks.
    pub seed: u64,
    /// Ranks taking part, in plan order (empty: all); the others sit it out.
    pub members: Vec<u32>,
    /// Record the phases of every k-th timed iteration (0: none).
    pub trace_every: u32,
    /// Test hook: this rank corrupts one element of every result it checks.
    pub corrupt_rank: Option<u32>,
    /// How payloads travel.
    pub transport: Transport,
}

impl BenchOrder {
    pub(crate) fn to_wire(&self) -> pb::BenchSpec {
        pb::BenchSpec {
            ops: self
                .ops
                .iter()
                .map(|o| pb::BenchOp {
                    bytes: o.bytes,
                    algorithm: algorithm_to_wire(o.algorithm).into(),
                    warmup: o.warmup,
                    iters: o.iters,
                })
                .collect(),
            reduce: reduce_to_wire(self.reduce).into(),
            chunk_bytes: self.chunk_bytes,
            peer_timeout_ms: self.peer_timeout_ms,
            check_all: self.check_all,
            seed: self.seed,
            members: self.members.clone(),
            trace_every: self.trace_every,
            corrupt_rank: self.corrupt_rank.map_or(0, |r| r + 1),
            transport: self.transport.to_wire().into(),
        }
    }

    pub(crate) fn from_wire(spec: &pb::BenchSpec) -> Result<Self, NetError> {
        Ok(Self {
            ops: spec
                .ops
                .iter()
                .map(|o| {
                    Ok(BenchOp {
                        bytes: o.bytes,
                        algorithm: algorithm_from_wire(o.algorithm)?,
                        warmup: o.warmup,
                        iters: o.iters,
                    })
                })
                .collect::<Result<_, NetError>>()?,
            reduce: reduce_from_wire(spec.reduce)?,
            chunk_bytes: spec.chunk_bytes,
            peer_timeout_ms: spec.peer_timeout_ms,
            check_all: spec.check_all,
            seed: spec.seed,
            members: spec.members.clone(),
            trace_every: spec.trace_every,
            corrupt_rank: spec.corrupt_rank.checked_sub(1),
            transport: Transport::from_wire(spec.transport)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_survive_the_wire_and_bad_enums_are_named() {
        let mut run = RunOrder::new(
            TrainConfig {
                lr: 0.25,
                target_loss: Some(f64::MIN_POSITIVE),
                ..TrainConfig::default()
            },
            vec![3, 1],
            Reduction {
                mode: ReduceMode::Exact,
                algorithm: Algorithm::Rhd,
                chunk_bytes: 777,
                overlap: true,
            },
        );
        run.transport = Transport::Grpc;
        run.checkpoint_every = 9;
        assert_eq!(RunOrder::from_wire(&run.to_wire()).unwrap(), run);
        let mut wire = run.to_wire();
        wire.reduce = 7;
        let e = RunOrder::from_wire(&wire).unwrap_err().to_string();
        assert!(
            e.contains("reduce = 7") && e.contains("EXACT (1) or FAST (2)"),
            "{e}"
        );
        wire.reduce = 0;
        assert!(
            RunOrder::from_wire(&wire).is_err(),
            "unspecified is refused"
        );
        let bench = BenchOrder {
            ops: vec![BenchOp {
                bytes: 1024,
                algorithm: Algorithm::Centralized,
                warmup: 1,
                iters: 2,
            }],
            reduce: ReduceMode::Fast,
            chunk_bytes: 64,
            peer_timeout_ms: 5,
            check_all: true,
            seed: 4,
            members: vec![1, 0],
            trace_every: 3,
            corrupt_rank: Some(0),
            transport: Transport::Tcp,
        };
        assert_eq!(BenchOrder::from_wire(&bench.to_wire()).unwrap(), bench);
    }

    #[test]
    fn a_run_is_named_by_its_configuration_and_seeds() {
        let cfg = TrainConfig::default();
        let id = run_id(&cfg, &[]);
        assert_eq!(id.len(), 16);
        assert_eq!(id, run_id(&cfg.clone(), &[]));
        assert_ne!(id, run_id(&cfg, &[0]));
        let other = TrainConfig {
            lr: cfg.lr * (1.0 + f64::EPSILON),
            ..cfg.clone()
        };
        assert_ne!(id, run_id(&other, &[]));
    }
}
