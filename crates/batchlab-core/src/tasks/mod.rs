//! The tasks: models with their data.
//!
//! | name      | model                                   | data                               |
//! |-----------|-----------------------------------------|------------------------------------|
//! | `nqm`     | noisy quadratic (Zhang et al. 2019)     | infinite stream of noise draws     |
//! | `linreg`  | linear regression, squared loss         | Gaussian features, label noise     |
//! | `logreg`  | binary logistic regression              | Gaussian classes, or separable     |
//! | `mlp`     | ReLU MLP, softmax cross-entropy         | teacher net, Gaussian mixture, IDX, CSV |
//! | `plateau` | `Σ ln(1 + x_i²)` with sample noise      | infinite stream of noise draws     |

use serde::{Deserialize, Serialize};

use crate::{ConfigError, Task};

pub mod data;
pub mod linreg;
pub mod logreg;
pub mod mlp;
pub mod nqm;
pub mod plateau;

/// A task as configured in a config file's `[task]` table, selected by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TaskConfig {
    /// Noisy quadratic model.
    Nqm(nqm::NqmConfig),
    /// Linear regression.
    Linreg(linreg::LinregConfig),
    /// Logistic regression.
    Logreg(logreg::LogregConfig),
    /// ReLU MLP classifier.
    Mlp(mlp::MlpConfig),
    /// `ln(1 + x²)` plateau.
    Plateau(plateau::PlateauConfig),
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self::Nqm(nqm::NqmConfig::default())
    }
}

impl TaskConfig {
    /// The task's short name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Nqm(_) => "nqm",
            Self::Linreg(_) => "linreg",
            Self::Logreg(_) => "logreg",
            Self::Mlp(_) => "mlp",
            Self::Plateau(_) => "plateau",
        }
    }

    /// Validates the configuration and builds the task (reading data files if it names any).
    pub fn build(&self) -> Result<Box<dyn Task>, ConfigError> {
        Ok(match self {
            Self::Nqm(c) => Box::new(c.build()?),
            Self::Linreg(c) => Box::new(c.build()?),
            Self::Logreg(c) => Box::new(c.build()?),
            Self::Mlp(c) => Box::new(c.build()?),
            Self::Plateau(c) => Box::new(c.build()?),
        })
    }
}
