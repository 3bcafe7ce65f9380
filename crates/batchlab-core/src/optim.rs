//! Optimizers with PyTorch's update conventions, all state in `f64`.
//!
//! One [`Optimizer::step`] takes the **mean** gradient of a step and, in order:
//!
//! ```text
//!   g ──► clip to max norm? ──► + wd·θ (coupled) ──► update rule ──► θ
//!         (clip_grad_norm_)      sgd, momentum,       sgd:       θ -= η g
//!                                nesterov, adam       momentum:  b = μb + (1-τ)g  (b = g at t = 1)
//!                                                                θ -= η b
//!                                                     nesterov:  b as momentum (τ = 0)
//!                                                                θ -= η (g + μb)
//!                                                     adam:      m = β₁m + (1-β₁)g
//!                                                                v = β₂v + (1-β₂)g²
//!                                                                θ -= η m̂ / (√v̂ + ε)
//!                                                     adamw:     θ *= 1 - η·wd, then adam
//! ```
//!
//! These are the algorithm boxes of `torch.optim.SGD`, `torch.optim.Adam` and
//! `torch.optim.AdamW`, and `torch.nn.utils.clip_grad_norm_` (`coef = max_norm / (‖g‖ + 1e-6)`,
//! applied only when `coef < 1`). The golden values in the tests come from
//! `tests/golden/optim.py`, a NumPy transcription of those boxes.
//!
//! # Fields each kind reads
//!
//! | kind       | momentum | dampening | beta1, beta2, eps | weight_decay | clip_norm |
//! |------------|----------|-----------|-------------------|--------------|-----------|
//! | `sgd`      |          |           |                   | coupled      | yes       |
//! | `momentum` | yes      | yes       |                   | coupled      | yes       |
//! | `nesterov` | yes (>0) | must be 0 |                   | coupled      | yes       |
//! | `adam`     |          |           | yes               | coupled      | yes       |
//! | `adamw`    |          |           | yes               | decoupled    | yes       |
//!
//! Every field is range-checked by [`OptimizerConfig::build`] whatever the kind; a field the
//! kind does not read is otherwise ignored (so one `[optimizer]` table can switch kinds by
//! changing `kind` alone). As in PyTorch, `kind = "momentum"` with `momentum = 0` is plain SGD
//! (no buffer, dampening unused).
//!
//! # Cost
//!
//! A step is one fused pass over the parameters (two when clipping: the norm must be known
//! first) and allocates nothing; the squared gradient norm and the squared velocity
//! `|θ_t − θ_{t−1}|²` are accumulated in the same pass.
//!
//! # Checkpoints
//!
//! [`Optimizer::state`] returns an [`OptimizerState`], a plain serde struct (step count and
//! named vectors, PyTorch's names: `momentum_buffer`, `exp_avg`, `exp_avg_sq`), and
//! [`Optimizer::restore`] loads one into an optimizer built from the same config.

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::error::ensure;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Plain SGD.
    #[default]
    Sgd,
    /// Heavy-ball momentum (`torch.optim.SGD(momentum=μ)`).
    Momentum,
    /// Nesterov momentum (`torch.optim.SGD(momentum=μ, nesterov=True)`).
    Nesterov,
    /// Adam with coupled L2 weight decay (`torch.optim.Adam`).
    Adam,
    /// AdamW, decoupled weight decay (`torch.optim.AdamW`).
    Adamw,
}

impl OptimizerKind {
    /// The name as written in a config file (`"sgd"`, `"momentum"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Momentum => "momentum",
            Self::Nesterov => "nesterov",
            Self::Adam => "adam",
            Self::Adamw => "adamw",
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Optimizer settings, as in a config file's `[optimizer]` table.
///
/// ```toml
/// [optimizer]
/// kind = "momentum"     # sgd | momentum | nesterov | adam | adamw
/// momentum = 0.9        # μ in [0, 1)
/// dampening = 0.0       # τ in [0, 1], momentum only; must be 0 for nesterov
/// beta1 = 0.9           # adam(w), in [0, 1)
/// beta2 = 0.999         # adam(w), in [0, 1)
/// eps = 1e-8            # adam(w), > 0
/// weight_decay = 0.0    # ≥ 0; coupled L2, decoupled for adamw
/// clip_norm = 1.0       # optional, > 0; absent = no clipping
/// ```
///
/// The table of which kind reads which field is in the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Update rule.
    pub kind: OptimizerKind,
    /// Momentum `μ` (momentum, nesterov).
    pub momentum: f64,
    /// Dampening (momentum only, PyTorch's meaning).
    pub dampening: f64,
    /// Adam's `β₁`.
    pub beta1: f64,
    /// Adam's `β₂`.
    pub beta2: f64,
    /// Adam's `ε`.
    pub eps: f64,
    /// Weight decay: coupled L2 for sgd/momentum/nesterov/adam, decoupled for adamw.
    pub weight_decay: f64,
    /// Clip the gradient to this global L2 norm before the update (`clip_grad_norm_`).
    pub clip_norm: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            dampening: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_norm: None,
        }
    }
}

impl OptimizerConfig {
    /// Validates and builds the optimizer for `num_params` parameters.
    ///
    /// Accepted: `momentum ∈ [0, 1)`, `dampening ∈ [0, 1]`, `beta1, beta2 ∈ [0, 1)`, `eps > 0`,
    /// `weight_decay ≥ 0`, `clip_norm > 0` (all finite). For `nesterov`, as PyTorch requires,
    /// `momentum > 0` and `dampening = 0`.
    pub fn build(&self, num_params: usize) -> Result<Optimizer, ConfigError> {
        self.validate()?;
        let (first, second) = match self.kind {
            OptimizerKind::Sgd => (0, 0),
            OptimizerKind::Momentum if self.momentum == 0.0 => (0, 0),
            OptimizerKind::Momentum | OptimizerKind::Nesterov => (num_params, 0),
            OptimizerKind::Adam | OptimizerKind::Adamw => (num_params, num_params),
        };
        Ok(Optimizer {
            config: self.clone(),
            num_params,
            steps: 0,
            first: vec![0.0; first],
            second: vec![0.0; second],
            last_velocity_norm_sq: None,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let unit_open = |x: f64| (0.0..1.0).contains(&x);
        let positive = |x: f64| x > 0.0 && x.is_finite();
        ensure(
            unit_open(self.momentum),
            "optimizer.momentum",
            self.momentum,
            "a value in [0, 1)",
        )?;
        ensure(
            (0.0..=1.0).contains(&self.dampening),
            "optimizer.dampening",
            self.dampening,
            "a value in [0, 1]",
        )?;
        ensure(
            unit_open(self.beta1),
            "optimizer.beta1",
            self.beta1,
            "a value in [0, 1)",
        )?;
        ensure(
            unit_open(self.beta2),
            "optimizer.beta2",
            self.beta2,
            "a value in [0, 1)",
        )?;
        ensure(
            positive(self.eps),
            "optimizer.eps",
            self.eps,
            "a positive finite value",
        )?;
        ensure(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "optimizer.weight_decay",
            self.weight_decay,
            "a finite value ≥ 0",
        )?;
        if let Some(c) = self.clip_norm {
            ensure(
                positive(c),
                "optimizer.clip_norm",
                c,
                "a positive finite norm (or no clip_norm at all)",
            )?;
        }
        if self.kind == OptimizerKind::Nesterov {
            ensure(
                self.momentum > 0.0,
                "optimizer.momentum",
                self.momentum,
                "a value in (0, 1) for kind = \"nesterov\" (PyTorch refuses Nesterov without momentum)",
            )?;
            ensure(
                self.dampening == 0.0,
                "optimizer.dampening",
                self.dampening,
                "0 for kind = \"nesterov\" (PyTorch refuses Nesterov with dampening)",
            )?;
        }
        Ok(())
    }
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateInfo {
    /// Global L2 norm of the gradient handed in, before clipping and weight decay.
    pub grad_norm: f64,
    /// Whether clipping scaled the gradient down.
    pub clipped: bool,
}

/// One named state vector of an [`OptimizerState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateVector {
    /// PyTorch's name for it: `momentum_buffer`, `exp_avg` or `exp_avg_sq`.
    pub name: String,
    /// One value per parameter.
    pub values: Vec<f64>,
}

/// An optimizer's state, for checkpoints and for moving it between processes.
///
/// Which vectors it holds depends on the kind: none for `sgd` (and `momentum` with `μ = 0`),
/// `momentum_buffer` for `momentum` and `nesterov`, `exp_avg` and `exp_avg_sq` for `adam` and
/// `adamw`, in that order. Before the first step the vectors are zeros (the momentum buffer
/// is then unused: the first step sets it to the gradient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerState {
    /// The kind that wrote it; [`Optimizer::restore`] refuses another.
    pub kind: OptimizerKind,
    /// Updates applied so far (Adam's `t` after the last step).
    pub steps: u64,
    /// The state vectors, see above.
    pub vectors: Vec<StateVector>,
    /// `|θ_t − θ_{t−1}|²` of the last update, `None` before the first.
    #[serde(default)]
    pub last_velocity_norm_sq: Option<f64>,
}

/// An optimizer with its state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimizerConfig,
    num_params: usize,
    /// Updates applied so far.
    steps: u64,
    /// Momentum buffer (momentum, nesterov) or Adam's first moment; empty for plain SGD.
    first: Vec<f64>,
    /// Adam's second moment; empty otherwise.
    second: Vec<f64>,
    last_velocity_norm_sq: Option<f64>,
}

impl Optimizer {
    /// Applies one update with rate `lr` from the **mean** gradient `grad` (which it may modify:
    /// clipping, coupled weight decay).
    ///
    /// On return `grad` holds the gradient the update rule used: clipped, plus `wd·θ` for the
    /// kinds with coupled weight decay (unchanged otherwise).
    ///
    /// # Panics
    /// If `params` or `grad` does not have the length the optimizer was built for.
    pub fn step(&mut self, params: &mut [f64], grad: &mut [f64], lr: f64) -> UpdateInfo {
        assert_eq!(params.len(), self.num_params, "params length");
        assert_eq!(grad.len(), self.num_params, "grad length");

        // Clipping needs the norm before the update; without it the norm is summed in the
        // update pass itself.
        let (scale, clipped, known_norm) = match self.config.clip_norm {
            Some(max_norm) => {
                let norm = crate::vec::norm_sq(grad).sqrt();
                let coef = max_norm / (norm + 1e-6);
                if coef < 1.0 {
                    (coef, true, Some(norm))
                } else {
                    (1.0, false, Some(norm))
                }
            }
            None => (1.0, false, None),
        };

        let wd = self.config.weight_decay;
        let mu = self.config.momentum;
        let (grad_sq, velocity_sq) = match self.config.kind {
            OptimizerKind::Sgd => sgd_pass(params, grad, lr, scale, wd),
            OptimizerKind::Momentum if mu == 0.0 => sgd_pass(params, grad, lr, scale, wd),
            OptimizerKind::Momentum | OptimizerKind::Nesterov => momentum_pass(
                params,
                grad,
                &mut self.first,
                MomentumStep {
                    lr,
                    scale,
                    wd,
                    mu,
                    damp: self.config.dampening,
                    nesterov: self.config.kind == OptimizerKind::Nesterov,
                    first_step: self.steps == 0,
                },
            ),
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let t = (self.steps + 1) as f64;
                let (b1, b2) = (self.config.beta1, self.config.beta2);
                let decoupled = self.config.kind == OptimizerKind::Adamw;
                adam_pass(
                    params,
                    grad,
                    &mut self.first,
                    &mut self.second,
                    AdamStep {
                        scale,
                        coupled_wd: if decoupled { 0.0 } else { wd },
                        decay_mul: if decoupled { 1.0 - lr * wd } else { 1.0 },
                        b1,
                        b2,
                        eps: self.config.eps,
                        // PyTorch's own arrangement of the bias corrections.
                        step_size: lr / (1.0 - b1.powf(t)),
                        bc2_sqrt: (1.0 - b2.powf(t)).sqrt(),
                    },
                )
            }
        };

        self.steps += 1;
        self.last_velocity_norm_sq = Some(velocity_sq);
        UpdateInfo {
            grad_norm: known_norm.unwrap_or_else(|| grad_sq.sqrt()),
            clipped,
        }
    }

    /// Squared norm of the displacement `θ_t − θ_{t−1}` of the last update; `None` before the
    /// first step. (For heavy ball this is `η²|b|²`, not the buffer's `|b|²`: see
    /// [`Optimizer::buffer_norm_sq`].)
    pub fn velocity_norm_sq(&self) -> Option<f64> {
        self.last_velocity_norm_sq
    }

    /// `|b|²` of the momentum buffer `b` (momentum, nesterov: `b ← μb + (1−τ)g`) or of Adam's
    /// first moment; 0 for plain SGD, which keeps none. The kinetic term of the momentum
    /// energy `V = L + ½|b|²` (`docs/science.md#momentum-energy`).
    pub fn buffer_norm_sq(&self) -> f64 {
        crate::vec::norm_sq(&self.first)
    }

    /// The largest stable rate on a quadratic with top curvature `lambda_max`:
    /// `2/λ` (sgd), `2(1+μ)/λ` (momentum), `(2+2μ)/((1+2μ)λ)` (nesterov); `None` for Adam(W).
    ///
    /// - `lambda_max` is the top curvature of the loss; coupled weight decay adds `wd` to every
    ///   curvature of the objective the optimizer actually descends, so the bound uses
    ///   `λ = lambda_max + weight_decay` (with `weight_decay = 0` these are the formulas above).
    /// - Momentum with dampening `τ`: `b ← μb + (1−τ)g, θ ← θ − ηb` is heavy ball with rate
    ///   `η(1−τ)` (the first step's `b = g` is a transient and does not change stability), so
    ///   the bound is `2(1+μ)/((1−τ)λ)`, and `+∞` for `τ = 1` (the buffer never sees a new
    ///   gradient). `momentum` with `μ = 0` is plain SGD: `2/λ`.
    /// - Clipping is ignored (it only bounds the step length, not the linear dynamics).
    pub fn stable_lr(&self, lambda_max: f64) -> Option<f64> {
        let lambda = lambda_max + self.config.weight_decay;
        let mu = self.config.momentum;
        match self.config.kind {
            OptimizerKind::Sgd => Some(2.0 / lambda),
            OptimizerKind::Momentum if mu == 0.0 => Some(2.0 / lambda),
            OptimizerKind::Momentum => {
                let keep = 1.0 - self.config.dampening;
                if keep == 0.0 {
                    Some(f64::INFINITY)
                } else {
                    Some(2.0 * (1.0 + mu) / (keep * lambda))
                }
            }
            OptimizerKind::Nesterov => Some((2.0 + 2.0 * mu) / ((1.0 + 2.0 * mu) * lambda)),
            OptimizerKind::Adam | OptimizerKind::Adamw => None,
        }
    }

    /// The update rule.
    pub fn kind(&self) -> OptimizerKind {
        self.config.kind
    }

    /// The momentum `μ` the update uses: the configured one for `momentum` and `nesterov`,
    /// `0` for `sgd`, `adam` and `adamw` (whose `β₁` is not a heavy-ball momentum).
    pub fn momentum(&self) -> f64 {
        match self.config.kind {
            OptimizerKind::Momentum | OptimizerKind::Nesterov => self.config.momentum,
            OptimizerKind::Sgd | OptimizerKind::Adam | OptimizerKind::Adamw => 0.0,
        }
    }

    /// The (validated) configuration it was built from.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The number of parameters it updates.
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state vectors, by name, without copying (see [`OptimizerState`] for the names).
    pub fn state_vectors(&self) -> Vec<(&'static str, &[f64])> {
        self.vector_names()
            .iter()
            .zip([&self.first[..], &self.second[..]])
            .map(|(&name, v)| (name, v))
            .collect()
    }

    /// A copy of the state, for a checkpoint or another process.
    pub fn state(&self) -> OptimizerState {
        OptimizerState {
            kind: self.config.kind,
            steps: self.steps,
            vectors: self
                .state_vectors()
                .into_iter()
                .map(|(name, v)| StateVector {
                    name: name.to_owned(),
                    values: v.to_vec(),
                })
                .collect(),
            last_velocity_norm_sq: self.last_velocity_norm_sq,
        }
    }

    /// Loads `state` (from [`Optimizer::state`] of an optimizer with the same kind and size);
    /// the next step continues exactly where that optimizer left off.
    ///
    /// Refuses, leaving `self` unchanged, a state of another kind, with other vectors, or with
    /// vectors of another length.
    pub fn restore(&mut self, state: &OptimizerState) -> Result<(), ConfigError> {
        ensure(
            state.kind == self.config.kind,
            "optimizer_state.kind",
            state.kind,
            &format!("{}, the kind of this optimizer", self.config.kind),
        )?;
        let names = self.vector_names();
        let found: Vec<&str> = state.vectors.iter().map(|v| v.name.as_str()).collect();
        ensure(
            found == names,
            "optimizer_state.vectors",
            format!("{found:?}"),
            &format!("{names:?}"),
        )?;
        for v in &state.vectors {
            ensure(
                v.values.len() == self.num_params,
                &format!("optimizer_state.{}.len()", v.name),
                v.values.len(),
                &format!("{} (the number of parameters)", self.num_params),
            )?;
        }
        for (dst, v) in [&mut self.first, &mut self.second]
            .into_iter()
            .zip(&state.vectors)
        {
            dst.copy_from_slice(&v.values);
        }
        self.steps = state.steps;
        self.last_velocity_norm_sq = state.last_velocity_norm_sq;
        Ok(())
    }

    fn vector_names(&self) -> &'static [&'static str] {
        match self.config.kind {
            OptimizerKind::Sgd => &[],
            OptimizerKind::Momentum if self.config.momentum == 0.0 => &[],
            OptimizerKind::Momentum | OptimizerKind::Nesterov => &["momentum_buffer"],
            OptimizerKind::Adam | OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// `θ -= η (s·g + wd·θ)`. Returns `(Σ g², Σ Δθ²)` of the raw gradient and the update.
fn sgd_pass(params: &mut [f64], grad: &mut [f64], lr: f64, scale: f64, wd: f64) -> (f64, f64) {
    let (mut grad_sq, mut vel_sq) = (0.0, 0.0);
    for (p, g) in params.iter_mut().zip(grad.iter_mut()) {
        let raw = *g;
        grad_sq += raw * raw;
        let gi = raw * scale + wd * *p;
        *g = gi;
        let new = *p - lr * gi;
        let dv = new - *p;
        vel_sq += dv * dv;
        *p = new;
    }
    (grad_sq, vel_sq)
}

/// Constants of one momentum/Nesterov pass.
struct MomentumStep {
    lr: f64,
    scale: f64,
    wd: f64,
    mu: f64,
    damp: f64,
    nesterov: bool,
    first_step: bool,
}

/// `torch.optim.SGD` with `momentum > 0`. Returns `(Σ g², Σ Δθ²)`.
fn momentum_pass(
    params: &mut [f64],
    grad: &mut [f64],
    buf: &mut [f64],
    c: MomentumStep,
) -> (f64, f64) {
    let (mut grad_sq, mut vel_sq) = (0.0, 0.0);
    let keep = 1.0 - c.damp;
    for ((p, g), b) in params.iter_mut().zip(grad.iter_mut()).zip(buf.iter_mut()) {
        let raw = *g;
        grad_sq += raw * raw;
        let gi = raw * c.scale + c.wd * *p;
        *g = gi;
        *b = if c.first_step {
            gi
        } else {
            c.mu * *b + keep * gi
        };
        let d = if c.nesterov { gi + c.mu * *b } else { *b };
        let new = *p - c.lr * d;
        let dv = new - *p;
        vel_sq += dv * dv;
        *p = new;
    }
    (grad_sq, vel_sq)
}

/// Constants of one Adam/AdamW pass.
struct AdamStep {
    scale: f64,
    /// `wd` for Adam, 0 for AdamW.
    coupled_wd: f64,
    /// `1 − η·wd` for AdamW, 1 for Adam.
    decay_mul: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    /// `η / (1 − β₁ᵗ)`.
    step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    bc2_sqrt: f64,
}

/// `torch.optim.Adam` / `AdamW` (amsgrad off). Returns `(Σ g², Σ Δθ²)`.
fn adam_pass(
    params: &mut [f64],
    grad: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    c: AdamStep,
) -> (f64, f64) {
    let (mut grad_sq, mut vel_sq) = (0.0, 0.0);
    let (keep1, keep2) = (1.0 - c.b1, 1.0 - c.b2);
    for (((p, g), m), v) in params
        .iter_mut()
        .zip(grad.iter_mut())
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        let raw = *g;
        grad_sq += raw * raw;
        let old = *p;
        let gi = raw * c.scale + c.coupled_wd * old;
        *g = gi;
        *m = c.b1 * *m + keep1 * gi;
        *v = c.b2 * *v + keep2 * gi * gi;
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        let new = old * c.decay_mul - c.step_size * (*m / denom);
        let dv = new - old;
        vel_sq += dv * dv;
        *p = new;
    }
    (grad_sq, vel_sq)
}

#[cfg(test)]
mod tests {
    use approx::assert_relative_eq;

    use super::*;

    /// Relative tolerance against the golden values.
    const TOL: f64 = 1e-12;
    /// The problem of `tests/golden/optim.py`: `g = A p − b` from `P0`, rate `LR`.
    const A: [[f64; 4]; 4] = [
        [2.0, 0.5, 0.0, -0.3],
        [0.5, 1.0, 0.2, 0.0],
        [0.0, 0.2, 0.5, 0.1],
        [-0.3, 0.0, 0.1, 3.0],
    ];
    const B: [f64; 4] = [1.0, -0.5, 0.25, 2.0];
    const P0: [f64; 4] = [1.0, -2.0, 0.5, 3.0];
    const LR: f64 = 0.1;

    fn quadratic_grad(p: &[f64]) -> Vec<f64> {
        A.iter()
            .zip(B)
            .map(|(row, b)| crate::vec::dot(row, p) - b)
            .collect()
    }

    /// Runs `steps` updates on the golden problem; returns the parameters after each step and
    /// what each step reported.
    fn run(config: &OptimizerConfig, steps: usize) -> Vec<(Vec<f64>, UpdateInfo, f64)> {
        let mut opt = config.build(4).unwrap();
        let mut p = P0.to_vec();
        (0..steps)
            .map(|_| {
                let mut g = quadratic_grad(&p);
                let info = opt.step(&mut p, &mut g, LR);
                (p.clone(), info, opt.velocity_norm_sq().unwrap())
            })
            .collect()
    }

    /// Checks the trajectory against the golden one, and the reported velocity against the
    /// golden parameter differences.
    fn check(config: OptimizerConfig, golden: &[[f64; 4]]) -> Vec<UpdateInfo> {
        let out = run(&config, golden.len());
        let mut prev = P0;
        for (step, ((p, _, vel), want)) in out.iter().zip(golden).enumerate() {
            for (i, (&got, &want)) in p.iter().zip(want).enumerate() {
                assert!(
                    approx::relative_eq!(got, want, max_relative = TOL, epsilon = 0.0),
                    "step {}, param {i}: got {got:?}, golden {want:?}",
                    step + 1
                );
            }
            let dv: f64 = want.iter().zip(prev).map(|(a, b)| (a - b) * (a - b)).sum();
            assert_relative_eq!(*vel, dv, max_relative = 1e-9);
            prev = *want;
        }
        out.into_iter().map(|(_, info, _)| info).collect()
    }

    fn cfg(kind: OptimizerKind) -> OptimizerConfig {
        OptimizerConfig {
            kind,
            ..OptimizerConfig::default()
        }
    }

    // Golden values: printed by `python3 crates/batchlab-core/tests/golden/optim.py`
    // (PyTorch's documented SGD/Adam/AdamW/clip_grad_norm_ equations in NumPy), case by case.

    #[test]
    fn sgd_matches_pytorch() {
        // optim.py case "sgd"
        check(
            cfg(OptimizerKind::Sgd),
            &[
                [1.09, -1.91, 0.51, 2.325],
                [1.13725, -1.8336999999999999, 0.52445, 1.8551000000000002],
                [1.157138, -1.7676815, 0.5413505, 1.527443],
                [1.1599177649999999, -1.70959726, 0.559362175, 1.298510735],
                [1.15236939705, -1.65782066575, 0.5776009041, 1.1381614257],
            ],
        );
    }

    #[test]
    fn sgd_coupled_weight_decay_matches_pytorch() {
        // optim.py case "sgd_weight_decay"
        check(
            OptimizerConfig {
                weight_decay: 0.05,
                ..cfg(OptimizerKind::Sgd)
            },
            &[
                [1.085, -1.9, 0.5075, 2.31],
                [1.1268749999999998, -1.8149, 0.5194875, 1.8329250000000001],
                [1.1415983749999998, -1.741069, 0.5338844375, 1.50249425],
                [
                    1.139698985625,
                    -1.6760143625,
                    0.5493172309375001,
                    1.273142610625,
                ],
                [
                    1.128055690015625,
                    -1.6180041483374998,
                    0.5648936443796876,
                    1.1135319116437499,
                ],
            ],
        );
    }

    #[test]
    fn momentum_matches_pytorch() {
        // optim.py case "momentum" (μ = 0.9)
        check(
            OptimizerConfig {
                momentum: 0.9,
                ..cfg(OptimizerKind::Momentum)
            },
            &[
                [1.09, -1.91, 0.51, 2.325],
                [1.21825, -1.7527, 0.53345, 1.2476],
                [1.315088, -1.5574415, 0.5754604999999999, 0.1348729999999998],
                [
                    1.3211428649999999,
                    -1.35322831,
                    0.639297025,
                    -0.6733451650000005,
                ],
                [
                    1.2098247310499999,
                    -1.16295669175,
                    0.7235830641,
                    -0.9654966483000006,
                ],
            ],
        );
    }

    #[test]
    fn momentum_with_dampening_matches_pytorch() {
        // optim.py case "momentum_dampening" (μ = 0.9, τ = 0.3): the first step is undamped.
        check(
            OptimizerConfig {
                momentum: 0.9,
                dampening: 0.3,
                ..cfg(OptimizerKind::Momentum)
            },
            &[
                [1.09, -1.91, 0.51, 2.325],
                [1.204075, -1.77559, 0.529115, 1.38857],
                [1.29947762, -1.614879935, 0.560437745, 0.41576506999999996],
                [
                    1.338664975395,
                    -1.44552712618,
                    0.606210858025,
                    -0.38370406589500006,
                ],
                [
                    1.2990561627277049,
                    -1.282262925560575,
                    0.66661258794441,
                    -0.8587799458854302,
                ],
            ],
        );
    }

    #[test]
    fn nesterov_matches_pytorch() {
        // optim.py case "nesterov" (μ = 0.9)
        check(
            OptimizerConfig {
                momentum: 0.9,
                ..cfg(OptimizerKind::Nesterov)
            },
            &[
                [1.171, -1.829, 0.519, 1.7175],
                [1.2605725, -1.634557, 0.5621645, 0.6286609999999999],
                [
                    1.235389292,
                    -1.4426821085000001,
                    0.6286660295,
                    -0.011680363000000193,
                ],
                [
                    1.1160396314565,
                    -1.267401803896,
                    0.7103713057675,
                    -0.18209475470650022,
                ],
                [
                    0.9523183948442294,
                    -1.1147939447136925,
                    0.7952584193553089,
                    -0.012407707504707155,
                ],
            ],
        );
    }

    #[test]
    fn nesterov_coupled_weight_decay_matches_pytorch() {
        // optim.py case "nesterov_weight_decay" (μ = 0.8, wd = 0.05)
        check(
            OptimizerConfig {
                momentum: 0.8,
                weight_decay: 0.05,
                ..cfg(OptimizerKind::Nesterov)
            },
            &[
                [1.153, -1.82, 0.5135, 1.7579999999999998],
                [1.220675, -1.624276, 0.5463395, 0.764277],
                [1.185941723, -1.438781608, 0.5957784395, 0.21118086599999997],
                [
                    1.078313729097,
                    -1.27550990138,
                    0.6535071458895,
                    0.06764060849699996,
                ],
                [
                    0.9446368893888449,
                    -1.138283188713932,
                    0.7095769215927735,
                    0.18997127864297403,
                ],
            ],
        );
    }

    #[test]
    fn sgd_clipping_matches_clip_grad_norm() {
        // optim.py case "sgd_clip" (max_norm = 2)
        let infos = check(
            OptimizerConfig {
                clip_norm: Some(2.0),
                ..cfg(OptimizerKind::Sgd)
            },
            &[
                [
                    1.026202090941042,
                    -1.973797909058958,
                    0.5029113434378936,
                    2.8034843179421847,
                ],
                [
                    1.0509720167987384,
                    -1.9463267626629586,
                    0.5065190214135584,
                    2.6069677568773635,
                ],
                [
                    1.074074972112626,
                    -1.917345521049837,
                    0.5109503192606499,
                    2.4104819035836993,
                ],
                [
                    1.0952056374755113,
                    -1.8865357866534398,
                    0.5163727133843617,
                    2.2140771249971407,
                ],
                [
                    1.1139553490666305,
                    -1.8534644541120828,
                    0.5230131167168771,
                    2.0178358899294904,
                ],
            ],
        );
        let norms = [
            6.869679759639455,
            6.261948046481114,
            5.6556362630344434,
            5.051116683327941,
            4.44891816174738,
        ];
        for (info, norm) in infos.iter().zip(norms) {
            assert_relative_eq!(info.grad_norm, norm, max_relative = TOL);
            assert!(info.clipped);
        }
    }

    #[test]
    fn momentum_clipping_clips_only_above_the_norm() {
        // optim.py case "momentum_clip" (μ = 0.9, max_norm = 2): the last gradient is short
        // enough to pass unclipped.
        let infos = check(
            OptimizerConfig {
                momentum: 0.9,
                clip_norm: Some(2.0),
                ..cfg(OptimizerKind::Momentum)
            },
            &[
                [
                    1.026202090941042,
                    -1.973797909058958,
                    0.5029113434378936,
                    2.8034843179421847,
                ],
                [
                    1.0745538986456764,
                    -1.9227448808160206,
                    0.5091392305076626,
                    2.4301036430253293,
                ],
                [
                    1.1392551709936,
                    -1.846127899690768,
                    0.5201048728996864,
                    1.897638388061638,
                ],
                [
                    1.2097774388465645,
                    -1.738520689816692,
                    0.5397110472999026,
                    1.222817708661112,
                ],
                [
                    1.2549025578955877,
                    -1.5891052248366808,
                    0.5779132886048247,
                    0.4795299972947027,
                ],
            ],
        );
        let norms = [
            6.869679759639455,
            6.261948046481114,
            5.110263773871124,
            3.4796668676658835,
            1.483400433054254,
        ];
        let clipped = [true, true, true, true, false];
        for ((info, norm), clipped) in infos.iter().zip(norms).zip(clipped) {
            assert_relative_eq!(info.grad_norm, norm, max_relative = TOL);
            assert_eq!(info.clipped, clipped);
        }
    }

    #[test]
    fn adam_matches_pytorch() {
        // optim.py case "adam" (β = (0.9, 0.999), ε = 1e-8)
        check(
            cfg(OptimizerKind::Adam),
            &[
                [
                    1.0999999988888889,
                    -1.9000000011111111,
                    0.599999990000001,
                    2.900000000148148,
                ],
                [
                    1.1974005114632247,
                    -1.8010803236553503,
                    0.6898575006407627,
                    2.8001559969873275,
                ],
                [
                    1.2884636019268627,
                    -1.7043557909922473,
                    0.7500128899460989,
                    2.7005835886480143,
                ],
                [
                    1.3671744010974387,
                    -1.6112243990579842,
                    0.7681424438308738,
                    2.601408356750873,
                ],
                [
                    1.4261614967761405,
                    -1.5232326926209299,
                    0.7534809667518669,
                    2.5027654862083373,
                ],
            ],
        );
    }

    #[test]
    fn adam_coupled_weight_decay_matches_pytorch() {
        // optim.py case "adam_weight_decay" (wd = 0.05, coupled)
        check(
            OptimizerConfig {
                weight_decay: 0.05,
                ..cfg(OptimizerKind::Adam)
            },
            &[
                [
                    1.0999999988235294,
                    -1.900000001,
                    0.5999999866666684,
                    2.9000000001449275,
                ],
                [
                    1.197001520036242,
                    -1.8009542781562053,
                    0.6762570659713154,
                    2.800154773130291,
                ],
                [
                    1.2864736533913788,
                    -1.7037726921142562,
                    0.6969570992142626,
                    2.700579926549017,
                ],
                [
                    1.3611039280869797,
                    -1.6094707617092612,
                    0.6765529786065314,
                    2.601402772906629,
                ],
                [
                    1.4126551306648156,
                    -1.519124223300084,
                    0.6346694165314635,
                    2.5027587285868416,
                ],
            ],
        );
    }

    #[test]
    fn adamw_matches_pytorch() {
        // optim.py case "adamw" (wd = 0.05, decoupled)
        check(
            OptimizerConfig {
                weight_decay: 0.05,
                ..cfg(OptimizerKind::Adamw)
            },
            &[
                [
                    1.094999998888889,
                    -1.890000001111111,
                    0.597499990000001,
                    2.885000000148148,
                ],
                [
                    1.186934261478755,
                    -1.7817046977262592,
                    0.684653205163856,
                    2.7707576188558805,
                ],
                [
                    1.2721430835310703,
                    -1.6763106839730257,
                    0.7427258374137453,
                    2.6574050358879555,
                ],
                [
                    1.3448120239125412,
                    -1.5753333929436217,
                    0.7594419110600086,
                    2.5450858580440285,
                ],
                [
                    1.397880823480433,
                    -1.4804639760580796,
                    0.7434254062918805,
                    2.4339548215047366,
                ],
            ],
        );
    }

    #[test]
    fn adamw_clipping_matches_pytorch() {
        // optim.py case "adamw_clip" (β = (0.8, 0.99), ε = 1e-6, wd = 0.1, max_norm = 2)
        let config = OptimizerConfig {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.1,
            clip_norm: Some(2.0),
            ..cfg(OptimizerKind::Adamw)
        };
        let infos = check(
            config,
            &[
                [
                    1.0899996183525256,
                    -1.8800003816474744,
                    0.5949965652775974,
                    2.8700000508864982,
                ],
                [
                    1.176416372365654,
                    -1.7623620622427845,
                    0.6785440760335149,
                    2.7412660926258434,
                ],
                [
                    1.2550535063902073,
                    -1.6484290652221272,
                    0.7280489204915653,
                    2.6137722290551086,
                ],
                [
                    1.3182553918975641,
                    -1.540082788871522,
                    0.7279215052225795,
                    2.4875055592601343,
                ],
                [
                    1.3552671550842716,
                    -1.4396247451389994,
                    0.6916294866209581,
                    2.3624678658979548,
                ],
            ],
        );
        let norms = [
            6.869679759639455,
            6.413059152059841,
            5.973402736062659,
            5.551365628061271,
            5.146913480961684,
        ];
        for (info, norm) in infos.iter().zip(norms) {
            assert_relative_eq!(info.grad_norm, norm, max_relative = TOL);
            assert!(info.clipped);
        }
    }

    #[test]
    fn momentum_zero_is_plain_sgd_as_in_pytorch() {
        // torch.optim.SGD keeps no buffer when momentum = 0, so dampening has no effect.
        let sgd = run(&cfg(OptimizerKind::Sgd), 4);
        let config = OptimizerConfig {
            momentum: 0.0,
            dampening: 0.5,
            ..cfg(OptimizerKind::Momentum)
        };
        assert_eq!(run(&config, 4), sgd);
        let opt = config.build(4).unwrap();
        assert!(opt.state().vectors.is_empty());
        assert_eq!(opt.stable_lr(4.0), Some(0.5));
    }

    #[test]
    fn step_leaves_the_used_gradient_in_grad() {
        let config = OptimizerConfig {
            weight_decay: 0.5,
            clip_norm: Some(1.0),
            ..cfg(OptimizerKind::Sgd)
        };
        let mut opt = config.build(2).unwrap();
        let mut p = vec![1.0, 2.0];
        let mut g = vec![3.0, 4.0]; // norm 5: scaled by 1/(5 + 1e-6)
        let info = opt.step(&mut p, &mut g, 0.1);
        assert_eq!(
            info,
            UpdateInfo {
                grad_norm: 5.0,
                clipped: true
            }
        );
        let coef = 1.0 / (5.0 + 1e-6);
        assert_eq!(g, vec![3.0 * coef + 0.5, 4.0 * coef + 1.0]);
        assert_eq!(opt.steps(), 1);
    }

    #[test]
    fn velocity_is_none_before_the_first_step() {
        let opt = cfg(OptimizerKind::Adam).build(3).unwrap();
        assert_eq!(opt.velocity_norm_sq(), None);
    }

    #[test]
    fn restored_state_continues_bit_for_bit() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Momentum,
            OptimizerKind::Nesterov,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            let config = OptimizerConfig {
                weight_decay: 0.01,
                dampening: 0.0,
                ..cfg(kind)
            };
            let straight = run(&config, 5);

            let mut first = config.build(4).unwrap();
            let mut p = P0.to_vec();
            for _ in 0..2 {
                let mut g = quadratic_grad(&p);
                first.step(&mut p, &mut g, LR);
            }
            let state = first.state();
            assert_eq!(state.steps, 2);
            let names: Vec<&str> = state.vectors.iter().map(|v| v.name.as_str()).collect();
            let want: &[&str] = match kind {
                OptimizerKind::Sgd => &[],
                OptimizerKind::Momentum | OptimizerKind::Nesterov => &["momentum_buffer"],
                OptimizerKind::Adam | OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"],
            };
            assert_eq!(names, want);

            let mut second = config.build(4).unwrap();
            second.restore(&state).unwrap();
            assert_eq!(second.state(), state);
            for want in &straight[2..] {
                let mut g = quadratic_grad(&p);
                let info = second.step(&mut p, &mut g, LR);
                assert_eq!(
                    (&p, info, second.velocity_norm_sq().unwrap()),
                    (&want.0, want.1, want.2)
                );
            }
        }
    }

    #[test]
    fn restore_refuses_a_foreign_state() {
        let mut adam = cfg(OptimizerKind::Adam).build(4).unwrap();
        let momentum = cfg(OptimizerKind::Momentum).build(4).unwrap();
        let err = adam.restore(&momentum.state()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "optimizer_state.kind = momentum: expected adam, the kind of this optimizer"
        );

        let short = cfg(OptimizerKind::Adam).build(3).unwrap().state();
        let err = adam.restore(&short).unwrap_err();
        assert_eq!(
            err.to_string(),
            "optimizer_state.exp_avg.len() = 3: expected 4 (the number of parameters)"
        );

        let mut renamed = adam.state();
        renamed.vectors[1].name = "v".into();
        let err = adam.restore(&renamed).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"optimizer_state.vectors = ["exp_avg", "v"]: expected ["exp_avg", "exp_avg_sq"]"#
        );
        assert_eq!(
            adam.state(),
            cfg(OptimizerKind::Adam).build(4).unwrap().state()
        );
    }

    #[test]
    fn state_is_a_serde_type() {
        fn serde_type<T: Serialize + for<'de> Deserialize<'de>>() {}
        serde_type::<OptimizerState>();
        serde_type::<OptimizerConfig>();
    }

    #[test]
    fn stable_lr_follows_the_quadratic_bounds() {
        let lambda = 4.0;
        let mu = 0.9;
        let opt = |c: OptimizerConfig| c.build(1).unwrap().stable_lr(lambda);
        assert_eq!(opt(cfg(OptimizerKind::Sgd)), Some(2.0 / lambda));
        assert_relative_eq!(
            opt(OptimizerConfig {
                momentum: mu,
                ..cfg(OptimizerKind::Momentum)
            })
            .unwrap(),
            2.0 * (1.0 + mu) / lambda,
            max_relative = 1e-15
        );
        assert_relative_eq!(
            opt(OptimizerConfig {
                momentum: mu,
                ..cfg(OptimizerKind::Nesterov)
            })
            .unwrap(),
            (2.0 + 2.0 * mu) / ((1.0 + 2.0 * mu) * lambda),
            max_relative = 1e-15
        );
        // Dampening τ: heavy ball at rate η(1 − τ).
        assert_relative_eq!(
            opt(OptimizerConfig {
                momentum: mu,
                dampening: 0.5,
                ..cfg(OptimizerKind::Momentum)
            })
            .unwrap(),
            2.0 * (1.0 + mu) / (0.5 * lambda),
            max_relative = 1e-15
        );
        assert_eq!(
            opt(OptimizerConfig {
                momentum: mu,
                dampening: 1.0,
                ..cfg(OptimizerKind::Momentum)
            }),
            Some(f64::INFINITY)
        );
        // Coupled weight decay adds to the curvature.
        assert_eq!(
            opt(OptimizerConfig {
                weight_decay: 1.0,
                ..cfg(OptimizerKind::Sgd)
            }),
            Some(2.0 / 5.0)
        );
        assert_eq!(opt(cfg(OptimizerKind::Adam)), None);
        assert_eq!(opt(cfg(OptimizerKind::Adamw)), None);
    }

    #[test]
    fn accessors_report_the_configuration() {
        let opt = OptimizerConfig {
            momentum: 0.8,
            ..cfg(OptimizerKind::Nesterov)
        }
        .build(7)
        .unwrap();
        assert_eq!(
            (opt.kind(), opt.momentum(), opt.num_params(), opt.steps()),
            (OptimizerKind::Nesterov, 0.8, 7, 0)
        );
        assert_eq!(cfg(OptimizerKind::Adam).build(1).unwrap().momentum(), 0.0);
        assert_eq!(
            opt.state_vectors(),
            vec![("momentum_buffer", &[0.0; 7][..])]
        );
    }

    #[test]
    fn bad_configs_name_the_field_value_and_range() {
        let cases: Vec<(OptimizerConfig, &str)> = vec![
            (
                OptimizerConfig {
                    momentum: 1.5,
                    ..cfg(OptimizerKind::Momentum)
                },
                "optimizer.momentum = 1.5: expected a value in [0, 1)",
            ),
            (
                OptimizerConfig {
                    momentum: 1.0,
                    ..cfg(OptimizerKind::Sgd)
                },
                "optimizer.momentum = 1: expected a value in [0, 1)",
            ),
            (
                OptimizerConfig {
                    dampening: -0.1,
                    ..cfg(OptimizerKind::Momentum)
                },
                "optimizer.dampening = -0.1: expected a value in [0, 1]",
            ),
            (
                OptimizerConfig {
                    beta1: 1.0,
                    ..cfg(OptimizerKind::Adam)
                },
                "optimizer.beta1 = 1: expected a value in [0, 1)",
            ),
            (
                OptimizerConfig {
                    beta2: f64::NAN,
                    ..cfg(OptimizerKind::Adam)
                },
                "optimizer.beta2 = NaN: expected a value in [0, 1)",
            ),
            (
                OptimizerConfig {
                    eps: 0.0,
                    ..cfg(OptimizerKind::Adam)
                },
                "optimizer.eps = 0: expected a positive finite value",
            ),
            (
                OptimizerConfig {
                    weight_decay: -1e-4,
                    ..cfg(OptimizerKind::Adamw)
                },
                "optimizer.weight_decay = -0.0001: expected a finite value ≥ 0",
            ),
            (
                OptimizerConfig {
                    clip_norm: Some(0.0),
                    ..cfg(OptimizerKind::Sgd)
                },
                "optimizer.clip_norm = 0: expected a positive finite norm (or no clip_norm at all)",
            ),
            (
                OptimizerConfig {
                    clip_norm: Some(f64::INFINITY),
                    ..cfg(OptimizerKind::Sgd)
                },
                "optimizer.clip_norm = inf: expected a positive finite norm (or no clip_norm at all)",
            ),
            (
                OptimizerConfig {
                    dampening: 0.1,
                    ..cfg(OptimizerKind::Nesterov)
                },
                "optimizer.dampening = 0.1: expected 0 for kind = \"nesterov\" (PyTorch refuses Nesterov with dampening)",
            ),
            (
                OptimizerConfig {
                    momentum: 0.0,
                    ..cfg(OptimizerKind::Nesterov)
                },
                "optimizer.momentum = 0: expected a value in (0, 1) for kind = \"nesterov\" (PyTorch refuses Nesterov without momentum)",
            ),
        ];
        for (config, message) in cases {
            assert_eq!(config.build(3).unwrap_err().to_string(), message);
        }
    }
}
