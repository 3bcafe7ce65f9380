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

use crate::footprint::Footprint;
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
        self.build_within(&Budget::unlimited())
    }

    /// [`TaskConfig::build`] within a memory budget: a task whose size shows only once its data
    /// files are read (an MLP's input width and classes) is checked against `budget` before
    /// its parameters are allocated.
    pub fn build_within(&self, budget: &Budget) -> Result<Box<dyn Task>, ConfigError> {
        Ok(match self {
            Self::Nqm(c) => Box::new(c.build()?),
            Self::Linreg(c) => Box::new(c.build()?),
            Self::Logreg(c) => Box::new(c.build()?),
            Self::Mlp(c) => Box::new(c.build_within(budget)?),
            Self::Plateau(c) => Box::new(c.build()?),
        })
    }

    /// What the task allocates, as far as its settings tell before any file is read: the
    /// parameters at `words_per_param` `f64` words each, materialized data, the sampler's
    /// epoch permutation of a finite training set.
    pub fn footprint(&self, words_per_param: u128) -> Footprint {
        let mut f = Footprint::new();
        let per_param = words_per_param * 8;
        let mut params = |setting: &str, dim: usize, extra: u128| {
            f.add(
                (setting, dim),
                "parameters and per-parameter buffers",
                dim as u128 + extra,
                per_param,
            );
        };
        match self {
            Self::Nqm(c) => params("task.dim", c.dim, 0),
            Self::Plateau(c) => params("task.dim", c.dim, 0),
            Self::Linreg(c) => {
                params("task.dim", c.dim, 0);
                if let Some(n) = c.train_size {
                    f.add(
                        ("task.train_size", n),
                        "the sampler's epoch permutation",
                        n.into(),
                        8,
                    );
                }
            }
            Self::Logreg(c) => {
                params("task.dim", c.dim, 1);
                if let Some(n) = c.train_size {
                    f.add(
                        ("task.train_size", n),
                        "the sampler's epoch permutation",
                        n.into(),
                        8,
                    );
                }
            }
            Self::Mlp(c) => f.extend(&c.footprint(words_per_param)),
        }
        f
    }
}

/// A memory budget for building a task: the limit in bytes, the run's own allocations outside
/// the task, and the words the run keeps per parameter (see [`crate::footprint`]).
#[derive(Debug, Clone)]
pub struct Budget {
    /// Bytes the run may allocate.
    pub limit: u64,
    /// `f64` words kept per model parameter.
    pub words_per_param: u128,
    /// The run's allocations outside the task (sample indices, …).
    pub run: Footprint,
}

impl Budget {
    /// No limit (tests and tools that build a task directly).
    pub fn unlimited() -> Self {
        Self {
            limit: u64::MAX,
            words_per_param: crate::footprint::WORDS_PER_PARAM,
            run: Footprint::new(),
        }
    }
}
