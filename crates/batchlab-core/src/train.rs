//! The training step as a pure state machine, and a single-process driver.
//!
//! One step of data-parallel SGD, as every replica sees it:
//!
//! ```text
//!   begin(t) ── evaluate? target reached? budget spent? sharpness due?
//!      │
//!   compute: each worker, for each of its microbatches j (sampler::balanced_range),
//!      │      gradient sum + stats  ──► Packet (exact fixed point, see `exact`)
//!   reduce: packets summed (any order, any algorithm: same words)
//!      │
//!   apply(packet) ── a micro overflowed the scale? ──► Redo at the fitted scale
//!      │           ── non-finite / loss above bound? ──► Infeasible
//!      └─ mean gradient, noise-scale EMA, optimizer update with lr(t), metrics row
//! ```
//!
//! [`Replica`] holds everything every replica has identically (parameters, optimizer state,
//! estimators, the fixed-point scale). [`compute_micros`] is the worker's share of a step.
//! `crate::driver::RunDriver` sequences them for one rank of any number (a `Trainer` is the
//! driver of a lone rank; a worker executes the same driver over the network), which is why
//! `batchlab train` and a run on N workers end bit-identical.

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::batching::{BatchSchedule, Batching, Position};
use crate::error::ensure;
use crate::estimate::{NoiseScaleEma, PrefixNorms, lanczos_extremes, two_batch};
use crate::exact::{FixedScale, MicroStats, Packet};
use crate::footprint::{self, Footprint};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::rng::{Stream, rng};
use crate::sampler::{Sampler, Source};
use crate::schedule::{Scaling, Schedule, ScheduleConfig, Unit};
use crate::tasks::{Budget, TaskConfig};
use crate::{ConfigError, Evaluation, Scratch, Task, vec};

/// Which loss the target is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TargetMetric {
    /// Held-out evaluation loss (the exact population loss for `nqm` and `plateau`), checked at
    /// every evaluation.
    #[default]
    Eval,
    /// Training minibatch loss, checked every step (noisy).
    Train,
}

/// Everything one training run needs, as in a TOML config file. Flags override fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The task: model and data (`[task]`, selected by `kind`).
    pub task: TaskConfig,
    /// The optimizer (`[optimizer]`).
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule (`[schedule]`).
    pub schedule: ScheduleConfig,
    /// Global batch size `B` (the first step's, under a `batch_schedule`).
    pub batch: u64,
    /// How the batch changes during the run (`[batch_schedule]`, see `crate::batching`):
    /// constant unless given.
    #[serde(skip_serializing_if = "BatchSchedule::is_constant")]
    pub batch_schedule: BatchSchedule,
    /// Microbatch size `m`, the unit of work; must divide `batch` (and every batch of the
    /// schedule). Default: `batch / k` with `k` the largest divisor of `batch` that is at most 16.
    pub micro: Option<u64>,
    /// Peak learning rate at `base_batch` (after `lr_scaling`, the rate used at `batch`).
    pub lr: f64,
    /// How the rate scales from `base_batch` to the batch of each step: `none`, `linear`,
    /// `sqrt`.
    pub lr_scaling: Scaling,
    /// The batch size at which `lr` was chosen (default: `batch`).
    pub base_batch: Option<u64>,
    /// Seed of the sampler (which samples each step uses).
    pub seed: u64,
    /// Step budget: the run stops INCOMPLETE after this many updates.
    pub steps: u64,
    /// Stop COMPLETE as soon as this loss is reached.
    pub target_loss: Option<f64>,
    /// Which loss `target_loss` refers to: `eval` or `train`.
    pub target_metric: TargetMetric,
    /// Check an `eval` target on the mean of the last `⌈target_window · n⌉` of the `n`
    /// evaluations so far (at least the latest): a window that grows with the run, so that
    /// fluctuations around a noise floor do not count as reaching the target, while the lag
    /// stays a fixed fraction of the steps. 0 = the latest evaluation alone.
    pub target_window: f64,
    /// Stop INCOMPLETE once the eval loss has stalled above the target: after at least 200
    /// evaluations, when the mean of the latest half of them is within 2% of the mean of the
    /// quarter before (a noise floor above the target: the run cannot get there).
    pub stop_stalled: bool,
    /// Evaluate on held-out data every this many steps (and at the end); 0 = only at the end.
    pub eval_every: u64,
    /// Measure sharpness `λ_max` every this many steps; 0 = never.
    pub sharpness_every: u64,
    /// Hessian-vector products (Lanczos steps) per sharpness measurement, at most.
    pub sharpness_iters: usize,
    /// Decay of the EMAs in the noise-scale estimate `B_simple = EMA(tr Σ)/EMA(|G|²)`.
    pub noise_ema: f64,
    /// The run is INFEASIBLE once the training loss exceeds this multiple of the initial loss
    /// (the evaluation at step 0 when there is one, else the first batch's training loss).
    pub divergence_factor: f64,
    /// The most memory the run may allocate, in GB (10⁹ bytes), checked from the settings
    /// before anything is allocated (see [`crate::footprint`]). Default: 80 % of this
    /// machine's physical memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_gb: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            task: TaskConfig::default(),
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            batch: 64,
            batch_schedule: BatchSchedule::default(),
            micro: None,
            lr: 0.5,
            lr_scaling: Scaling::None,
            base_batch: None,
            seed: 0,
            steps: 1000,
            target_loss: None,
            target_metric: TargetMetric::Eval,
            target_window: 0.0,
            stop_stalled: false,
            eval_every: 10,
            sharpness_every: 0,
            sharpness_iters: 50,
            noise_ema: 0.95,
            divergence_factor: 100.0,
            memory_limit_gb: None,
        }
    }
}

/// The default microbatch size for batch `b`: `b / k`, `k` the largest divisor of `b` ≤ 16.
pub fn default_micro(batch: u64) -> u64 {
    let k = (1..=16.min(batch))
        .rev()
        .find(|k| batch.is_multiple_of(*k))
        .unwrap_or(1);
    batch / k
}

/// A validated configuration with its task built.
#[derive(Clone)]
pub struct RunPlan {
    /// The configuration, validated.
    pub config: TrainConfig,
    /// The task.
    pub task: Arc<dyn Task>,
    /// Microbatch size `m`.
    pub micro: u64,
    /// Peak rate at `batch`, after scaling.
    pub peak_lr: f64,
    /// The batch of every step.
    pub batching: Batching,
    base_batch: u64,
    optimizer: OptimizerConfig,
    schedule: Schedule,
}

impl std::fmt::Debug for RunPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPlan")
            .field("task", &self.task.name())
            .field("batch", &self.config.batch)
            .field("micro", &self.micro)
            .field("peak_lr", &self.peak_lr)
            .finish()
    }
}

/// [`footprint::default_limit`], read once per process.
fn default_memory_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(footprint::default_limit)
}

impl TrainConfig {
    /// Validates every field and builds the task. Nothing is trained before this succeeds.
    pub fn build(&self) -> Result<RunPlan, ConfigError> {
        let c = self;
        ensure(c.batch >= 1, "batch", c.batch, "a batch size of at least 1")?;
        let micro = c.micro.unwrap_or_else(|| default_micro(c.batch));
        ensure(
            micro >= 1 && c.batch.is_multiple_of(micro),
            "micro",
            micro,
            &format!("a divisor of batch = {}", c.batch),
        )?;
        ensure(
            c.lr.is_finite() && c.lr > 0.0,
            "lr",
            c.lr,
            "a finite rate > 0",
        )?;
        let base_batch = c.base_batch.unwrap_or(c.batch);
        ensure(
            base_batch >= 1,
            "base_batch",
            base_batch,
            "a batch size of at least 1",
        )?;
        ensure(c.steps >= 1, "steps", c.steps, "at least 1 step")?;
        ensure(
            c.target_window >= 0.0 && c.target_window < 1.0,
            "target_window",
            c.target_window,
            "a fraction in [0, 1)",
        )?;
        if let Some(t) = c.target_loss {
            ensure(t.is_finite(), "target_loss", t, "a finite loss")?;
        }
        ensure(
            c.sharpness_iters >= 2,
            "sharpness_iters",
            c.sharpness_iters,
            "at least 2 Lanczos steps",
        )?;
        ensure(
            c.noise_ema >= 0.0 && c.noise_ema < 1.0,
            "noise_ema",
            c.noise_ema,
            "a decay in [0, 1)",
        )?;
        ensure(
            c.divergence_factor > 1.0,
            "divergence_factor",
            c.divergence_factor,
            "a factor > 1 (or a huge value to only stop on non-finite losses)",
        )?;
        let batching = c.batch_schedule.build(c.batch, micro, c.steps)?;
        let limit = match c.memory_limit_gb {
            Some(gb) => footprint::limit_bytes(gb)?,
            None => default_memory_limit(),
        };
        let words_per_param = footprint::WORDS_PER_PARAM
            + if c.sharpness_every > 0 {
                c.sharpness_iters as u128
            } else {
                0
            };
        let mut run = Footprint::new();
        let micro_setting = if c.micro.is_some() { "micro" } else { "batch" };
        let micro_value = if c.micro.is_some() { micro } else { c.batch };
        run.add(
            (micro_setting, micro_value),
            format!("sample indices of one microbatch of {micro}"),
            micro.into(),
            8,
        );
        let mut whole = c.task.footprint(words_per_param);
        whole.extend(&run);
        whole.check(limit)?;
        let budget = Budget {
            limit,
            words_per_param,
            run,
        };
        let task: Arc<dyn Task> = Arc::from(c.task.build_within(&budget)?);
        c.optimizer.build(task.num_params())?; // validate now
        let schedule = c.schedule.build(match c.schedule.unit {
            Unit::Steps => c.steps,
            // Within 2⁴⁰: checked with the batching above.
            Unit::Samples => c.steps * c.batch,
        })?;
        let peak_lr = c.lr_scaling.apply(c.lr, base_batch, c.batch);
        Ok(RunPlan {
            config: c.clone(),
            task,
            micro,
            peak_lr,
            batching,
            base_batch,
            optimizer: c.optimizer.clone(),
            schedule,
        })
    }
}

impl RunPlan {
    /// The sampler of this run.
    pub fn sampler(&self) -> Sampler {
        let source = match self.task.train_size() {
            Some(n) => Source::Epochs { n },
            None => Source::Stream,
        };
        Sampler::new(self.config.seed, self.micro, source).expect("micro validated by build")
    }

    /// Number of microbatches of the first step (of every step, unless the batch is scheduled).
    pub fn num_micro(&self) -> usize {
        (self.batching.first() / self.micro) as usize
    }

    /// The peak rate at batch `batch`, by the run's scaling rule.
    pub fn peak_lr_at(&self, batch: u64) -> f64 {
        self.config
            .lr_scaling
            .apply(self.config.lr, self.base_batch, batch)
    }

    /// The rate of a step of batch `batch` that starts at `(step, samples)`.
    pub fn lr_at(&self, batch: u64, step: u64, samples: u64) -> f64 {
        let position = match self.schedule.unit() {
            Unit::Steps => step,
            Unit::Samples => samples,
        };
        self.schedule.lr(self.peak_lr_at(batch), position)
    }

    /// A replica at step 0.
    pub fn replica(&self) -> Replica {
        let n = self.task.num_params();
        Replica {
            t: 0,
            samples: 0,
            batch: self.batching.first(),
            params: self.task.init_params(),
            optimizer: self.optimizer.build(n).expect("validated by build"),
            ema: NoiseScaleEma::new(self.config.noise_ema),
            prev_grad: None,
            grad: vec![0.0; n],
            scale: FixedScale::INITIAL,
            initial_loss: None,
            pending: Pending::default(),
            eval_window: EvalWindow::default(),
            plan: self.clone(),
        }
    }

    /// The replica that `state` describes, on this plan; refused when the state does not fit
    /// it (another dimension or optimizer).
    pub fn restore(&self, state: ReplicaState) -> Result<Replica, ConfigError> {
        let n = self.task.num_params();
        for (what, len) in [
            ("replica_state.params", Some(state.params.len())),
            (
                "replica_state.prev_grad",
                state.prev_grad.as_ref().map(Vec::len),
            ),
        ] {
            if let Some(len) = len {
                ensure(
                    len == n,
                    what,
                    format!("{len} values"),
                    &format!("{n}, the task's parameter count"),
                )?;
            }
        }
        let mut replica = self.replica();
        replica.optimizer.restore(&state.optimizer)?;
        replica.t = state.t;
        if state.batch == 0 {
            // A state written before batch schedules: a constant batch.
            replica.samples = state.t * replica.batch;
        } else {
            replica.samples = state.samples;
            replica.batch = state.batch;
        }
        replica.params = state.params;
        replica.scale = state.scale;
        replica.ema = state.ema;
        replica.prev_grad = state.prev_grad;
        replica.initial_loss = state.initial_loss;
        replica.pending = state.pending;
        replica.eval_window = state.eval_window;
        Ok(replica)
    }
}

/// How a run ended (Shallue et al. 2018's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The target loss was reached.
    Complete,
    /// The step budget ran out first (or no target was set).
    Incomplete,
    /// The run diverged: a non-finite value, or a loss above the bound.
    Infeasible,
}

/// One row of the per-step metrics: the state `θ_t` and the step computed from it. The default
/// is an all-zero row with nothing measured (for tests and builders).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step index `t` (updates applied before this row's gradient).
    pub step: u64,
    /// Samples consumed including this step (`(t+1)·B` when the batch is constant).
    pub samples: u64,
    /// This step's global batch `B_t`.
    pub batch: u64,
    /// Learning rate used for this step's update.
    pub lr: f64,
    /// Mean training loss over the global batch at `θ_t`.
    pub train_loss: f64,
    /// Training accuracy over the batch, for classification tasks.
    pub train_accuracy: Option<f64>,
    /// `|g_B|²`, the squared norm of the global-batch mean gradient (before clipping).
    pub grad_norm_sq: f64,
    /// `|g_b|²`: the mean over microbatches of each micro's mean-gradient squared norm.
    pub micro_norm_sq: f64,
    /// This step's unbiased estimate of `|G|²` (two-batch, `b = m`).
    pub g2_est: f64,
    /// This step's unbiased estimate of `tr Σ`.
    pub trace_sigma_est: f64,
    /// `B_simple = EMA(tr Σ)/EMA(|G|²)`.
    pub b_simple: f64,
    /// Exact `B_simple` at `θ_t`, where the task has a closed form.
    pub b_simple_exact: Option<f64>,
    /// Cosine between this step's and the previous step's mean gradient.
    pub grad_cosine: Option<f64>,
    /// `|θ_t|`.
    pub param_norm: f64,
    /// Momentum energy `V_t = L_t + ½|b_{t−1}|²`: this step's training loss at `θ_t` and the
    /// optimizer's momentum buffer `b` as it carried `θ_{t−1}` to `θ_t` (Adam's first moment;
    /// 0 for plain SGD, where `V = L`); see `docs/science.md#momentum-energy`. (Before this
    /// release the column held `L_t + ½|θ_{t+1} − θ_t|²`, `η²` times smaller in its kinetic term.)
    pub momentum_energy: f64,
    /// `L + (η/4)|g_B|²`: the loss the step follows to first order (implicit regularisation).
    pub modified_loss: f64,
    /// Mean over microbatches of the dead-ReLU fraction (MLP).
    pub dead_relu: Option<f64>,
    /// Held-out loss at `θ_t`, on evaluation steps.
    pub eval_loss: Option<f64>,
    /// Held-out accuracy at `θ_t`, on evaluation steps (classification).
    pub eval_accuracy: Option<f64>,
    /// Sharpness `λ_max` at `θ_t`, on sharpness steps.
    pub sharpness: Option<f64>,
    /// `η·λ_max` with the most recent sharpness.
    pub lr_sharpness: Option<f64>,
    /// How many times the step was redone at a wider fixed-point scale.
    pub redos: u32,
}

/// The summary of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// COMPLETE, INCOMPLETE or INFEASIBLE.
    pub status: Status,
    /// Updates applied.
    pub steps: u64,
    /// Samples consumed (`steps · B` when the batch is constant).
    pub samples: u64,
    /// Why the run stopped, in words.
    pub message: String,
    /// Global batch size (the first step's, under a batch schedule).
    pub batch: u64,
    /// Microbatch size.
    pub micro: u64,
    /// Peak learning rate used.
    pub peak_lr: f64,
    /// Held-out loss at the end (or at the target).
    pub final_eval_loss: Option<f64>,
    /// Held-out accuracy at the end.
    pub final_eval_accuracy: Option<f64>,
    /// Training loss of the last step.
    pub final_train_loss: Option<f64>,
    /// `B_simple` of the last step.
    pub final_b_simple: Option<f64>,
    /// Most recent sharpness.
    pub last_sharpness: Option<f64>,
    /// Exact `B_simple` at the final parameters, where the task has a closed form.
    pub final_b_simple_exact: Option<f64>,
    /// Exact `B_noise` at the final parameters, where the task has a closed form.
    pub final_b_noise_exact: Option<f64>,
    /// FNV-1a 64 of the final parameters' little-endian bytes, hex: equal digests mean
    /// bit-identical parameters.
    pub params_digest: String,
}

/// What [`Replica::begin`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// Compute step `t`.
    Compute,
    /// The run is over.
    Finished(Box<RunSummary>),
}

/// What [`Replica::apply`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The step was applied; here is its metrics row.
    Step(Box<StepMetrics>),
    /// A micro exceeded the fixed-point scale: recompute the step at `replica.scale` (updated).
    Redo,
    /// The run ended with this step: it diverged (INFEASIBLE, the update was not applied), or
    /// its training loss reached a `train` target (COMPLETE, the update was applied).
    Finished(Box<StepMetrics>, Box<RunSummary>),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Pending {
    eval: Option<Evaluation>,
    sharpness: Option<f64>,
    last_sharpness: Option<f64>,
    last_eval: Option<Evaluation>,
    last_train_loss: Option<f64>,
    last_b_simple: Option<f64>,
    redos: u32,
    /// The step whose [`Replica::begin`] ran (a second call for it changes nothing).
    #[serde(default)]
    begun: Option<u64>,
}

/// Everything a replica holds; identical on every replica after every step.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Updates applied so far.
    pub t: u64,
    /// Samples consumed before step `t`.
    pub samples: u64,
    /// The batch of step `t`.
    pub batch: u64,
    /// Current parameters `θ_t`.
    pub params: Vec<f64>,
    /// Fixed-point scale for the current step's packet.
    pub scale: FixedScale,
    optimizer: Optimizer,
    ema: NoiseScaleEma,
    prev_grad: Option<Vec<f64>>,
    grad: Vec<f64>,
    initial_loss: Option<f64>,
    pending: Pending,
    eval_window: EvalWindow,
    plan: RunPlan,
}

/// Everything a [`Replica`] holds except its plan, as plain data: a new worker of an elastic
/// run receives it from a peer, and [`RunPlan::restore`] turns it back into the same replica
/// (the next steps are bit-identical to the ones the original would have taken).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaState {
    /// Updates applied so far.
    pub t: u64,
    /// Samples consumed before step `t`.
    #[serde(default)]
    pub samples: u64,
    /// The batch of step `t` (0 in a state written before batch schedules: the config's).
    #[serde(default)]
    pub batch: u64,
    /// `θ_t`.
    pub params: Vec<f64>,
    /// The fixed-point scale of the current step.
    pub scale: FixedScale,
    /// The optimizer's state.
    pub optimizer: crate::optim::OptimizerState,
    ema: NoiseScaleEma,
    prev_grad: Option<Vec<f64>>,
    initial_loss: Option<f64>,
    pending: Pending,
    eval_window: EvalWindow,
}

/// Evaluations before a run can count as stalled ([`TrainConfig::stop_stalled`]).
pub const STALL_MIN_EVALS: usize = 200;
/// Relative decrease below which a run counts as stalled.
pub const STALL_TOLERANCE: f64 = 0.02;

/// The evaluations of a run, for the mean over a window that grows with the run (see
/// [`TrainConfig::target_window`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalWindow {
    /// Prefix sums: `prefix[k]` = sum of the first `k` evaluation losses.
    prefix: Vec<f64>,
    last_width: usize,
}

impl EvalWindow {
    /// Records an evaluation; returns the mean over the last `⌈fraction · n⌉` (≥ 1) of them.
    pub fn push(&mut self, loss: f64, fraction: f64) -> f64 {
        if self.prefix.is_empty() {
            self.prefix.push(0.0);
        }
        let total = self.prefix.last().copied().unwrap_or(0.0) + loss;
        self.prefix.push(total);
        let n = self.prefix.len() - 1;
        let w = ((fraction * n as f64).ceil() as usize).clamp(1, n);
        self.last_width = w;
        if w == 1 {
            loss
        } else {
            (self.prefix[n] - self.prefix[n - w]) / w as f64
        }
    }

    /// Whether the evaluations have stalled: at least `min` of them, and the mean of the latest
    /// half is at least `1 − tol` times the mean of the quarter before it.
    pub fn stalled(&self, min: usize, tol: f64) -> Option<f64> {
        let n = self.prefix.len().saturating_sub(1);
        if n < min.max(4) {
            return None;
        }
        let mean = |a: usize, b: usize| (self.prefix[b] - self.prefix[a]) / (b - a) as f64;
        let (recent, before) = (mean(n / 2, n), mean(n / 4, n / 2));
        (recent >= (1.0 - tol) * before).then_some(recent)
    }

    /// ` (mean of the last w evaluations)` when the last mean spanned several, else empty.
    pub fn describe(&self) -> String {
        if self.last_width > 1 {
            format!(" (mean of the last {} evaluations)", self.last_width)
        } else {
            String::new()
        }
    }
}

impl Replica {
    /// The plan this replica runs.
    pub fn plan(&self) -> &RunPlan {
        &self.plan
    }

    /// What a rank computes its share of the current step from.
    pub fn input(&self) -> StepInput<'_> {
        StepInput {
            task: self.plan.task.as_ref(),
            params: &self.params,
            t: self.t,
            start: self.samples,
            scale: self.scale,
        }
    }

    /// Number of microbatches of step `t`.
    pub fn num_micro(&self) -> usize {
        (self.batch / self.plan.micro) as usize
    }

    /// A copy of everything this replica holds besides its plan.
    pub fn state(&self) -> ReplicaState {
        ReplicaState {
            t: self.t,
            samples: self.samples,
            batch: self.batch,
            params: self.params.clone(),
            scale: self.scale,
            optimizer: self.optimizer.state(),
            ema: self.ema.clone(),
            prev_grad: self.prev_grad.clone(),
            initial_loss: self.initial_loss,
            pending: self.pending.clone(),
            eval_window: self.eval_window.clone(),
        }
    }

    /// Start of step `t`: evaluates and measures sharpness when due, and decides whether the
    /// run is over. Call once per step, before computing it.
    pub fn begin(&mut self, scratch: &mut Scratch) -> Begin {
        let cfg = &self.plan.config;
        let t = self.t;
        if self.pending.begun == Some(t) {
            // Begun already (a regrouped run redoes the step): evaluations are recorded once.
            return Begin::Compute;
        }
        let at_end = t >= cfg.steps;
        let eval_due = at_end || (cfg.eval_every > 0 && t.is_multiple_of(cfg.eval_every));
        self.pending.eval = None;
        self.pending.sharpness = None;
        self.pending.redos = 0;
        if eval_due {
            let e = self.plan.task.evaluate(&self.params, scratch);
            if t == 0 && e.loss.is_finite() {
                // The divergence bound's reference: the held-out loss at θ₀ is not subject to
                // the sampling noise of one minibatch (at B = 1 that loss can be near zero).
                self.initial_loss = Some(e.loss.abs());
            }
            self.pending.eval = Some(e);
            self.pending.last_eval = Some(e);
            let smoothed = self.eval_window.push(e.loss, cfg.target_window);
            if cfg.target_metric == TargetMetric::Eval
                && cfg.target_loss.is_some_and(|target| smoothed <= target)
            {
                return Begin::Finished(Box::new(self.summary(
                    Status::Complete,
                    format!(
                        "reached eval loss {smoothed:.6e} ≤ target after {t} steps{}",
                        self.eval_window.describe()
                    ),
                )));
            }
            if cfg.stop_stalled
                && cfg.target_loss.is_some()
                && let Some(level) = self.eval_window.stalled(STALL_MIN_EVALS, STALL_TOLERANCE)
            {
                return Begin::Finished(Box::new(self.summary(
                    Status::Incomplete,
                    format!(
                        "stalled at eval loss {level:.6e} above the target after {t} steps \
                             (the latest half of the evaluations no lower than the quarter before)"
                    ),
                )));
            }
        }
        if at_end {
            let message = match cfg.target_loss {
                Some(target) => format!("budget of {t} steps spent before the target {target:e}"),
                None => format!("ran the budget of {t} steps"),
            };
            return Begin::Finished(Box::new(self.summary(Status::Incomplete, message)));
        }
        if cfg.sharpness_every > 0 && t.is_multiple_of(cfg.sharpness_every) {
            let s = self.sharpness(scratch);
            self.pending.sharpness = Some(s);
            self.pending.last_sharpness = Some(s);
        }
        self.pending.begun = Some(t);
        Begin::Compute
    }

    /// `λ_max` at the current parameters: the largest **algebraic** eigenvalue of
    /// [`curvature_hvp`]'s operator (see [`Replica::spectrum_ends`]).
    pub fn sharpness(&self, scratch: &mut Scratch) -> f64 {
        self.spectrum_ends(scratch).top
    }

    /// Both ends of the curvature spectrum at the current parameters, `λ_max` and `λ_min`, by
    /// the Lanczos method on [`curvature_hvp`] (`sharpness_iters` products at most, from a
    /// start vector drawn from `(seed, Stream::Sharpness, t)`); see
    /// `docs/science.md#sharpness`. Plain power iteration would return the eigenvalue of
    /// largest magnitude, which is `λ_min` wherever a negative one dominates (the plateau task
    /// past `|x| = 1`, networks early in training).
    pub fn spectrum_ends(&self, scratch: &mut Scratch) -> crate::estimate::SpectrumEnds {
        use rand_distr::{Distribution, StandardNormal};
        let task = self.plan.task.as_ref();
        let samples = task.curvature_samples();
        let mut r = rng(self.plan.config.seed, Stream::Sharpness, self.t);
        let v0: Vec<f64> = (0..self.params.len())
            .map(|_| StandardNormal.sample(&mut r))
            .collect();
        let params = &self.params;
        lanczos_extremes(
            |v, out| curvature_hvp(task, params, &samples, v, out, scratch),
            v0,
            self.plan.config.sharpness_iters,
            1e-6,
        )
    }

    /// Consumes the fully reduced packet of the current step and applies the update.
    pub fn apply(&mut self, packet: &Packet) -> Applied {
        let num_micro = self.num_micro();
        let micros = packet.decode(self.scale, &mut self.grad);
        let max_abs = largest(&micros);
        let finite = max_abs.is_finite() && micros.iter().all(|m| m.loss_sum.is_finite());
        if finite && !self.scale.fits(max_abs, num_micro) {
            self.scale = self.scale.fitted(max_abs, num_micro);
            self.pending.redos += 1;
            return Applied::Redo;
        }
        self.apply_sums(&micros, max_abs, finite)
    }

    /// Fast mode: consumes the `f32` sum of every rank's gradient sums (see
    /// [`compute_micros_fast`]) and the exactly reduced per-micro stats (`stats` holds no
    /// gradient words). Never asks for a redo.
    pub fn apply_fast(&mut self, grad_sum: &[f32], stats: &Packet) -> Applied {
        let micros = stats.decode(self.scale, &mut []);
        for (g, &x) in self.grad.iter_mut().zip(grad_sum) {
            *g = f64::from(x);
        }
        let max_abs = largest(&micros);
        let finite = max_abs.is_finite()
            && micros.iter().all(|m| m.loss_sum.is_finite())
            && grad_sum.iter().all(|x| x.is_finite());
        self.apply_sums(&micros, max_abs, finite)
    }

    /// The update from the gradient sum in `self.grad` and every micro's stats.
    fn apply_sums(&mut self, micros: &[MicroStats], max_abs: f64, finite: bool) -> Applied {
        let cfg = &self.plan.config;
        let num_micro = self.num_micro();
        let batch = self.batch as f64;
        let m = self.plan.micro as f64;
        let loss_sum: f64 = micros.iter().map(|s| s.loss_sum).sum();
        let train_loss = loss_sum / batch;
        vec::scale(1.0 / batch, &mut self.grad);
        let grad_norm_sq = vec::norm_sq(&self.grad);
        let micro_norm_sq =
            micros.iter().map(|s| s.grad_sum_sq / (m * m)).sum::<f64>() / num_micro as f64;
        let (g2_est, trace_sigma_est, b_simple) = if num_micro > 1 {
            // A batch drawn from a finite training set is drawn without replacement (within
            // an epoch): the finite-population factor, docs/science.md#finite-data.
            let est = two_batch(
                m,
                micro_norm_sq,
                batch,
                grad_norm_sq,
                self.plan.task.train_size(),
            );
            let b = self.ema.update(est);
            (est.g2, est.trace_sigma, b)
        } else {
            (f64::NAN, f64::NAN, f64::NAN)
        };
        let correct: Option<u64> = micros.iter().map(|s| s.correct).sum();
        let dead: Option<f64> = micros
            .iter()
            .map(|s| s.dead_relu)
            .sum::<Option<f64>>()
            .map(|d| d / num_micro as f64);
        let lr = self.plan.lr_at(self.batch, self.t, self.samples);
        let closed = self
            .plan
            .task
            .closed_form()
            .map(|c| c.b_simple(&self.params));
        let grad_cosine = self.prev_grad.as_ref().map(|p| vec::cosine(p, &self.grad));
        let param_norm = vec::norm_sq(&self.params).sqrt();
        let initial = *self.initial_loss.get_or_insert(train_loss);
        let mut row = StepMetrics {
            step: self.t,
            samples: self.samples + self.batch,
            batch: self.batch,
            lr,
            train_loss,
            train_accuracy: correct.map(|c| c as f64 / batch),
            grad_norm_sq,
            micro_norm_sq,
            g2_est,
            trace_sigma_est,
            b_simple,
            b_simple_exact: closed,
            grad_cosine,
            param_norm,
            momentum_energy: f64::NAN,
            modified_loss: train_loss + lr / 4.0 * grad_norm_sq,
            dead_relu: dead,
            eval_loss: self.pending.eval.map(|e| e.loss),
            eval_accuracy: self.pending.eval.and_then(|e| e.accuracy),
            sharpness: self.pending.sharpness,
            lr_sharpness: self.pending.last_sharpness.map(|s| s * lr),
            redos: self.pending.redos,
        };
        let bound = cfg.divergence_factor * initial.abs().max(f64::MIN_POSITIVE);
        if !finite || !train_loss.is_finite() || train_loss > bound {
            let what = if finite && train_loss.is_finite() {
                format!(
                    "training loss {train_loss:.6e} above the bound {bound:.3e} ({}× the initial loss)",
                    cfg.divergence_factor
                )
            } else {
                "a non-finite loss or gradient".to_string()
            };
            let edge = match self.pending.last_sharpness {
                Some(s) => format!("; η·λ_max = {:.3} (λ_max = {s:.4e})", lr * s),
                None => String::new(),
            };
            let message = format!(
                "diverged at step {}: {what} at learning rate {lr:.6e}{edge}",
                self.t
            );
            let summary = self.summary(Status::Infeasible, message);
            return Applied::Finished(Box::new(row), Box::new(summary));
        }
        // The energy of the state θ_t: its loss and the buffer that carried it there (before
        // this step's gradient enters the buffer).
        row.momentum_energy = train_loss + 0.5 * self.optimizer.buffer_norm_sq();
        let prev = std::mem::take(&mut self.prev_grad);
        let mut keep = prev.unwrap_or_else(|| vec![0.0; self.grad.len()]);
        keep.copy_from_slice(&self.grad);
        self.optimizer.step(&mut self.params, &mut self.grad, lr);
        self.prev_grad = Some(keep);
        self.pending.last_train_loss = Some(train_loss);
        self.pending.last_b_simple = Some(b_simple).filter(|b| b.is_finite());
        if cfg.target_metric == TargetMetric::Train
            && cfg.target_loss.is_some_and(|x| train_loss <= x)
        {
            // Reached on this step's batch: stop before the next step (the update is applied).
            self.advance(max_abs);
            let summary = self.summary(
                Status::Complete,
                format!(
                    "reached train loss {train_loss:.6e} ≤ target at step {}",
                    self.t - 1
                ),
            );
            return Applied::Finished(Box::new(row), Box::new(summary));
        }
        self.advance(max_abs);
        Applied::Step(Box::new(row))
    }

    /// On to the next step: its position, its batch, and a fixed-point scale fitted to the
    /// largest value of the step just applied (`max_abs`) summed over the next step's micros.
    fn advance(&mut self, max_abs: f64) {
        self.t += 1;
        self.samples += self.batch;
        self.batch = self.plan.batching.batch_at(Position {
            step: self.t,
            samples: self.samples,
            batch: self.batch,
            b_simple: self.pending.last_b_simple,
        });
        self.scale = self.scale.fitted(max_abs, self.num_micro());
    }

    fn summary(&self, status: Status, message: String) -> RunSummary {
        let cfg = &self.plan.config;
        RunSummary {
            status,
            steps: self.t,
            samples: self.samples,
            message,
            batch: cfg.batch,
            micro: self.plan.micro,
            peak_lr: self.plan.peak_lr,
            final_eval_loss: self.pending.last_eval.map(|e| e.loss),
            final_eval_accuracy: self.pending.last_eval.and_then(|e| e.accuracy),
            final_train_loss: self.pending.last_train_loss,
            final_b_simple: self.pending.last_b_simple,
            last_sharpness: self.pending.last_sharpness,
            final_b_simple_exact: self
                .plan
                .task
                .closed_form()
                .map(|c| c.b_simple(&self.params)),
            final_b_noise_exact: self
                .plan
                .task
                .closed_form()
                .map(|c| c.b_noise(&self.params)),
            params_digest: params_digest(&self.params),
        }
    }
}

/// The Hessian of the training loss times `v`, the operator whose top eigenvalue is the
/// sharpness: the population Hessian where the task has a closed form (an infinite stream's
/// training loss is the population loss), else the task's HVP over `samples`.
pub fn curvature_hvp(
    task: &dyn Task,
    params: &[f64],
    samples: &[u64],
    v: &[f64],
    out: &mut [f64],
    scratch: &mut Scratch,
) {
    match task.closed_form() {
        Some(cf) => cf.hessian_vec(params, v, out),
        None => task.hvp(params, samples, v, out, scratch),
    }
}

/// FNV-1a 64 of the parameters' little-endian bytes, as 16 hex digits.
pub fn params_digest(params: &[f64]) -> String {
    fnv1a(params.iter().flat_map(|p| p.to_le_bytes()))
}

/// FNV-1a 64 of `bytes`, as 16 hex digits.
pub fn digest(bytes: &[u8]) -> String {
    fnv1a(bytes.iter().copied())
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The largest `max_abs` over micros, NaN if any is NaN.
fn largest(micros: &[MicroStats]) -> f64 {
    micros.iter().map(|m| m.max_abs).fold(0.0, |a: f64, x| {
        if x.is_nan() || a.is_nan() {
            f64::NAN
        } else {
            a.max(x)
        }
    })
}

/// Buffers a worker reuses between steps.
#[derive(Debug, Default)]
pub struct WorkerScratch {
    /// The task's scratch.
    pub task: Scratch,
    samples: Vec<u64>,
    grad: Vec<f64>,
    acc: Vec<f64>,
}

/// What a rank computes its share of a step from: the task and the replica's state at the
/// step's start ([`Replica::input`]).
#[derive(Clone, Copy)]
pub struct StepInput<'a> {
    /// The task.
    pub task: &'a dyn Task,
    /// `θ_t`.
    pub params: &'a [f64],
    /// The step `t`.
    pub t: u64,
    /// The sample position where step `t`'s batch starts (samples consumed before it).
    pub start: u64,
    /// The fixed-point scale of the step's packet.
    pub scale: FixedScale,
}

impl std::fmt::Debug for StepInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepInput")
            .field("task", &self.task.name())
            .field("t", &self.t)
            .field("start", &self.start)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

/// The worker's share of step `input.t`: the gradient sums and stats of microbatches `micros`,
/// quantized at `input.scale` into `packet` (which is cleared first).
pub fn compute_micros(
    input: StepInput<'_>,
    sampler: &mut Sampler,
    micros: Range<usize>,
    packet: &mut Packet,
    scratch: &mut WorkerScratch,
) {
    let StepInput {
        task,
        params,
        start,
        scale,
        ..
    } = input;
    packet.clear();
    scratch.grad.resize(params.len(), 0.0);
    for j in micros {
        scratch.samples.clear();
        sampler.samples_into(start, j..j + 1, &mut scratch.samples);
        let stats = task.loss_grad(
            params,
            &scratch.samples,
            &mut scratch.grad,
            &mut scratch.task,
        );
        packet.add_micro(j, &scratch.grad, stats, scale);
    }
}

/// [`compute_micros`] split for overlapping the reduction with the backward pass (as DDP
/// does): this computes every micro of `micros` but the last into `packet` (cleared first)
/// and returns the last one's index, for [`compute_last_micro_streamed`].
pub fn compute_micros_but_last(
    input: StepInput<'_>,
    sampler: &mut Sampler,
    micros: Range<usize>,
    packet: &mut Packet,
    scratch: &mut WorkerScratch,
) -> Option<usize> {
    let Some(last) = micros.clone().last() else {
        packet.clear();
        return None;
    };
    compute_micros(input, sampler, micros.start..last, packet, scratch);
    Some(last)
}

/// The last micro of a worker's share, streamed: each bucket of its gradient (in
/// [`Task::buckets`] order) is quantized into `buckets[k]` (that bucket's gradient words, which
/// already hold the other micros' sums) and handed to `ready(k, words)` as soon as it is final.
/// Returns the micro's stats for [`Packet::add_stats`]. The words and stats are those of
/// [`compute_micros`], bit for bit.
pub fn compute_last_micro_streamed<'a>(
    input: StepInput<'_>,
    sampler: &mut Sampler,
    micro: usize,
    buckets: Vec<&'a mut [i64]>,
    scratch: &mut WorkerScratch,
    ready: &mut dyn FnMut(usize, &'a mut [i64]),
) -> MicroStats {
    let StepInput {
        task,
        params,
        start,
        scale,
        ..
    } = input;
    let ranges = task.buckets();
    assert_eq!(ranges.len(), buckets.len(), "one word slice per bucket");
    let mut slots: Vec<Option<&'a mut [i64]>> = buckets.into_iter().map(Some).collect();
    scratch.grad.resize(params.len(), 0.0);
    scratch.samples.clear();
    sampler.samples_into(start, micro..micro + 1, &mut scratch.samples);
    let stats = task.loss_grad_streamed(
        params,
        &scratch.samples,
        &mut scratch.grad,
        &mut scratch.task,
        &mut |range, values| {
            let k = ranges
                .iter()
                .position(|r| *r == range)
                .unwrap_or_else(|| panic!("{range:?} is not one of the task's buckets"));
            let words = slots[k].take().expect("each bucket is finished once");
            crate::exact::add_quantized(words, values, scale);
            ready(k, words);
        },
    );
    assert!(
        slots.iter().all(Option::is_none),
        "every bucket was finished"
    );
    MicroStats::measure(stats, &scratch.grad)
}

/// Fast mode's share of step `input.t`: the sum over microbatches `micros` of their gradient sums,
/// accumulated in `f64` and rounded once to `f32` into `grad_sum`, and their stats in `stats`
/// (a packet with no gradient words; cleared first).
///
/// The ranks then add their `f32` vectors in whatever order the all-reduce takes. Per element
/// the result differs from the exact sum by at most `W · 2⁻²⁴ · Σ_r |s_r|` (to first order),
/// `s_r` being rank `r`'s local sum: one rounding per rank, and at most `W − 1` rounded
/// additions of partial sums each bounded by `Σ_r |s_r|`.
pub fn compute_micros_fast(
    input: StepInput<'_>,
    sampler: &mut Sampler,
    micros: Range<usize>,
    grad_sum: &mut [f32],
    stats: &mut Packet,
    scratch: &mut WorkerScratch,
) {
    let StepInput {
        task,
        params,
        start,
        ..
    } = input;
    stats.clear();
    scratch.grad.resize(params.len(), 0.0);
    scratch.acc.clear();
    scratch.acc.resize(params.len(), 0.0);
    for j in micros {
        scratch.samples.clear();
        sampler.samples_into(start, j..j + 1, &mut scratch.samples);
        let batch_stats = task.loss_grad(
            params,
            &scratch.samples,
            &mut scratch.grad,
            &mut scratch.task,
        );
        stats.add_stats(j, &MicroStats::measure(batch_stats, &scratch.grad));
        vec::axpy(1.0, &scratch.grad, &mut scratch.acc);
    }
    for (o, &a) in grad_sum.iter_mut().zip(&scratch.acc) {
        *o = a as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eval_window_grows_with_the_run() {
        let mut w = EvalWindow::default();
        // fraction 0.5: n = 1 → 1, n = 2 → 1, n = 3 → 2, n = 4 → 2, n = 5 → 3.
        assert_eq!(w.push(8.0, 0.5), 8.0);
        assert_eq!(w.push(6.0, 0.5), 6.0);
        assert_eq!(w.push(4.0, 0.5), 5.0);
        assert_eq!(w.push(2.0, 0.5), 3.0);
        assert_eq!(w.push(0.0, 0.5), 2.0);
        assert_eq!(w.describe(), " (mean of the last 3 evaluations)");
        // 2 → 1: the latest half (1, 0) averages 0.5, the quarter before (4) is 4: not stalled.
        assert_eq!(w.stalled(4, 0.02), None);
        let mut flat = EvalWindow::default();
        for k in 0..400 {
            flat.push(1.0 + 0.001 * (k % 2) as f64, 0.0);
        }
        assert!(
            flat.stalled(200, 0.02)
                .is_some_and(|l| (l - 1.0005).abs() < 1e-9)
        );
        assert_eq!(flat.stalled(401, 0.02), None, "too few evaluations yet");
        let mut falling = EvalWindow::default();
        for k in 0..400 {
            falling.push(1.0 / (1.0 + k as f64), 0.0);
        }
        assert_eq!(falling.stalled(200, 0.02), None);
        let mut plain = EvalWindow::default();
        assert_eq!(plain.push(3.0, 0.0), 3.0);
        assert_eq!(plain.push(1.0, 0.0), 1.0);
        assert_eq!(plain.describe(), "");
    }
}

/// The gradient noise scale measured at fixed parameters from fresh samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseProbe {
    /// Mean of the unbiased `|G|²` estimates.
    pub g2: f64,
    /// Mean of the unbiased `tr Σ` estimates.
    pub trace_sigma: f64,
    /// `tr Σ / |G|²` from the two means.
    pub b_simple: f64,
    /// Its standard error (delta method over the repetitions).
    pub b_simple_se: f64,
    /// Samples drawn.
    pub samples: u64,
    /// The same batches' nested prefixes: `|g_b|²` at every size, fitted at once.
    pub nested: NestedNoise,
}

/// The gradient noise at many batch sizes at once, from the nested prefixes `m, 2m, 4m, …, B`
/// of each batch (docs/science.md#nested-prefixes): the mean `|g_b|²` per size over the repetitions, and the line
/// `E|g_b|² = |G|² + tr Σ/b` fitted to each repetition's prefixes, averaged over repetitions.
/// Repetitions are independent batches, so the standard error of their mean is honest (the
/// prefixes within one batch are not independent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NestedNoise {
    /// Prefix sizes `b` in samples.
    pub sizes: Vec<u64>,
    /// Mean over repetitions of `|g_b|²` per size.
    pub mean_sq_norms: Vec<f64>,
    /// Mean over repetitions of the fitted `|G|²`.
    pub g2: f64,
    /// Mean over repetitions of the fitted `tr Σ`.
    pub trace_sigma: f64,
    /// `tr Σ / |G|²` from the two means.
    pub b_simple: f64,
    /// Its standard error (delta method over the repetitions).
    pub b_simple_se: f64,
}

/// Running sums of paired estimates `(|G|², tr Σ)` over repetitions, for the ratio of their
/// means and its delta-method standard error.
#[derive(Debug, Clone, Copy, Default)]
struct RatioOfMeans {
    n: f64,
    g: f64,
    t: f64,
    gg: f64,
    tt: f64,
    gt: f64,
}

impl RatioOfMeans {
    fn push(&mut self, g: f64, t: f64) {
        self.n += 1.0;
        self.g += g;
        self.t += t;
        self.gg += g * g;
        self.tt += t * t;
        self.gt += g * t;
    }

    /// `(mean |G|², mean tr Σ, ratio, its standard error)`.
    fn finish(&self) -> (f64, f64, f64, f64) {
        let n = self.n.max(1.0);
        let (g, t) = (self.g / n, self.t / n);
        let b = t / g;
        // Var of the means, and the delta method for the ratio.
        let var = |s2: f64, m: f64| (s2 / n - m * m).max(0.0) / (n - 1.0).max(1.0);
        let cov = (self.gt / n - g * t) / (n - 1.0).max(1.0);
        let rel = var(self.tt, t) / (t * t) + var(self.gg, g) / (g * g) - 2.0 * cov / (g * t);
        (g, t, b, b.abs() * rel.max(0.0).sqrt())
    }
}

/// Offset between a run's sampler seed and its noise probe's, so the probe draws samples the
/// run never saw (on an infinite stream; from the same dataset otherwise).
const PROBE_SEED_OFFSET: u64 = 1 << 20;

/// Measures `B_simple` at `params` with `reps` independent batches of `num_micro` microbatches
/// of `micro` samples: the two-batch estimates (`docs/science.md#noise-scale`) of each batch,
/// averaged, then divided — a ratio of means, like the training-time EMAs, but at one state
/// and as precise as the sample count makes it.
///
/// On a finite training set of `N` samples each batch is the start of its own seeded
/// permutation (drawn without replacement, never straddling an epoch), the estimators carry
/// the finite-population factor ([`crate::estimate::kappa`]), and a batch is at most `N`
/// samples: `micro` (then `num_micro`) shrink to fit.
pub fn noise_probe(
    task: &dyn Task,
    params: &[f64],
    seed: u64,
    micro: u64,
    num_micro: usize,
    reps: usize,
) -> NoiseProbe {
    let population = task.train_size();
    let (micro, num_micro) = match population {
        Some(n) if micro * num_micro as u64 > n => {
            let num_micro = num_micro.min(n as usize).max(1);
            ((n / num_micro as u64).max(1), num_micro)
        }
        _ => (micro, num_micro),
    };
    let batch = micro * num_micro as u64;
    let probe_seed = seed.wrapping_add(PROBE_SEED_OFFSET);
    let sampler_of = |s: u64| {
        let source = match population {
            Some(n) => Source::Epochs { n },
            None => Source::Stream,
        };
        Sampler::new(s, micro, source).expect("probe sizes are at least 1")
    };
    let mut sampler = sampler_of(probe_seed);
    let mut scratch = Scratch::new();
    let mut grad = vec![0.0; params.len()];
    let mut prefixes =
        PrefixNorms::new(params.len(), num_micro, micro as usize).with_population(population);
    let mut norm_sums = vec![0.0; prefixes.sizes().len()];
    let mut samples = Vec::new();
    let (mut two, mut nested) = (RatioOfMeans::default(), RatioOfMeans::default());
    for r in 0..reps {
        prefixes.reset();
        // A stream's batches follow each other; a finite set's each open a permutation.
        let step = if population.is_some() {
            sampler = sampler_of(probe_seed.wrapping_add(r as u64));
            0
        } else {
            r as u64
        };
        let mut small = 0.0;
        for j in 0..num_micro {
            samples.clear();
            sampler.samples_into(step * batch, j..j + 1, &mut samples);
            task.loss_grad(params, &samples, &mut grad, &mut scratch);
            small += vec::norm_sq(&grad) / (micro * micro) as f64;
            prefixes.push(&grad);
        }
        let big = vec::norm_sq(prefixes.sum()) / (batch * batch) as f64;
        let est = two_batch(
            micro as f64,
            small / num_micro as f64,
            batch as f64,
            big,
            population,
        );
        two.push(est.g2, est.trace_sigma);
        let fit = prefixes.regression();
        nested.push(fit.g2, fit.trace_sigma);
        for (s, n) in norm_sums.iter_mut().zip(prefixes.norms()) {
            *s += n;
        }
    }
    let (g, t, b, se) = two.finish();
    let (ng, nt, nb, nse) = nested.finish();
    NoiseProbe {
        g2: g,
        trace_sigma: t,
        b_simple: b,
        b_simple_se: se,
        samples: batch * reps as u64,
        nested: NestedNoise {
            sizes: prefixes.sizes().iter().map(|&k| k as u64 * micro).collect(),
            mean_sq_norms: norm_sums.iter().map(|s| s / reps.max(1) as f64).collect(),
            g2: ng,
            trace_sigma: nt,
            b_simple: nb,
            b_simple_se: nse,
        },
    }
}

/// The exact gradient noise of a task at `params`: `|G|²`, `tr Σ` and `B_simple = tr Σ/|G|²`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExactNoise {
    /// `|G|²`, the squared norm of the true (full-batch) gradient.
    pub g2: f64,
    /// `tr Σ`, the trace of the per-sample gradient covariance (divisor `N` on a finite set).
    pub trace_sigma: f64,
    /// `tr Σ / |G|²`.
    pub b_simple: f64,
    /// Where the numbers come from.
    pub source: ExactSource,
}

/// How an [`ExactNoise`] was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExactSource {
    /// The task's closed form (the NQM, linear regression on a stream).
    ClosedForm,
    /// One pass of per-sample gradients over the whole finite training set.
    FullPass,
}

/// [`ExactNoise`] at `params`: the closed form where the task has one, else, on a finite
/// training set of `N` samples, one pass of per-sample gradients over all of them
/// (`docs/science.md#finite-data`): `G = (1/N) Σ g_i` and `tr Σ = (1/N) Σ |g_i − G|²`,
/// accumulated by Welford's update (no cancellation when `|G|² ≫ tr Σ`). `None` for a stream
/// without a closed form. Costs `N` gradient evaluations of one sample each.
pub fn exact_noise(task: &dyn Task, params: &[f64]) -> Option<ExactNoise> {
    if let Some(c) = task.closed_form() {
        let g = c.true_gradient(params);
        let (g2, trace_sigma) = (vec::norm_sq(&g), c.trace_sigma(params));
        return Some(ExactNoise {
            g2,
            trace_sigma,
            b_simple: trace_sigma / g2,
            source: ExactSource::ClosedForm,
        });
    }
    let n = task.train_size()?;
    let mut scratch = Scratch::new();
    let mut grad = vec![0.0; params.len()];
    let mut mean = vec![0.0; params.len()];
    let mut m2 = 0.0;
    for i in 0..n {
        task.loss_grad(params, &[i], &mut grad, &mut scratch);
        let k = (i + 1) as f64;
        // m2 += (g − mean_old)·(g − mean_new), summed over coordinates.
        for (m, &g) in mean.iter_mut().zip(&grad) {
            let d = g - *m;
            *m += d / k;
            m2 += d * (g - *m);
        }
    }
    let g2 = vec::norm_sq(&mean);
    let trace_sigma = m2 / n as f64;
    Some(ExactNoise {
        g2,
        trace_sigma,
        b_simple: trace_sigma / g2,
        source: ExactSource::FullPass,
    })
}
