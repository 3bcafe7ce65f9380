//! Optimizers with PyTorch's update conventions. (STUB: to be implemented.)

use serde::{Deserialize, Serialize};

use crate::ConfigError;

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

/// Optimizer settings, as in a config file's `[optimizer]` table.
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
    pub fn build(&self, num_params: usize) -> Result<Optimizer, ConfigError> {
        let _ = num_params;
        unimplemented!()
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

/// An optimizer with its state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    _private: (),
}

impl Optimizer {
    /// Applies one update with rate `lr` from the **mean** gradient `grad` (which it may modify:
    /// clipping, coupled weight decay).
    pub fn step(&mut self, params: &mut [f64], grad: &mut [f64], lr: f64) -> UpdateInfo {
        let _ = (params, grad, lr);
        unimplemented!()
    }

    /// Squared norm of the velocity `θ_t − θ_{t−1}` of the last update (for the momentum
    /// energy `L + ½|v|²`); `None` before the first step.
    pub fn velocity_norm_sq(&self) -> Option<f64> {
        unimplemented!()
    }

    /// The largest stable rate on a quadratic with top curvature `lambda_max`:
    /// `2/λ` (sgd), `2(1+μ)/λ` (momentum), `(2+2μ)/((1+2μ)λ)` (nesterov); `None` for Adam(W).
    pub fn stable_lr(&self, lambda_max: f64) -> Option<f64> {
        let _ = lambda_max;
        unimplemented!()
    }
}
