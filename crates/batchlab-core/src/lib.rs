//! The numeric core of batchlab: everything a data-parallel training step needs that is not
//! networking.
//!
//! - [`task`]: the [`Task`] contract (model + data) and the [`tasks`] themselves.
//! - [`sampler`]: which samples make up step `t`'s global batch, and which worker computes what.
//! - [`batching`]: the batch of every step (constant, or a schedule: steps, a ramp, or
//!   following the noise scale).
//! - [`optim`], [`schedule`]: PyTorch-convention optimizers, learning-rate schedules and scaling
//!   rules.
//! - [`estimate`]: gradient noise scale and sharpness estimators.
//! - [`theory`]: closed forms of the noisy quadratic model.
//! - [`exact`]: the order-independent (fixed-point) reduction that makes a run bit-identical on
//!   any number of workers.
//! - [`train`]: the run's configuration, the replica (state every rank holds identically) and
//!   a rank's share of a step.
//! - [`driver`]: one rank's part of a run, sequenced without I/O ([`driver::RunDriver`]), its
//!   single-process executor ([`driver::Trainer`]) and an in-memory cluster of N ranks with
//!   scripted faults ([`driver::memory`]).
//! - [`group`]: several seeds' runs in lock step, ended on their mean evaluation loss.
//! - [`stats`]: order statistics (medians, quantiles), each convention named once.
//!
//! This crate does no I/O beyond reading a dataset file it is handed, and never spawns threads
//! or sockets.

pub mod batching;
pub mod driver;
pub mod error;
pub mod estimate;
pub mod exact;
pub mod footprint;
pub mod group;
pub mod optim;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod stats;
pub mod task;
pub mod tasks;
pub mod theory;
pub mod train;
pub mod vec;

pub use error::ConfigError;
pub use task::{BatchStats, ClosedForm, Evaluation, Scratch, Task};
