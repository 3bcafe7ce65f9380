//! The `mlp` task. (STUB: to be implemented.)

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::task::{BatchStats, Evaluation, Scratch, Task};

/// Settings of the `mlp` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Seed of the task's data and initial point.
    pub seed: u64,
}

impl MlpConfig {
    /// Validates and builds the task.
    pub fn build(&self) -> Result<Mlp, ConfigError> {
        unimplemented!()
    }
}

/// The `mlp` task.
#[derive(Debug)]
pub struct Mlp {
    _private: (),
}

impl Task for Mlp {
    fn name(&self) -> &'static str {
        "mlp"
    }
    fn num_params(&self) -> usize {
        unimplemented!()
    }
    fn init_params(&self) -> Vec<f64> {
        unimplemented!()
    }
    fn train_size(&self) -> Option<u64> {
        unimplemented!()
    }
    fn loss_grad(&self, _: &[f64], _: &[u64], _: &mut [f64], _: &mut Scratch) -> BatchStats {
        unimplemented!()
    }
    fn loss(&self, _: &[f64], _: &[u64], _: &mut Scratch) -> BatchStats {
        unimplemented!()
    }
    fn evaluate(&self, _: &[f64], _: &mut Scratch) -> Evaluation {
        unimplemented!()
    }
}
