//! The `mlp` task: a ReLU multilayer perceptron with softmax cross-entropy.
//!
//! ```text
//!   x ─▶ [W₁ x + b₁]₊ ─▶ [W₂ · + b₂]₊ ─▶ … ─▶ W_L · + b_L = z ─▶ ln Σ_k e^{z_k} − z_y
//!        (widths: input, hidden…, classes)
//! ```
//!
//! **Parameter layout** (the flat `&[f64]` of the [`Task`] boundary): layer by layer from the
//! input side, each layer's weight `W_l` (`out × in`, row-major) followed by its bias `b_l`
//! (`out`). [`Mlp::layer_offsets`] gives where each starts.
//!
//! **Data.** The training set is materialized when the task is built: sample `i` is row `i` of
//! it. Synthetic sources (a random teacher network, a Gaussian mixture) draw sample `i` from
//! `rng(seed, Stream::TrainSample, i)` (held-out: `Stream::EvalSample`) and their fixed parts
//! from `Stream::TaskFixed`; files are read with [`super::data`].
//!
//! **Compute.** A batch is processed in chunks of [`CHUNK`] rows, activations row-major
//! (`rows × width`), every product a single-threaded `faer` matmul:
//!
//! ```text
//!   forward   A_l  = relu(A_{l−1} W_lᵀ + 1 b_lᵀ)          (rows × out)
//!   loss      D_L  = softmax(A_L) − onehot(y)
//!   backward  ∇W_l = D_lᵀ A_{l−1},  ∇b_l = 1ᵀ D_l,  D_{l−1} = (D_l W_l) ⊙ [A_{l−1} > 0]
//! ```
//!
//! in the configured [`Precision`] (`f32` like PyTorch, or `f64`); each chunk's gradient is added
//! into the caller's `f64` gradient. Chunk boundaries depend only on the position in the
//! sample list, and the matmuls are sequential, so equal inputs give bit-identical outputs.
//! Hessian-vector products are central differences computed in `f64` whatever the precision.

use std::path::{Path, PathBuf};

use faer::linalg::matmul::matmul;
use faer::traits::RealField;
use faer::{Accum, MatMut, MatRef, Par};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::Budget;
use super::data::{self, Dataset, Scale};
use crate::ConfigError;
use crate::error::ensure;
use crate::footprint::Footprint;
use crate::rng::{Stream, rng};
use crate::task::{BatchStats, Evaluation, Scratch, Task, central_difference_hvp};

/// Rows processed at once: the batch dimension of every matmul (and the memory of the
/// activations, `CHUNK × Σ widths` numbers).
pub const CHUNK: usize = 256;

/// Settings of the `mlp` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Widths of the hidden layers, input side first (each ≥ 1; may be empty: softmax
    /// regression).
    pub hidden: Vec<usize>,
    /// Where the data comes from; the input width and number of classes follow from it.
    pub data: MlpData,
    /// Arithmetic of the forward and backward passes.
    pub precision: Precision,
    /// Seed of the synthetic data, the held-out split of files, and the initial point.
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden: vec![256, 256],
            data: MlpData::default(),
            precision: Precision::F32,
            seed: 0,
        }
    }
}

/// Arithmetic of the forward and backward passes. Parameters and gradients cross the
/// [`Task`] boundary as `f64` either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision, as PyTorch trains by default: about twice as fast.
    #[default]
    F32,
    /// Double precision: for exact gradient checks.
    F64,
}

/// The data of the `mlp` task, selected by `source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum MlpData {
    /// Labels given by a fixed random ReLU teacher network on Gaussian inputs.
    Teacher(TeacherData),
    /// A mixture of Gaussian classes.
    Mixture(MixtureData),
    /// MNIST-format IDX files.
    Idx(IdxData),
    /// A CSV file with a header row.
    Csv(CsvData),
}

impl Default for MlpData {
    fn default() -> Self {
        Self::Teacher(TeacherData::default())
    }
}

/// A teacher network: inputs `x ~ N(0, I)`, label `argmax` of the logits of a fixed random ReLU
/// network (He-normal weights from `Stream::TaskFixed`, index = layer; zero biases).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherData {
    /// Input width.
    pub input_dim: usize,
    /// Number of classes (≥ 2).
    pub classes: usize,
    /// Hidden widths of the teacher.
    pub teacher_hidden: Vec<usize>,
    /// Training samples, materialized when the task is built.
    pub train_size: usize,
    /// Held-out samples.
    pub eval_size: usize,
    /// Probability that a training label is replaced by a uniformly drawn class (possibly the
    /// same one), in `[0, 1]`. Held-out labels stay clean; the features do not depend on it.
    pub label_noise: f64,
}

impl Default for TeacherData {
    fn default() -> Self {
        Self {
            input_dim: 784,
            classes: 10,
            teacher_hidden: vec![128],
            train_size: 16384,
            eval_size: 2048,
            label_noise: 0.0,
        }
    }
}

/// A Gaussian mixture: label `y` uniform over the classes, `x = μ_y + noise · N(0, I)`, with
/// class means `μ_k ~ N(0, separation²/input_dim · I)` (so `|μ_k| ≈ separation`) drawn from
/// `Stream::TaskFixed`, index = class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixtureData {
    /// Input width.
    pub input_dim: usize,
    /// Number of classes (≥ 2).
    pub classes: usize,
    /// Typical norm of a class mean.
    pub separation: f64,
    /// Standard deviation of every feature around its class mean.
    pub noise: f64,
    /// Training samples, materialized when the task is built.
    pub train_size: usize,
    /// Held-out samples.
    pub eval_size: usize,
}

impl Default for MixtureData {
    fn default() -> Self {
        Self {
            input_dim: 784,
            classes: 10,
            separation: 3.0,
            noise: 1.0,
            train_size: 16384,
            eval_size: 2048,
        }
    }
}

/// MNIST-format IDX files (uncompressed `idx3-ubyte` images, `idx1-ubyte` labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdxData {
    /// Training images.
    pub train_images: PathBuf,
    /// Training labels.
    pub train_labels: PathBuf,
    /// Held-out images (with `test_labels`); without them `holdout` of the training set is
    /// held out.
    pub test_images: Option<PathBuf>,
    /// Held-out labels.
    pub test_labels: Option<PathBuf>,
    /// Feature scaling, fitted on the training set.
    pub scale: Scale,
    /// Fraction of the training file held out when no test files are given, in `(0, 1)`.
    pub holdout: f64,
}

impl Default for IdxData {
    fn default() -> Self {
        Self {
            train_images: PathBuf::new(),
            train_labels: PathBuf::new(),
            test_images: None,
            test_labels: None,
            scale: Scale::Max,
            holdout: 0.2,
        }
    }
}

/// A CSV file: a header row, a label column (non-negative integers) and numeric features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CsvData {
    /// The training file.
    pub path: PathBuf,
    /// A held-out file with the same columns; without it `holdout` of the training file is
    /// held out.
    pub test_path: Option<PathBuf>,
    /// Header name of the label column; by default the column named `label`, else the first.
    pub label_column: Option<String>,
    /// Feature scaling, fitted on the training set.
    pub scale: Scale,
    /// Fraction of the training file held out when no test file is given, in `(0, 1)`.
    pub holdout: f64,
}

impl Default for CsvData {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            test_path: None,
            label_column: None,
            scale: Scale::Max,
            holdout: 0.2,
        }
    }
}

fn ensure_path(field: &str, p: &Path) -> Result<(), ConfigError> {
    ensure(
        !p.as_os_str().is_empty(),
        field,
        "\"\"",
        "the path of a data file",
    )
}

fn ensure_holdout(field: &str, h: f64) -> Result<(), ConfigError> {
    ensure(
        h > 0.0 && h < 1.0,
        field,
        h,
        "a fraction in (0, 1), used when no test file is given",
    )
}

fn ensure_synthetic(
    input_dim: usize,
    classes: usize,
    train_size: usize,
    eval_size: usize,
) -> Result<(), ConfigError> {
    ensure(
        input_dim >= 1,
        "task.data.input_dim",
        input_dim,
        "at least 1",
    )?;
    ensure(classes >= 2, "task.data.classes", classes, "at least 2")?;
    ensure(
        train_size >= 1,
        "task.data.train_size",
        train_size,
        "at least 1",
    )?;
    ensure(
        eval_size >= 1,
        "task.data.eval_size",
        eval_size,
        "at least 1",
    )
}

impl MlpData {
    /// Validates the settings and produces `(train, held_out)`, reading files if any.
    pub fn load(&self, seed: u64) -> Result<(Dataset, Dataset), ConfigError> {
        let (train, eval) = match self {
            Self::Teacher(t) => {
                ensure_synthetic(t.input_dim, t.classes, t.train_size, t.eval_size)?;
                ensure(
                    t.teacher_hidden.iter().all(|&w| w >= 1),
                    "task.data.teacher_hidden",
                    format!("{:?}", t.teacher_hidden),
                    "widths of at least 1",
                )?;
                ensure(
                    (0.0..=1.0).contains(&t.label_noise),
                    "task.data.label_noise",
                    t.label_noise,
                    "a probability in [0, 1]",
                )?;
                teacher_data(t, seed)
            }
            Self::Mixture(m) => {
                ensure_synthetic(m.input_dim, m.classes, m.train_size, m.eval_size)?;
                ensure(
                    m.separation.is_finite() && m.separation >= 0.0,
                    "task.data.separation",
                    m.separation,
                    "a finite number ≥ 0",
                )?;
                ensure(
                    m.noise.is_finite() && m.noise >= 0.0,
                    "task.data.noise",
                    m.noise,
                    "a finite number ≥ 0",
                )?;
                mixture_data(m, seed)
            }
            Self::Idx(c) => {
                ensure_path("task.data.train_images", &c.train_images)?;
                ensure_path("task.data.train_labels", &c.train_labels)?;
                let test_files = match (&c.test_images, &c.test_labels) {
                    (Some(i), Some(l)) => Some((i, l)),
                    (None, None) => {
                        ensure_holdout("task.data.holdout", c.holdout)?;
                        None
                    }
                    (i, _) => {
                        let (given, missing) = if i.is_some() {
                            ("test_images", "test_labels")
                        } else {
                            ("test_labels", "test_images")
                        };
                        return Err(ConfigError::invalid(
                            format!("task.data.{missing}"),
                            "(missing)",
                            format!("a path, since task.data.{given} is given (or neither)"),
                        ));
                    }
                };
                let train = data::load_idx(&c.train_images, &c.train_labels)?;
                let test = match test_files {
                    Some((i, l)) => Some((data::load_idx(i, l)?, i.clone())),
                    None => None,
                };
                data::prepare(train, test, c.holdout, c.scale, seed)?
            }
            Self::Csv(c) => {
                ensure_path("task.data.path", &c.path)?;
                if c.test_path.is_none() {
                    ensure_holdout("task.data.holdout", c.holdout)?;
                }
                let label = c.label_column.as_deref();
                let train = data::load_csv(&c.path, label)?;
                let test = match &c.test_path {
                    Some(p) => Some((data::load_csv(p, label)?, p.clone())),
                    None => None,
                };
                data::prepare(train, test, c.holdout, c.scale, seed)?
            }
        };
        if train.classes < 2 {
            return Err(ConfigError::invalid(
                "task.data",
                format!("{} class(es) in the training labels", train.classes),
                "labels of at least 2 classes",
            ));
        }
        Ok((train, eval))
    }
}

/// `n` samples of `dim` features, row `i` and its label filled by `fill` from
/// `rng(seed, stream, i)`.
fn synthetic(
    n: usize,
    dim: usize,
    classes: usize,
    seed: u64,
    stream: Stream,
    mut fill: impl FnMut(&mut ChaCha8Rng, &mut [f32]) -> u32,
) -> Dataset {
    let mut features = vec![0f32; n * dim];
    let labels = features
        .chunks_exact_mut(dim)
        .enumerate()
        .map(|(i, row)| fill(&mut rng(seed, stream, i as u64), row))
        .collect();
    Dataset {
        features,
        labels,
        n,
        dim,
        classes,
    }
}

fn normal(r: &mut impl Rng) -> f64 {
    StandardNormal.sample(r)
}

fn teacher_data(t: &TeacherData, seed: u64) -> (Dataset, Dataset) {
    let widths: Vec<usize> = std::iter::once(t.input_dim)
        .chain(t.teacher_hidden.iter().copied())
        .chain([t.classes])
        .collect();
    let teacher = he_init(&widths, seed, Stream::TaskFixed);
    // After sample i's features, its stream decides whether its label is replaced (and by
    // what): `u32::MAX` marks a clean label until the teacher has labelled every row.
    let draw = |noise: f64| {
        move |r: &mut ChaCha8Rng, row: &mut [f32]| {
            row.iter_mut().for_each(|x| *x = normal(r) as f32);
            let (u, class) = (r.random::<f64>(), r.random_range(0..t.classes as u32));
            if u < noise { class } else { u32::MAX }
        }
    };
    let mut train = synthetic(
        t.train_size,
        t.input_dim,
        t.classes,
        seed,
        Stream::TrainSample,
        draw(t.label_noise),
    );
    let mut eval = synthetic(
        t.eval_size,
        t.input_dim,
        t.classes,
        seed,
        Stream::EvalSample,
        draw(0.0),
    );
    for set in [&mut train, &mut eval] {
        let clean = predict(&widths, &teacher, set);
        for (y, c) in set.labels.iter_mut().zip(clean) {
            if *y == u32::MAX {
                *y = c;
            }
        }
    }
    (train, eval)
}

fn mixture_data(m: &MixtureData, seed: u64) -> (Dataset, Dataset) {
    let sd = m.separation / (m.input_dim as f64).sqrt();
    let means: Vec<Vec<f64>> = (0..m.classes)
        .map(|k| {
            let mut r = rng(seed, Stream::TaskFixed, k as u64);
            (0..m.input_dim).map(|_| sd * normal(&mut r)).collect()
        })
        .collect();
    let draw = |r: &mut ChaCha8Rng, row: &mut [f32]| {
        let y = r.random_range(0..m.classes as u32);
        for (x, mu) in row.iter_mut().zip(&means[y as usize]) {
            *x = (mu + m.noise * normal(r)) as f32;
        }
        y
    };
    let train = synthetic(
        m.train_size,
        m.input_dim,
        m.classes,
        seed,
        Stream::TrainSample,
        draw,
    );
    let eval = synthetic(
        m.eval_size,
        m.input_dim,
        m.classes,
        seed,
        Stream::EvalSample,
        draw,
    );
    (train, eval)
}

/// He-normal weights `N(0, 2/in)` from `rng(seed, stream, layer)`, zero biases, in the flat
/// layout of the module docs.
fn he_init(widths: &[usize], seed: u64, stream: Stream) -> Vec<f64> {
    let mut p = Vec::with_capacity(num_params(widths));
    for (l, w) in widths.windows(2).enumerate() {
        let (fan_in, fan_out) = (w[0], w[1]);
        let sd = (2.0 / fan_in as f64).sqrt();
        let mut r = rng(seed, stream, l as u64);
        p.extend((0..fan_in * fan_out).map(|_| sd * normal(&mut r)));
        p.extend(std::iter::repeat_n(0.0, fan_out));
    }
    p
}

fn num_params(widths: &[usize]) -> usize {
    widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum()
}

/// [`num_params`] without overflow, for sizes not yet checked.
fn param_count(widths: &[usize]) -> u128 {
    widths
        .windows(2)
        .map(|w| (w[0] as u128 + 1).saturating_mul(w[1] as u128))
        .fold(0, u128::saturating_add)
}

/// Adds each layer's parameters (at `words` `f64` words each) to `f`, under `settings[k]`.
fn layer_footprint(
    f: &mut Footprint,
    widths: &[usize],
    settings: &[(&'static str, String)],
    words: u128,
) {
    for (w, (setting, value)) in widths.windows(2).zip(settings) {
        f.add(
            (*setting, value),
            format!("parameters of a {}×{} layer and their buffers", w[0], w[1]),
            param_count(w),
            words * 8,
        );
    }
}

/// The argmax class of a network on every row of `set` (f64 arithmetic).
fn predict(widths: &[usize], params: &[f64], set: &Dataset) -> Vec<u32> {
    let mut bufs = Buffers::<f64>::default();
    bufs.params.extend_from_slice(params);
    let k = *widths.last().expect("at least input and output widths");
    let mut labels = Vec::with_capacity(set.n);
    for start in (0..set.n).step_by(CHUNK) {
        let rows = CHUNK.min(set.n - start);
        bufs.size(widths, rows);
        for (dst, src) in bufs.acts[0]
            .chunks_exact_mut(widths[0])
            .zip(set.features[start * set.dim..].chunks_exact(set.dim))
        {
            dst.iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = f64::from(s));
        }
        forward(widths, &bufs.params, &mut bufs.acts, rows);
        labels.extend(
            bufs.acts[widths.len() - 1][..rows * k]
                .chunks_exact(k)
                .map(|z| argmax(z) as u32),
        );
    }
    labels
}

impl MlpConfig {
    /// Validates and builds the task, reading or generating its data.
    pub fn build(&self) -> Result<Mlp, ConfigError> {
        self.build_within(&Budget::unlimited())
    }

    /// What the settings say the task allocates before any file is read: parameters (of the
    /// hidden layers alone when the input width and classes come from a file), synthetic
    /// datasets, the teacher network, the sampler's epoch permutation.
    pub fn footprint(&self, words_per_param: u128) -> Footprint {
        let mut f = Footprint::new();
        let synthetic = match &self.data {
            MlpData::Teacher(t) => {
                let teacher: Vec<usize> = std::iter::once(t.input_dim)
                    .chain(t.teacher_hidden.iter().copied())
                    .chain([t.classes])
                    .collect();
                f.add(
                    (
                        "task.data.teacher_hidden",
                        format!("{:?}", t.teacher_hidden),
                    ),
                    "the teacher network's parameters",
                    param_count(&teacher),
                    8,
                );
                Some((t.input_dim, t.classes, t.train_size, t.eval_size))
            }
            MlpData::Mixture(m) => {
                f.add(
                    ("task.data.classes", m.classes),
                    "the class means",
                    (m.classes as u128).saturating_mul(m.input_dim as u128),
                    8,
                );
                Some((m.input_dim, m.classes, m.train_size, m.eval_size))
            }
            MlpData::Idx(_) | MlpData::Csv(_) => None,
        };
        match synthetic {
            Some((input, classes, train, eval)) => {
                let rows = (train as u128).saturating_add(eval as u128);
                f.add(
                    ("task.data.train_size", train),
                    "the synthetic datasets",
                    rows.saturating_mul(input as u128 + 1),
                    4,
                );
                f.add(
                    ("task.data.train_size", train),
                    "the sampler's epoch permutation",
                    train as u128,
                    8,
                );
                let widths: Vec<usize> = std::iter::once(input)
                    .chain(self.hidden.iter().copied())
                    .chain([classes])
                    .collect();
                layer_footprint(
                    &mut f,
                    &widths,
                    &self.layer_settings(&widths, None),
                    words_per_param,
                );
            }
            None => {
                let hidden = &self.hidden;
                if hidden.len() >= 2 {
                    let inner: Vec<usize> = hidden.clone();
                    let settings = vec![("task.hidden", format!("{hidden:?}")); inner.len() - 1];
                    layer_footprint(&mut f, &inner, &settings, words_per_param);
                }
            }
        }
        f
    }

    /// For each layer of `widths` (input, hidden…, classes), the setting behind its size: the
    /// side of the layer with the larger width.
    fn layer_settings(&self, widths: &[usize], file: Option<&Path>) -> Vec<(&'static str, String)> {
        let last = widths.len() - 1;
        let side = |k: usize| -> (&'static str, String) {
            let what = if k == 0 { "features" } else { "classes" };
            match file {
                _ if k != 0 && k != last => ("task.hidden", format!("{:?}", self.hidden)),
                Some(p) => (
                    "task.data",
                    format!("{} {what} in {}", widths[k], p.display()),
                ),
                None if k == 0 => ("task.data.input_dim", widths[k].to_string()),
                None => ("task.data.classes", widths[k].to_string()),
            }
        };
        widths
            .windows(2)
            .enumerate()
            .map(|(k, w)| if w[0] >= w[1] { side(k) } else { side(k + 1) })
            .collect()
    }

    /// Validates and builds the task within a memory budget: the parameters are counted once
    /// the data (and so the input width and classes) is known, before they are allocated.
    pub fn build_within(&self, budget: &Budget) -> Result<Mlp, ConfigError> {
        ensure(
            self.hidden.iter().all(|&w| w >= 1),
            "task.hidden",
            format!("{:?}", self.hidden),
            "widths of at least 1",
        )?;
        let (train, eval) = self.data.load(self.seed)?;
        let classes = train.classes.max(eval.classes);
        let widths: Vec<usize> = std::iter::once(train.dim)
            .chain(self.hidden.iter().copied())
            .chain([classes])
            .collect();
        let file = match &self.data {
            MlpData::Csv(c) => Some(c.path.as_path()),
            MlpData::Idx(c) => Some(c.train_images.as_path()),
            _ => None,
        };
        let mut f = budget.run.clone();
        layer_footprint(
            &mut f,
            &widths,
            &self.layer_settings(&widths, file),
            budget.words_per_param,
        );
        f.check(budget.limit)?;
        Ok(Mlp::from_datasets(
            &self.hidden,
            train,
            eval,
            self.precision,
            self.seed,
        ))
    }
}

/// The `mlp` task. See the [module docs](self).
pub struct Mlp {
    widths: Vec<usize>,
    train: Dataset,
    eval: Dataset,
    eval_index: Vec<u64>,
    precision: Precision,
    seed: u64,
}

impl std::fmt::Debug for Mlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlp")
            .field("widths", &self.widths)
            .field("train_size", &self.train.n)
            .field("eval_size", &self.eval.n)
            .field("precision", &self.precision)
            .field("seed", &self.seed)
            .finish()
    }
}

impl Mlp {
    /// An MLP with hidden widths `hidden` on the given data (its input width is `train.dim`,
    /// its classes `max(train.classes, eval.classes)`), initialized from `seed`.
    ///
    /// # Panics
    /// If the two datasets differ in width, or a hidden width is 0.
    pub fn from_datasets(
        hidden: &[usize],
        mut train: Dataset,
        mut eval: Dataset,
        precision: Precision,
        seed: u64,
    ) -> Mlp {
        assert_eq!(
            train.dim, eval.dim,
            "train and held-out data of different widths"
        );
        assert!(
            hidden.iter().all(|&w| w >= 1),
            "hidden widths must be at least 1: {hidden:?}"
        );
        let classes = train.classes.max(eval.classes);
        (train.classes, eval.classes) = (classes, classes);
        let widths = std::iter::once(train.dim)
            .chain(hidden.iter().copied())
            .chain([classes])
            .collect();
        let eval_index = (0..eval.n as u64).collect();
        Mlp {
            widths,
            train,
            eval,
            eval_index,
            precision,
            seed,
        }
    }

    /// Layer widths: input, hidden…, classes.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Where each layer's weight starts in the flat parameter vector; its bias follows the
    /// `out × in` weights.
    pub fn layer_offsets(&self) -> Vec<usize> {
        self.widths
            .windows(2)
            .scan(0, |o, w| Some(std::mem::replace(o, *o + (w[0] + 1) * w[1])))
            .collect()
    }

    /// The training set (sample `i` is row `i`).
    pub fn train_data(&self) -> &Dataset {
        &self.train
    }

    /// The held-out set.
    pub fn eval_data(&self) -> &Dataset {
        &self.eval
    }

    /// The arithmetic of the forward and backward passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Loss (and, with `grad`, the summed gradient) over `samples` of `set` in precision `T`.
    fn run<T: Real>(
        &self,
        params: &[f64],
        set: &Dataset,
        samples: &[u64],
        mut grad: Option<&mut [f64]>,
        scratch: &mut Scratch,
        mut ready: Option<Ready<'_>>,
    ) -> BatchStats {
        assert_eq!(
            params.len(),
            self.num_params(),
            "parameter vector of the wrong length"
        );
        let widths = &self.widths[..];
        let (d, k, layers) = (widths[0], widths[widths.len() - 1], widths.len() - 1);
        let bufs = T::buffers(scratch.get(MlpScratch::default));
        bufs.params.clear();
        bufs.params.extend(params.iter().map(|&p| T::of_f64(p)));
        let hidden_units: usize = widths[1..layers].iter().sum();
        bufs.peak.clear();
        bufs.peak.resize(hidden_units, T::default());
        let (mut loss_sum, mut correct) = (0.0, 0);
        for (c, chunk) in samples.chunks(CHUNK).enumerate() {
            let rows = chunk.len();
            bufs.size(widths, rows);
            for (dst, &s) in bufs.acts[0].chunks_exact_mut(d).zip(chunk) {
                let s = usize::try_from(s)
                    .ok()
                    .filter(|&s| s < set.n)
                    .unwrap_or_else(|| panic!("sample {s} of a set of {}", set.n));
                dst.iter_mut()
                    .zip(set.row(s))
                    .for_each(|(x, &f)| *x = T::of_f32(f));
            }
            forward(widths, &bufs.params, &mut bufs.acts, rows);
            let mut unit = 0;
            for (a, &w) in bufs.acts[1..layers].iter().zip(&widths[1..layers]) {
                let peak = &mut bufs.peak[unit..unit + w];
                for row in a[..rows * w].chunks_exact(w) {
                    peak.iter_mut()
                        .zip(row)
                        .for_each(|(p, &x)| *p = if x > *p { x } else { *p });
                }
                unit += w;
            }
            let labels = chunk.iter().map(|&s| set.labels[s as usize]);
            let (l, ok) = softmax_xent(
                &mut bufs.acts[layers][..rows * k],
                k,
                labels,
                grad.is_some(),
            );
            loss_sum += l;
            correct += ok;
            if let Some(g) = grad.as_deref_mut() {
                // Each layer's gradient is added in as soon as the backward pass has it; on
                // the last chunk that layer is final and goes to `ready`.
                let last = (c + 1) * CHUNK >= samples.len();
                backward(widths, bufs, rows, &mut |range, layer: &[T]| {
                    let g = &mut g[range.clone()];
                    if c == 0 {
                        g.iter_mut().zip(layer).for_each(|(g, &x)| *g = x.to_f64());
                    } else {
                        g.iter_mut().zip(layer).for_each(|(g, &x)| *g += x.to_f64());
                    }
                    if last && let Some(r) = ready.as_mut() {
                        r(range, g);
                    }
                });
            }
        }
        if let Some(g) = grad
            && samples.is_empty()
        {
            g.fill(0.0);
            if let Some(r) = ready.as_mut() {
                for range in layer_ranges(widths).into_iter().rev() {
                    r(range.clone(), &g[range]);
                }
            }
        }
        let dead = bufs.peak.iter().filter(|&&p| p <= T::default()).count();
        BatchStats {
            loss_sum,
            correct: Some(correct),
            dead_relu: Some(if hidden_units == 0 || samples.is_empty() {
                0.0
            } else {
                dead as f64 / hidden_units as f64
            }),
        }
    }

    /// [`Mlp::run`] in the precision asked for, on `samples` of `set`.
    fn dispatch(
        &self,
        exact: bool,
        params: &[f64],
        (set, samples): (&Dataset, &[u64]),
        grad: Option<&mut [f64]>,
        scratch: &mut Scratch,
        ready: Option<Ready<'_>>,
    ) -> BatchStats {
        match (exact, self.precision) {
            (false, Precision::F32) => self.run::<f32>(params, set, samples, grad, scratch, ready),
            _ => self.run::<f64>(params, set, samples, grad, scratch, ready),
        }
    }
}

impl Task for Mlp {
    fn name(&self) -> &'static str {
        "mlp"
    }
    fn num_params(&self) -> usize {
        num_params(&self.widths)
    }
    fn init_params(&self) -> Vec<f64> {
        he_init(&self.widths, self.seed, Stream::Init)
    }
    fn train_size(&self) -> Option<u64> {
        Some(self.train.n as u64)
    }
    fn loss_grad(
        &self,
        params: &[f64],
        samples: &[u64],
        grad: &mut [f64],
        scratch: &mut Scratch,
    ) -> BatchStats {
        self.dispatch(
            false,
            params,
            (&self.train, samples),
            Some(grad),
            scratch,
            None,
        )
    }
    fn buckets(&self) -> Vec<std::ops::Range<usize>> {
        // The backward pass finishes the last layer first.
        layer_ranges(&self.widths).into_iter().rev().collect()
    }
    fn loss_grad_streamed(
        &self,
        params: &[f64],
        samples: &[u64],
        grad: &mut [f64],
        scratch: &mut Scratch,
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[f64]),
    ) -> BatchStats {
        self.dispatch(
            false,
            params,
            (&self.train, samples),
            Some(grad),
            scratch,
            Some(ready),
        )
    }
    fn loss(&self, params: &[f64], samples: &[u64], scratch: &mut Scratch) -> BatchStats {
        self.dispatch(false, params, (&self.train, samples), None, scratch, None)
    }
    fn evaluate(&self, params: &[f64], scratch: &mut Scratch) -> Evaluation {
        let s = self.dispatch(
            false,
            params,
            (&self.eval, &self.eval_index),
            None,
            scratch,
            None,
        );
        let n = self.eval.n.max(1) as f64;
        Evaluation {
            loss: s.loss_sum / n,
            accuracy: s.correct.map(|c| c as f64 / n),
        }
    }
    fn hvp(
        &self,
        params: &[f64],
        samples: &[u64],
        v: &[f64],
        out: &mut [f64],
        scratch: &mut Scratch,
    ) {
        central_difference_hvp(&InF64(self), params, samples, v, out, scratch);
    }
}

/// The task computed in `f64` whatever its precision: central differences of an `f32`
/// gradient would be swamped by rounding.
struct InF64<'a>(&'a Mlp);

impl Task for InF64<'_> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn num_params(&self) -> usize {
        self.0.num_params()
    }
    fn init_params(&self) -> Vec<f64> {
        self.0.init_params()
    }
    fn train_size(&self) -> Option<u64> {
        self.0.train_size()
    }
    fn loss_grad(
        &self,
        params: &[f64],
        samples: &[u64],
        grad: &mut [f64],
        scratch: &mut Scratch,
    ) -> BatchStats {
        self.0.dispatch(
            true,
            params,
            (&self.0.train, samples),
            Some(grad),
            scratch,
            None,
        )
    }
    fn loss(&self, params: &[f64], samples: &[u64], scratch: &mut Scratch) -> BatchStats {
        self.0
            .dispatch(true, params, (&self.0.train, samples), None, scratch, None)
    }
    fn evaluate(&self, params: &[f64], scratch: &mut Scratch) -> Evaluation {
        self.0.evaluate(params, scratch)
    }
}

// ---------------------------------------------------------------------------------------------
// Numeric kernels, generic over the compute precision
// ---------------------------------------------------------------------------------------------

/// `f32` or `f64`.
trait Real: RealField + Copy + Default + Send + Sync + 'static {
    fn of_f64(x: f64) -> Self;
    fn of_f32(x: f32) -> Self;
    fn to_f64(self) -> f64;
    fn exp_(self) -> Self;
    fn buffers(s: &mut MlpScratch) -> &mut Buffers<Self>;
}

impl Real for f32 {
    fn of_f64(x: f64) -> Self {
        x as f32
    }
    fn of_f32(x: f32) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn exp_(self) -> Self {
        self.exp()
    }
    fn buffers(s: &mut MlpScratch) -> &mut Buffers<Self> {
        &mut s.f32
    }
}

impl Real for f64 {
    fn of_f64(x: f64) -> Self {
        x
    }
    fn of_f32(x: f32) -> Self {
        f64::from(x)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp_(self) -> Self {
        self.exp()
    }
    fn buffers(s: &mut MlpScratch) -> &mut Buffers<Self> {
        &mut s.f64
    }
}

/// The scratch space of the `mlp` task: buffers for either precision (the `f64` ones also
/// serve Hessian-vector products of an `f32` task).
#[derive(Default)]
struct MlpScratch {
    f32: Buffers<f32>,
    f64: Buffers<f64>,
}

/// Buffers of one precision; they only grow.
#[derive(Default)]
struct Buffers<T> {
    /// The parameters in precision `T`.
    params: Vec<T>,
    /// One chunk's summed gradient.
    grad: Vec<T>,
    /// `acts[0]` the chunk's inputs, `acts[l]` layer `l`'s output (`rows × widths[l]`); the
    /// last holds logits, then their gradient.
    acts: Vec<Vec<T>>,
    /// Two `rows × max hidden width` buffers for the backward pass.
    deltas: [Vec<T>; 2],
    /// Per hidden unit: its largest output over the batch so far (0: dead so far).
    peak: Vec<T>,
}

impl<T: Real> Buffers<T> {
    /// Sizes the buffers for a chunk of `rows` samples (no allocation once large enough).
    fn size(&mut self, widths: &[usize], rows: usize) {
        self.acts.resize_with(widths.len(), Vec::new);
        for (a, &w) in self.acts.iter_mut().zip(widths) {
            a.resize(rows * w, T::default());
        }
        let widest = widths[1..widths.len() - 1]
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        for d in &mut self.deltas {
            d.resize(rows * widest, T::default());
        }
        self.grad.resize(num_params(widths), T::default());
    }
}

/// Splits layer `l`'s weight (`out × in`, row-major) and bias from the flat parameters.
fn layer<'a, T>(widths: &[usize], params: &'a [T], l: usize) -> (MatRef<'a, T>, &'a [T]) {
    let off: usize = widths[..l + 1].windows(2).map(|w| (w[0] + 1) * w[1]).sum();
    let (fan_in, fan_out) = (widths[l], widths[l + 1]);
    let w = &params[off..off + fan_in * fan_out];
    let b = &params[off + fan_in * fan_out..off + (fan_in + 1) * fan_out];
    (MatRef::from_row_major_slice(w, fan_out, fan_in), b)
}

/// Each layer's parameters (weights then biases), in layer order.
fn layer_ranges(widths: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut off = 0;
    widths
        .windows(2)
        .map(|w| {
            let r = off..off + (w[0] + 1) * w[1];
            off = r.end;
            r
        })
        .collect()
}

/// Where a streamed gradient's finished layers go.
type Ready<'a> = &'a mut dyn FnMut(std::ops::Range<usize>, &[f64]);

fn layer_mut<'a, T>(
    widths: &[usize],
    params: &'a mut [T],
    l: usize,
) -> (MatMut<'a, T>, &'a mut [T]) {
    let off: usize = widths[..l + 1].windows(2).map(|w| (w[0] + 1) * w[1]).sum();
    let (fan_in, fan_out) = (widths[l], widths[l + 1]);
    let (w, b) = params[off..off + (fan_in + 1) * fan_out].split_at_mut(fan_in * fan_out);
    (MatMut::from_row_major_slice_mut(w, fan_out, fan_in), b)
}

/// `dst (accum)= lhs · rhs`, single-threaded.
fn gemm<T: Real>(dst: MatMut<'_, T>, accum: Accum, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>) {
    matmul(dst, accum, lhs, rhs, T::of_f64(1.0), Par::Seq);
}

/// Forward pass of `rows` samples whose inputs are in `acts[0]`.
fn forward<T: Real>(widths: &[usize], params: &[T], acts: &mut [Vec<T>], rows: usize) {
    let layers = widths.len() - 1;
    for l in 0..layers {
        let (fan_in, fan_out) = (widths[l], widths[l + 1]);
        let (w, b) = layer(widths, params, l);
        let (prev, next) = acts.split_at_mut(l + 1);
        let x = MatRef::from_row_major_slice(&prev[l][..rows * fan_in], rows, fan_in);
        let out = &mut next[0][..rows * fan_out];
        gemm(
            MatMut::from_row_major_slice_mut(out, rows, fan_out),
            Accum::Replace,
            x,
            w.transpose(),
        );
        let zero = T::default();
        for row in out.chunks_exact_mut(fan_out) {
            if l + 1 < layers {
                // `v < 0`, not `v > 0`: a NaN passes through, so a diverged run shows.
                row.iter_mut()
                    .zip(b)
                    .for_each(|(z, &bj)| *z = if *z + bj < zero { zero } else { *z + bj });
            } else {
                row.iter_mut().zip(b).for_each(|(z, &bj)| *z += bj);
            }
        }
    }
}

fn argmax<T: PartialOrd + Copy>(z: &[T]) -> usize {
    let mut best = 0;
    for (j, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = j;
        }
    }
    best
}

/// Softmax cross-entropy of each row of `logits` (`rows × k`) against `labels`; returns the
/// summed loss (accumulated in `f64`) and the number of rows whose first largest logit is the
/// label. Overwrites the logits: with `grad`, by `softmax − onehot`.
fn softmax_xent<T: Real>(
    logits: &mut [T],
    k: usize,
    labels: impl Iterator<Item = u32>,
    grad: bool,
) -> (f64, u64) {
    let (mut loss, mut correct) = (0.0, 0);
    for (z, y) in logits.chunks_exact_mut(k).zip(labels) {
        let y = y as usize;
        let top = argmax(z);
        correct += u64::from(top == y);
        let m = z[top];
        let margin = (m - z[y]).to_f64();
        let mut s = T::default();
        for v in z.iter_mut() {
            *v = (*v - m).exp_();
            s += *v;
        }
        loss += s.to_f64().ln() + margin;
        if grad {
            let inv = T::of_f64(1.0) / s;
            z.iter_mut().for_each(|v| *v *= inv);
            z[y] -= T::of_f64(1.0);
        }
    }
    (loss, correct)
}

/// Backward pass of a chunk of `rows` samples after [`forward`] and [`softmax_xent`]: writes
/// the chunk's summed gradient into `bufs.grad`.
///
/// `D_l` (gradient of the summed loss w.r.t. layer `l`'s pre-activation) lives in the logits
/// buffer for the last layer, then alternately in `deltas[0]` and `deltas[1]`.
fn backward<T: Real>(
    widths: &[usize],
    bufs: &mut Buffers<T>,
    rows: usize,
    done: &mut dyn FnMut(std::ops::Range<usize>, &[T]),
) {
    let ranges = layer_ranges(widths);
    let layers = widths.len() - 1;
    let Buffers {
        params,
        grad,
        acts,
        deltas,
        ..
    } = bufs;
    let (inputs, last) = acts.split_at_mut(layers);
    let [d0, d1] = deltas;
    for l in (0..layers).rev() {
        let (fan_in, fan_out) = (widths[l], widths[l + 1]);
        let (cur, next): (&[T], &mut [T]) = if l + 1 == layers {
            (&last[0], d0)
        } else if (layers - 2 - l).is_multiple_of(2) {
            (d0, d1)
        } else {
            (d1, d0)
        };
        let cur = &cur[..rows * fan_out];
        let d = MatRef::from_row_major_slice(cur, rows, fan_out);
        let x = &inputs[l][..rows * fan_in];
        let (gw, gb) = layer_mut(widths, grad, l);
        gemm(
            gw,
            Accum::Replace,
            d.transpose(),
            MatRef::from_row_major_slice(x, rows, fan_in),
        );
        gb.fill(T::default());
        for row in cur.chunks_exact(fan_out) {
            gb.iter_mut().zip(row).for_each(|(g, &v)| *g += v);
        }
        done(ranges[l].clone(), &grad[ranges[l].clone()]);
        if l > 0 {
            let (w, _) = layer(widths, params, l);
            let next = &mut next[..rows * fan_in];
            gemm(
                MatMut::from_row_major_slice_mut(next, rows, fan_in),
                Accum::Replace,
                d,
                w,
            );
            // A select, not a conditional store: it vectorizes, where a branch on the sign
            // would be mispredicted half the time.
            for (g, &a) in next.iter_mut().zip(x) {
                *g = if a > T::default() { *g } else { T::default() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::gradient_check_error;

    /// The repository's `data/digits.csv`, seen from this crate's directory.
    const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/digits.csv");

    fn teacher(
        hidden: &[usize],
        input_dim: usize,
        classes: usize,
        n: usize,
        precision: Precision,
    ) -> Mlp {
        MlpConfig {
            hidden: hidden.to_vec(),
            data: MlpData::Teacher(TeacherData {
                input_dim,
                classes,
                teacher_hidden: vec![4],
                train_size: n,
                eval_size: 16,
                label_noise: 0.0,
            }),
            precision,
            seed: 3,
        }
        .build()
        .unwrap()
    }

    fn mixture(
        hidden: &[usize],
        input_dim: usize,
        classes: usize,
        n: usize,
        precision: Precision,
    ) -> Mlp {
        MlpConfig {
            hidden: hidden.to_vec(),
            data: MlpData::Mixture(MixtureData {
                input_dim,
                classes,
                separation: 2.0,
                noise: 1.0,
                train_size: n,
                eval_size: 16,
            }),
            precision,
            seed: 4,
        }
        .build()
        .unwrap()
    }

    /// The initial point with random nonzero biases (from `Stream::Aux`), so that every
    /// parameter's gradient is exercised.
    fn params_with_biases(mlp: &Mlp) -> Vec<f64> {
        let mut p = mlp.init_params();
        let mut r = rng(9, Stream::Aux, 0);
        for (off, w) in mlp.layer_offsets().into_iter().zip(mlp.widths().windows(2)) {
            for b in &mut p[off + w[0] * w[1]..off + (w[0] + 1) * w[1]] {
                *b = 0.3 * normal(&mut r);
            }
        }
        p
    }

    fn grad(mlp: &Mlp, p: &[f64], samples: &[u64]) -> (Vec<f64>, BatchStats) {
        let mut g = vec![f64::NAN; p.len()];
        let s = mlp.loss_grad(p, samples, &mut g, &mut Scratch::new());
        (g, s)
    }

    fn max_abs(v: &[f64]) -> f64 {
        v.iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    #[test]
    fn layout_counts_weights_then_biases_per_layer() {
        let mlp = teacher(&[7, 6], 5, 3, 4, Precision::F64);
        assert_eq!(mlp.widths(), &[5, 7, 6, 3]);
        assert_eq!(mlp.layer_offsets(), vec![0, 42, 90]);
        assert_eq!(mlp.num_params(), 42 + 48 + 21);
        assert_eq!(mlp.init_params().len(), mlp.num_params());
        assert_eq!(mlp.train_size(), Some(4));
    }

    /// Central differences with `ε = 1e-6` in f64: truncation error `O(ε²) ≈ 1e-12`, rounding
    /// `≈ 1e-16 · |L| / ε ≈ 1e-9` for a loss sum of a few units; 1e-6 leaves a wide margin yet
    /// catches any wrong term (those are O(1) relative).
    #[test]
    fn gradient_matches_finite_differences_in_f64_for_both_synthetic_sources() {
        for mlp in [
            teacher(&[7, 6], 5, 3, 8, Precision::F64),
            mixture(&[7, 6], 5, 3, 8, Precision::F64),
            mixture(&[], 5, 3, 8, Precision::F64),
        ] {
            let p = params_with_biases(&mlp);
            let samples = [0, 3, 5, 6, 3];
            let err = gradient_check_error(&mlp, &p, &samples, 1e-6, 0..p.len());
            assert!(err < 1e-6, "{:?}: gradient error {err:e}", mlp);
            let (g, _) = grad(&mlp, &p, &samples);
            assert!(max_abs(&g) > 1e-2, "a vanishing gradient checks nothing");
        }
    }

    /// f32 carries 24 bits (ε ≈ 6e-8); sums of ~100 products of O(1) terms lose at most a
    /// few hundred ε, so 1e-5 relative on the loss and 1e-4 of the largest gradient entry.
    #[test]
    fn f32_and_f64_precision_agree_within_f32_rounding() {
        let a = teacher(&[32, 16], 20, 4, 300, Precision::F32);
        let b = teacher(&[32, 16], 20, 4, 300, Precision::F64);
        let p = params_with_biases(&a);
        let samples: Vec<u64> = (0..300).collect();
        let ((ga, sa), (gb, sb)) = (grad(&a, &p, &samples), grad(&b, &p, &samples));
        assert!(
            (sa.loss_sum - sb.loss_sum).abs() < 1e-5 * sb.loss_sum,
            "{} vs {}",
            sa.loss_sum,
            sb.loss_sum
        );
        let diff: Vec<f64> = ga.iter().zip(&gb).map(|(x, y)| x - y).collect();
        assert!(
            max_abs(&diff) < 1e-4 * max_abs(&gb),
            "max diff {:e} of {:e}",
            max_abs(&diff),
            max_abs(&gb)
        );
        assert_eq!((sa.correct, sa.dead_relu), (sb.correct, sb.dead_relu));
        assert_ne!(ga, gb, "the f32 path really computes in f32");
    }

    /// The gradient is a sum over samples: any grouping gives it, up to f64 rounding
    /// (1e-12 relative). 300 samples span two chunks of `CHUNK = 256`.
    #[test]
    fn gradient_of_a_batch_is_the_sum_over_its_parts() {
        let mlp = mixture(&[7, 6], 5, 3, 300, Precision::F64);
        let p = params_with_biases(&mlp);
        let all: Vec<u64> = (0..300).rev().collect();
        let (g, s) = grad(&mlp, &p, &all);
        let (g1, s1) = grad(&mlp, &p, &all[..120]);
        let (g2, s2) = grad(&mlp, &p, &all[120..]);
        let tol = 1e-12 * max_abs(&g);
        for ((a, b), c) in g.iter().zip(&g1).zip(&g2) {
            assert!((a - (b + c)).abs() <= tol, "{a} vs {b} + {c}");
        }
        assert!((s.loss_sum - (s1.loss_sum + s2.loss_sum)).abs() <= 1e-12 * s.loss_sum);
        assert_eq!(
            s.correct.unwrap(),
            s1.correct.unwrap() + s2.correct.unwrap()
        );
        // The four-sample case of the contract, [a..d] = [a, b] + [c, d].
        let (g, _) = grad(&mlp, &p, &[4, 9, 2, 7]);
        let (g1, _) = grad(&mlp, &p, &[4, 9]);
        let (g2, _) = grad(&mlp, &p, &[2, 7]);
        let tol = 1e-12 * max_abs(&g);
        assert!(
            g.iter()
                .zip(&g1)
                .zip(&g2)
                .all(|((a, b), c)| (a - (b + c)).abs() <= tol)
        );
    }

    /// All-zero parameters: every logit is 0, so each sample's loss is `ln K` exactly
    /// (`Σ e⁰ = K`), the softmax is uniform, the last bias's gradient is `Σ (1/K − onehot(y))`,
    /// and every other gradient is 0 (the hidden activations and their gradients vanish).
    #[test]
    fn zero_weights_give_ln_k_and_uniform_softmax_gradient() {
        for precision in [Precision::F64, Precision::F32] {
            let mlp = mixture(&[7, 6], 5, 3, 10, precision);
            let p = vec![0.0; mlp.num_params()];
            let (g, s) = grad(&mlp, &p, &[4]);
            assert_eq!(s.loss_sum, 3f64.ln(), "{precision:?}");
            let samples: Vec<u64> = (0..10).collect();
            let (g10, s10) = grad(&mlp, &p, &samples);
            assert!((s10.loss_sum - 10.0 * 3f64.ln()).abs() < 1e-14);
            assert_eq!(s10.dead_relu, Some(1.0));
            if precision == Precision::F64 {
                let last = mlp.num_params() - 3;
                let y = mlp.train_data().labels[4] as usize;
                let expected: Vec<f64> = (0..3)
                    .map(|k| 1.0 / 3.0 - f64::from(u8::from(k == y)))
                    .collect();
                assert_eq!(&g[last..], &expected[..]);
                assert!(g[..last].iter().all(|&x| x == 0.0));
                let labels = &mlp.train_data().labels[..10];
                for k in 0..3 {
                    let count = labels.iter().filter(|&&l| l as usize == k).count() as f64;
                    assert!((g10[last + k] - (10.0 / 3.0 - count)).abs() < 1e-14);
                }
            }
        }
    }

    #[test]
    fn same_inputs_give_bit_identical_outputs() {
        let mlp = teacher(&[64, 32], 100, 10, 600, Precision::F32);
        let p = mlp.init_params();
        let samples: Vec<u64> = (0..600).map(|i| (i * 7) % 600).collect();
        let mut scratch = Scratch::new();
        let mut g1 = vec![0.0; p.len()];
        let s1 = mlp.loss_grad(&p, &samples, &mut g1, &mut scratch);
        mlp.loss_grad(&p, &samples[..10], &mut vec![0.0; p.len()], &mut scratch);
        let mut g2 = vec![1.0; p.len()];
        let s2 = mlp.loss_grad(&p, &samples, &mut g2, &mut scratch);
        let (g3, s3) = grad(&mlp, &p, &samples);
        assert_eq!((&g1, s1), (&g2, s2));
        assert_eq!((&g1, s1), (&g3, s3));
        assert_eq!(mlp.loss(&p, &samples, &mut scratch), BatchStats { ..s1 });
    }

    #[test]
    fn dead_relu_counts_units_zero_on_every_sample() {
        let mlp = mixture(&[4, 4], 5, 3, 10, Precision::F64);
        let mut p = params_with_biases(&mlp);
        let offs = mlp.layer_offsets();
        // First hidden layer: biases 0..4 follow its 4×5 weights. Kill two units of eight.
        p[offs[0] + 20] = -1e6;
        p[offs[0] + 22] = -1e6;
        let s = mlp.loss(&p, &[0, 1, 2], &mut Scratch::new());
        let dead = s.dead_relu.unwrap();
        assert!((2.0 / 8.0..1.0).contains(&dead), "{dead}");
        assert_eq!(mlp.loss(&p, &[], &mut Scratch::new()).loss_sum, 0.0);
        let mut g = vec![1.0; p.len()];
        mlp.loss_grad(&p, &[], &mut g, &mut Scratch::new());
        assert!(
            g.iter().all(|&x| x == 0.0),
            "an empty batch has a zero gradient"
        );
    }

    #[test]
    fn hvp_is_computed_in_f64_whatever_the_precision_and_is_symmetric() {
        let a = teacher(&[8, 8], 6, 3, 20, Precision::F32);
        let b = teacher(&[8, 8], 6, 3, 20, Precision::F64);
        let p = params_with_biases(&a);
        let n = p.len();
        let mut r = rng(1, Stream::Aux, 1);
        let u: Vec<f64> = (0..n).map(|_| normal(&mut r)).collect();
        let v: Vec<f64> = (0..n).map(|_| normal(&mut r)).collect();
        let samples: Vec<u64> = (0..20).collect();
        let hvp = |t: &Mlp, x: &[f64]| {
            let mut out = vec![0.0; n];
            t.hvp(&p, &samples, x, &mut out, &mut Scratch::new());
            out
        };
        let (hv, hu) = (hvp(&a, &v), hvp(&a, &u));
        assert_eq!(hv, hvp(&b, &v));
        // uᵀHv = vᵀHu: the central difference's error is O(ε²) plus rounding ~1e-16/ε ≈ 1e-10.
        let (uhv, vhu) = (crate::vec::dot(&u, &hv), crate::vec::dot(&v, &hu));
        assert!(
            (uhv - vhu).abs() < 1e-6 * uhv.abs().max(1.0),
            "{uhv} vs {vhu}"
        );
    }

    #[test]
    fn label_noise_replaces_a_fraction_of_labels_and_leaves_features() {
        let build = |label_noise| {
            let data = TeacherData {
                input_dim: 10,
                classes: 4,
                train_size: 4000,
                eval_size: 100,
                label_noise,
                ..TeacherData::default()
            };
            MlpData::Teacher(data).load(2).unwrap()
        };
        let ((clean, eval0), (noisy, eval1)) = (build(0.0), build(0.5));
        assert_eq!(clean.features, noisy.features);
        assert_eq!(eval0, eval1, "held-out labels stay clean");
        let changed = clean
            .labels
            .iter()
            .zip(&noisy.labels)
            .filter(|(a, b)| a != b)
            .count() as f64
            / 4000.0;
        // Expected 0.5 · 3/4 = 0.375; the binomial sd is 0.008.
        assert!((changed - 0.375).abs() < 0.04, "{changed}");
        for k in 0..4 {
            assert!(
                clean.labels.contains(&k),
                "class {k} never chosen by the teacher"
            );
        }
    }

    #[test]
    fn invalid_settings_name_the_field_and_what_is_accepted() {
        let err = |c: MlpConfig| c.build().unwrap_err().to_string();
        let t = |f: fn(&mut TeacherData)| {
            let mut d = TeacherData {
                train_size: 4,
                eval_size: 4,
                ..TeacherData::default()
            };
            f(&mut d);
            MlpConfig {
                data: MlpData::Teacher(d),
                ..MlpConfig::default()
            }
        };
        assert_eq!(
            err(t(|d| d.classes = 1)),
            "task.data.classes = 1: expected at least 2"
        );
        assert_eq!(
            err(t(|d| d.label_noise = 1.5)),
            "task.data.label_noise = 1.5: expected a probability in [0, 1]"
        );
        assert_eq!(
            err(MlpConfig {
                hidden: vec![8, 0],
                ..t(|_| ())
            }),
            "task.hidden = [8, 0]: expected widths of at least 1"
        );
        let idx = IdxData {
            train_images: "a".into(),
            train_labels: "b".into(),
            test_images: Some("c".into()),
            ..IdxData::default()
        };
        assert_eq!(
            err(MlpConfig {
                data: MlpData::Idx(idx),
                ..MlpConfig::default()
            }),
            "task.data.test_labels = (missing): expected a path, since task.data.test_images is given (or neither)"
        );
        let csv = CsvData {
            path: DIGITS.into(),
            holdout: 1.0,
            ..CsvData::default()
        };
        assert_eq!(
            err(MlpConfig {
                data: MlpData::Csv(csv),
                ..MlpConfig::default()
            }),
            "task.data.holdout = 1: expected a fraction in (0, 1), used when no test file is given"
        );
    }

    #[test]
    fn config_is_tagged_by_source_and_rejects_unknown_fields() {
        use serde::de::value::{Error, MapDeserializer};
        let parse = |pairs: Vec<(&'static str, &'static str)>| -> Result<MlpData, Error> {
            MlpData::deserialize(MapDeserializer::new(pairs.into_iter()))
        };
        let csv = parse(vec![
            ("source", "csv"),
            ("path", "d.csv"),
            ("scale", "standardize"),
        ])
        .unwrap();
        assert_eq!(
            csv,
            MlpData::Csv(CsvData {
                path: "d.csv".into(),
                scale: Scale::Standardize,
                ..CsvData::default()
            })
        );
        let e = parse(vec![("source", "csv"), ("paht", "d.csv")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `paht`"), "{e}");
        let e = parse(vec![("source", "mnist")]).unwrap_err().to_string();
        assert!(e.contains("unknown variant `mnist`"), "{e}");
    }

    /// Behavioural check on real data: 200 steps of full-batch gradient descent on digits.csv
    /// (features / 16) with a 64-32-10 network fit the training set.
    #[test]
    fn gradient_descent_on_digits_reaches_90_percent_training_accuracy() {
        let config = MlpConfig {
            hidden: vec![32],
            data: MlpData::Csv(CsvData {
                path: DIGITS.into(),
                ..CsvData::default()
            }),
            precision: Precision::F32,
            seed: 1,
        };
        let mlp = config.build().unwrap();
        assert_eq!(
            (mlp.widths(), mlp.train_data().n, mlp.eval_data().n),
            (&[64, 32, 10][..], 1438, 359)
        );
        let all: Vec<u64> = (0..1438).collect();
        let mut p = mlp.init_params();
        let mut g = vec![0.0; p.len()];
        let mut scratch = Scratch::new();
        let first = mlp.loss(&p, &all, &mut scratch);
        for _ in 0..200 {
            mlp.loss_grad(&p, &all, &mut g, &mut scratch);
            crate::vec::axpy(-0.5 / 1438.0, &g, &mut p);
        }
        let last = mlp.loss(&p, &all, &mut scratch);
        let train_acc = last.correct.unwrap() as f64 / 1438.0;
        let eval = mlp.evaluate(&p, &mut scratch);
        assert!(train_acc > 0.9, "training accuracy {train_acc}");
        assert!(
            last.loss_sum < 0.3 * first.loss_sum,
            "loss {} → {}",
            first.loss_sum,
            last.loss_sum
        );
        assert!(
            eval.accuracy.unwrap() > 0.85,
            "held-out accuracy {:?}",
            eval.accuracy
        );
    }

    #[test]
    fn idx_files_build_a_task_scaled_by_the_largest_pixel() {
        let dir = std::env::temp_dir().join(format!("batchlab-mlp-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, magic: u32, dims: &[u32], data: &[u8]| {
            let mut v = magic.to_be_bytes().to_vec();
            dims.iter()
                .for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
            v.extend_from_slice(data);
            std::fs::write(dir.join(name), v).unwrap();
            dir.join(name)
        };
        let pixels: Vec<u8> = (0..4 * 6).map(|i| (i * 10) as u8).collect();
        let data = IdxData {
            train_images: write("tr-i", data::IDX_IMAGES_MAGIC, &[4, 2, 3], &pixels),
            train_labels: write("tr-l", data::IDX_LABELS_MAGIC, &[4], &[0, 1, 2, 1]),
            test_images: Some(write(
                "te-i",
                data::IDX_IMAGES_MAGIC,
                &[1, 2, 3],
                &[0, 0, 0, 0, 0, 230],
            )),
            test_labels: Some(write("te-l", data::IDX_LABELS_MAGIC, &[1], &[3])),
            ..IdxData::default()
        };
        let config = MlpConfig {
            hidden: vec![5],
            data: MlpData::Idx(data),
            ..MlpConfig::default()
        };
        let mlp = config.build().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Four classes: the test file's label 3 counts too. The training maximum is 230.
        assert_eq!(mlp.widths(), &[6, 5, 4]);
        assert_eq!(mlp.eval_data().row(0)[5], 1.0);
        assert_eq!(mlp.train_data().row(0)[1], 10.0 / 230.0);
        let e = mlp.evaluate(&mlp.init_params(), &mut Scratch::new());
        assert!(e.loss.is_finite() && e.accuracy.is_some());
    }
}
