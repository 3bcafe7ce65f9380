//! batchlab's experiments, as pure code: which training runs an experiment needs, what their
//! results say (fits of the critical batch size, best rates), and the reports. This crate never
//! opens a socket; the binary executes the runs it plans, locally or on a cluster.
//!
//! - [`study`]: the records of an experiment's trials, and their layout on disk.
//! - [`fit`]: `S = S_min(1 + B_crit/B)`, `E = E_min(1 + B/B_crit)` with a bootstrap interval;
//!   best rate against `ε_opt(B) = ε_max/(1 + B_noise/B)`; where linear scaling stops.
//! - [`lrfind`]: the learning-rate finder: an exponential ramp of the rate, `α*` (the largest
//!   rate before the loss blows up) and `λ_max ≈ 2/α*`.
//! - [`plan`]: time and worker-hours to target on `N` workers: the sweep's `S(B)` times a
//!   modelled step (compute of `B/N` samples, the gradient's all-reduce under the α-β model).
//! - [`report`]: self-contained HTML with SVG plots, and the terminal summary.
//! - [`reproduce`]: the catalog of published claims, the rules that judge them, the verdict
//!   table and report.
//! - [`sweep`]: the batch-size sweep as a plan of trials (the tuned-rate search).
//! - [`warmup`]: the warmup stability grid (peak rate × warmup length × shape × momentum),
//!   each run's record, the largest stable rate per warmup, where warmup helps or hurts.

pub mod fit;
pub mod lrfind;
pub mod plan;
pub mod report;
pub mod reproduce;
pub mod study;
pub mod sweep;
pub mod warmup;
