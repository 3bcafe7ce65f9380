//! Reading datasets from files: MNIST-format IDX and CSV (label column + features).
//!
//! A [`Dataset`] is a dense, in-memory table: `n` rows of `dim` features (`f32`, row-major) and
//! one class label per row. The readers take any [`Read`] plus the path to name in messages, so
//! tests can read from memory; [`load_idx`] and [`load_csv`] open the files.
//!
//! ```text
//!   file(s) ──read──▶ Dataset ──split (Stream::Split)──▶ train, held-out
//!                                  (when no test file)        │
//!                        Scaling::fit(train) ─────────────────┴──▶ apply to both
//! ```
//!
//! Every error names the file, what was found, and what was expected (with the line for CSV).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::rng::{Stream, rng};

/// A labelled dataset held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Features, row-major `n × dim`.
    pub features: Vec<f32>,
    /// One class label per row, each `< classes`.
    pub labels: Vec<u32>,
    /// Number of rows (samples).
    pub n: usize,
    /// Number of features per row.
    pub dim: usize,
    /// Number of classes: one more than the largest label.
    pub classes: usize,
}

impl Dataset {
    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.dim);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            features.extend_from_slice(self.row(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            features,
            labels,
            n: indices.len(),
            dim: self.dim,
            classes: self.classes,
        }
    }
}

fn classes_of(labels: &[u32]) -> usize {
    labels.iter().max().map_or(0, |&m| m as usize + 1)
}

fn data_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn open(path: &Path) -> Result<BufReader<File>, ConfigError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
}

// ---------------------------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------------------------

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (MNIST images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (MNIST labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole IDX file of unsigned bytes with the expected magic number; returns its
/// dimensions and data, checking that the data is exactly as long as the dimensions say.
///
/// The header is read first and its size product computed with checked arithmetic; then at
/// most one byte more than that product is read, so a header claiming more than the file holds
/// (or a reader that never ends) allocates no more than the file's own bytes.
fn read_idx(
    mut reader: impl Read,
    path: &Path,
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, Vec<u8>), ConfigError> {
    let io_error = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let mut header = Vec::with_capacity(header_len);
    (&mut reader)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(io_error)?;
    if header.starts_with(&[0x1f, 0x8b]) {
        return Err(data_error(
            path,
            "gzip-compressed file: expected an uncompressed IDX file (decompress it with `gunzip` first)",
        ));
    }
    if header.len() < 4 {
        return Err(data_error(
            path,
            format!(
                "{} bytes: expected at least a 4-byte IDX magic number",
                header.len()
            ),
        ));
    }
    let found = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if found != magic {
        return Err(data_error(
            path,
            format!(
                "magic number {found:#010x}: expected {magic:#010x} (IDX {what}, unsigned bytes)"
            ),
        ));
    }
    if header.len() < header_len {
        return Err(data_error(
            path,
            format!(
                "{} bytes: expected a header of {header_len} bytes ({ndims} dimensions)",
                header.len()
            ),
        ));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let shape = dims
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("×");
    let expected = dims
        .iter()
        .try_fold(1u64, |p, &d| p.checked_mul(d as u64))
        .filter(|&n| n < u64::MAX)
        .ok_or_else(|| {
            data_error(
                path,
                format!("dimensions {shape}: their product overflows; expected a header that describes the file's data"),
            )
        })?;
    let mut bytes = Vec::new();
    reader
        .take(expected + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 != expected {
        let found_len = if bytes.len() as u64 > expected {
            "more than that".to_string()
        } else {
            bytes.len().to_string()
        };
        return Err(data_error(
            path,
            format!(
                "{found_len} bytes of data after the header: expected {expected} (dimensions {shape})"
            ),
        ));
    }
    Ok((dims, bytes))
}

/// Reads an IDX image file (`idx3-ubyte`, magic `0x00000803`): returns the pixels as `f32`
/// (unscaled, 0–255), row-major `n × (rows·cols)`, and `(n, rows·cols)`.
pub fn read_idx_images(
    reader: impl Read,
    path: &Path,
) -> Result<(Vec<f32>, usize, usize), ConfigError> {
    let (dims, bytes) = read_idx(reader, path, IDX_IMAGES_MAGIC, "images")?;
    // The product of all three fit the data read, so these cannot overflow.
    let (n, dim) = (dims[0], dims[1] * dims[2]);
    if n > 0 && dim == 0 {
        return Err(data_error(
            path,
            format!(
                "images of {}×{} pixels: expected at least one pixel",
                dims[1], dims[2]
            ),
        ));
    }
    Ok((bytes.into_iter().map(f32::from).collect(), n, dim))
}

/// Reads an IDX label file (`idx1-ubyte`, magic `0x00000801`).
pub fn read_idx_labels(reader: impl Read, path: &Path) -> Result<Vec<u32>, ConfigError> {
    let (_, bytes) = read_idx(reader, path, IDX_LABELS_MAGIC, "labels")?;
    Ok(bytes.into_iter().map(u32::from).collect())
}

/// Pairs images and labels read by [`read_idx_images`] and [`read_idx_labels`], checking that
/// their counts agree.
pub fn idx_dataset(
    (features, n, dim): (Vec<f32>, usize, usize),
    labels: Vec<u32>,
    images_path: &Path,
    labels_path: &Path,
) -> Result<Dataset, ConfigError> {
    if labels.len() != n {
        return Err(data_error(
            labels_path,
            format!(
                "{} labels: expected {n}, the number of images in {}",
                labels.len(),
                images_path.display()
            ),
        ));
    }
    let classes = classes_of(&labels);
    Ok(Dataset {
        features,
        labels,
        n,
        dim,
        classes,
    })
}

/// Reads an MNIST-format pair of uncompressed IDX files (images and labels).
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset, ConfigError> {
    let imgs = read_idx_images(open(images)?, images)?;
    let labs = read_idx_labels(open(labels)?, labels)?;
    idx_dataset(imgs, labs, images, labels)
}

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

/// Reads a CSV file with a header row: one label column (non-negative integers) and numeric
/// features in every other column.
///
/// The label column is `label_column` if given (by header name), else the column named `label`;
/// a header with neither is refused rather than guessed.
pub fn read_csv(
    reader: impl Read,
    path: &Path,
    label_column: Option<&str>,
) -> Result<Dataset, ConfigError> {
    let csv_error = |e: csv::Error| -> ConfigError {
        let line = e
            .position()
            .map(|p| format!("line {}: ", p.line()))
            .unwrap_or_default();
        let message = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(source) => ConfigError::Io {
                path: path.to_path_buf(),
                source,
            },
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => data_error(
                path,
                format!("{line}{len} fields: expected {expected_len}, as in the header"),
            ),
            _ => data_error(path, format!("{line}{message}")),
        }
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header = rdr.headers().map_err(csv_error)?.clone();
    if header.is_empty() {
        return Err(data_error(
            path,
            "empty file: expected a header row naming the label and feature columns",
        ));
    }
    let label_idx = match label_column {
        Some(name) => header.iter().position(|h| h == name).ok_or_else(|| {
            let names = header.iter().take(8).collect::<Vec<_>>().join(", ");
            data_error(
                path,
                format!("no label column `{name}` in the header: expected one of {names}, ..."),
            )
        })?,
        None => header.iter().position(|h| h == "label").ok_or_else(|| {
            let names = header.iter().take(8).collect::<Vec<_>>().join(", ");
            data_error(
                path,
                format!(
                    "no column named `label` in the header ({names}{}): name the label column \
                     with task.data.label_column",
                    if header.len() > 8 { ", ..." } else { "" }
                ),
            )
        })?,
    };
    let dim = header.len() - 1;
    if dim == 0 {
        return Err(data_error(
            path,
            "only a label column: expected at least one feature column",
        ));
    }
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut record = csv::StringRecord::new();
    while rdr.read_record(&mut record).map_err(csv_error)? {
        let line = record.position().map_or(0, |p| p.line());
        for (j, field) in record.iter().enumerate() {
            if j == label_idx {
                let label = field.parse::<u32>().map_err(|_| {
                    data_error(
                        path,
                        format!("line {line}, column `{}`: label `{field}`: expected a non-negative integer", &header[j]),
                    )
                })?;
                labels.push(label);
            } else {
                let x = field
                    .parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| {
                        data_error(
                            path,
                            format!(
                                "line {line}, column `{}`: `{field}`: expected a finite number",
                                &header[j]
                            ),
                        )
                    })?;
                features.push(x);
            }
        }
    }
    let n = labels.len();
    if n == 0 {
        return Err(data_error(
            path,
            "no data rows: expected at least one row after the header",
        ));
    }
    let classes = classes_of(&labels);
    Ok(Dataset {
        features,
        labels,
        n,
        dim,
        classes,
    })
}

/// Opens and reads a CSV file with [`read_csv`].
pub fn load_csv(path: &Path, label_column: Option<&str>) -> Result<Dataset, ConfigError> {
    read_csv(open(path)?, path, label_column)
}

// ---------------------------------------------------------------------------------------------
// Splitting and scaling
// ---------------------------------------------------------------------------------------------

/// Splits `data` into `(train, held_out)`: a seeded random `round(holdout · n)` rows (from
/// `rng(seed, Stream::Split, 0)`) are held out; both parts keep the file's row order.
pub fn split(data: &Dataset, holdout: f64, seed: u64) -> (Dataset, Dataset) {
    let n = data.n;
    let n_out = ((holdout * n as f64).round() as usize).min(n);
    // Fisher–Yates: the first `n_out` entries of the permutation are held out.
    let mut perm: Vec<usize> = (0..n).collect();
    let mut r = rng(seed, Stream::Split, 0);
    for i in (1..n).rev() {
        let j = r.random_range(0..=i);
        perm.swap(i, j);
    }
    let mut held: Vec<usize> = perm[..n_out].to_vec();
    let mut train: Vec<usize> = perm[n_out..].to_vec();
    held.sort_unstable();
    train.sort_unstable();
    (data.select(&train), data.select(&held))
}

/// How features are scaled, with statistics of the training set only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Features as read.
    None,
    /// Divide every feature by the largest absolute feature value of the training set (pixels
    /// 0–255 become 0–1).
    #[default]
    Max,
    /// Per feature, subtract the training mean and divide by the training standard deviation
    /// (features constant on the training set are only centred).
    Standardize,
}

/// A fitted affine feature map `x ↦ (x − shift_j) / divisor_j` (a division, so that the
/// training maximum maps to exactly 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    shift: Vec<f32>,
    divisor: Vec<f32>,
}

impl Scaling {
    /// Fits `scale` on `train`'s features (statistics accumulated in `f64`).
    pub fn fit(scale: Scale, train: &Dataset) -> Scaling {
        let d = train.dim;
        match scale {
            Scale::None => Scaling {
                shift: vec![0.0; d],
                divisor: vec![1.0; d],
            },
            Scale::Max => {
                let m = train.features.iter().fold(0f32, |m, x| m.max(x.abs()));
                Scaling {
                    shift: vec![0.0; d],
                    divisor: vec![if m > 0.0 { m } else { 1.0 }; d],
                }
            }
            Scale::Standardize => {
                let n = train.n.max(1) as f64;
                let mut mean = vec![0f64; d];
                for i in 0..train.n {
                    for (m, &x) in mean.iter_mut().zip(train.row(i)) {
                        *m += f64::from(x);
                    }
                }
                mean.iter_mut().for_each(|m| *m /= n);
                let mut var = vec![0f64; d];
                for i in 0..train.n {
                    for ((v, &x), m) in var.iter_mut().zip(train.row(i)).zip(&mean) {
                        *v += (f64::from(x) - m).powi(2);
                    }
                }
                let divisor = var
                    .iter()
                    .map(|v| if *v > 0.0 { (v / n).sqrt() as f32 } else { 1.0 })
                    .collect();
                Scaling {
                    shift: mean.iter().map(|&m| m as f32).collect(),
                    divisor,
                }
            }
        }
    }

    /// Applies the map to every row of `data`.
    pub fn apply(&self, data: &mut Dataset) {
        if data.dim == 0 {
            return;
        }
        for row in data.features.chunks_exact_mut(data.dim) {
            for ((x, s), q) in row.iter_mut().zip(&self.shift).zip(&self.divisor) {
                *x = (*x - s) / q;
            }
        }
    }
}

/// Where a file-backed dataset's held-out part comes from, and how features are scaled: the
/// common tail of loading any file format.
///
/// With a separate test set its dimension must match the training set's; without one, a
/// `holdout` fraction of the training file is split off with [`split`].
pub fn prepare(
    train: Dataset,
    test: Option<(Dataset, PathBuf)>,
    holdout: f64,
    scale: Scale,
    seed: u64,
) -> Result<(Dataset, Dataset), ConfigError> {
    let (mut train, mut test) = match test {
        Some((test, path)) => {
            if test.dim != train.dim {
                return Err(data_error(
                    &path,
                    format!(
                        "{} features per row: expected {}, as in the training file",
                        test.dim, train.dim
                    ),
                ));
            }
            (train, test)
        }
        None => {
            let (train, held) = split(&train, holdout, seed);
            if train.n == 0 || held.n == 0 {
                return Err(ConfigError::invalid(
                    "task.data.holdout",
                    holdout,
                    format!(
                        "a hold-out that leaves rows on both sides: {} rows split into {} for \
                         training and {} held out (give a file with more rows, or a separate \
                         test file)",
                        train.n + held.n,
                        train.n,
                        held.n
                    ),
                ));
            }
            (train, held)
        }
    };
    let classes = train.classes.max(test.classes);
    train.classes = classes;
    test.classes = classes;
    let scaling = Scaling::fit(scale, &train);
    scaling.apply(&mut train);
    scaling.apply(&mut test);
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's `data/digits.csv`, seen from this crate's directory.
    pub(crate) const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/digits.csv");

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn digits_csv_loads_with_1797_rows_64_features_10_classes() {
        let d = load_csv(Path::new(DIGITS), None).unwrap();
        assert_eq!((d.n, d.dim, d.classes), (1797, 64, 10));
        assert_eq!(d.features.len(), 1797 * 64);
        assert_eq!(&d.labels[..3], &[0, 1, 2]);
        assert_eq!(d.features.iter().fold(0f32, |m, &x| m.max(x)), 16.0);
        // Selecting the label column by name gives the same table.
        assert_eq!(load_csv(Path::new(DIGITS), Some("label")).unwrap(), d);
    }

    #[test]
    fn csv_label_column_by_name_or_the_column_named_label() {
        let p = Path::new("mem.csv");
        let by_name = read_csv("a,y,b\n1,2,3\n4,0,6\n".as_bytes(), p, Some("y")).unwrap();
        assert_eq!(
            (by_name.labels, by_name.features, by_name.classes),
            (vec![2, 0], vec![1., 3., 4., 6.], 3)
        );
        let named_label = read_csv("a,label\n1.5,1\n".as_bytes(), p, None).unwrap();
        assert_eq!(
            (named_label.labels, named_label.features),
            (vec![1], vec![1.5])
        );
        // Without `label` in the header and no column named, the file is refused, not guessed.
        let e = read_csv("y,a\n1,1.5\n".as_bytes(), p, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "mem.csv: no column named `label` in the header (y, a): name the label column with \
             task.data.label_column"
        );
    }

    #[test]
    fn malformed_csv_names_the_file_line_and_value() {
        let p = Path::new("bad.csv");
        let text = "label,p0,p1\n0,1,2\n1,3,x7\n";
        let msg = read_csv(text.as_bytes(), p, None).unwrap_err().to_string();
        assert_eq!(
            msg,
            "bad.csv: line 3, column `p1`: `x7`: expected a finite number"
        );
        let msg = read_csv("label,p0\n0,1\n-1,2\n".as_bytes(), p, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "bad.csv: line 3, column `label`: label `-1`: expected a non-negative integer"
        );
        let msg = read_csv("label,p0\n0,1\n1,2,3\n".as_bytes(), p, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "bad.csv: line 3: 3 fields: expected 2, as in the header"
        );
        let msg = read_csv("label,p0\n0,1\n".as_bytes(), p, Some("y"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no label column `y`"), "{msg}");
    }

    #[test]
    fn idx_round_trip_in_memory() {
        let pixels: Vec<u8> = (0..2 * 2 * 3).collect();
        let imgs = read_idx_images(
            &idx_bytes(IDX_IMAGES_MAGIC, &[2, 2, 3], &pixels)[..],
            Path::new("i"),
        )
        .unwrap();
        let labs = read_idx_labels(
            &idx_bytes(IDX_LABELS_MAGIC, &[2], &[7, 3])[..],
            Path::new("l"),
        )
        .unwrap();
        let d = idx_dataset(imgs, labs, Path::new("i"), Path::new("l")).unwrap();
        assert_eq!((d.n, d.dim, d.classes), (2, 6, 8));
        assert_eq!(d.row(1), &[6., 7., 8., 9., 10., 11.]);
        assert_eq!(d.labels, vec![7, 3]);
    }

    #[test]
    fn idx_files_on_disk_load_and_bad_magic_names_file_and_numbers() {
        let dir = std::env::temp_dir().join(format!("batchlab-idx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ip, lp) = (dir.join("imgs-idx3-ubyte"), dir.join("labels-idx1-ubyte"));
        std::fs::write(
            &ip,
            idx_bytes(IDX_IMAGES_MAGIC, &[3, 1, 2], &[0, 255, 10, 20, 30, 40]),
        )
        .unwrap();
        std::fs::write(&lp, idx_bytes(IDX_LABELS_MAGIC, &[3], &[1, 0, 1])).unwrap();
        let d = load_idx(&ip, &lp).unwrap();
        assert_eq!(
            (d.n, d.dim, d.classes, d.labels.clone()),
            (3, 2, 2, vec![1, 0, 1])
        );

        // Images and labels swapped: each file has the other's magic number.
        let msg = load_idx(&lp, &ip).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "{}: magic number 0x00000801: expected 0x00000803 (IDX images, unsigned bytes)",
                lp.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idx_errors_name_what_was_found_and_expected() {
        let p = Path::new("t10k-images-idx3-ubyte");
        let short = idx_bytes(IDX_IMAGES_MAGIC, &[2, 2, 2], &[1, 2, 3]);
        let msg = read_idx_images(&short[..], p).unwrap_err().to_string();
        assert_eq!(
            msg,
            "t10k-images-idx3-ubyte: 3 bytes of data after the header: expected 8 (dimensions 2×2×2)"
        );
        let msg = read_idx_images(&[0x1f, 0x8b, 8, 0][..], p)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("gzip-compressed"), "{msg}");
        let imgs =
            read_idx_images(&idx_bytes(IDX_IMAGES_MAGIC, &[2, 1, 1], &[1, 2])[..], p).unwrap();
        let lp = Path::new("labels");
        let msg = idx_dataset(imgs, vec![0, 1, 2], p, lp)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "labels: 3 labels: expected 2, the number of images in t10k-images-idx3-ubyte"
        );
        let msg = load_idx(Path::new("/nonexistent/x"), lp)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("reading /nonexistent/x: "), "{msg}");
    }

    #[test]
    fn a_crafted_idx_header_is_refused_without_allocating_what_it_claims() {
        let p = Path::new("crafted");
        // 4 × 2³¹ × 2³¹ = 2⁶⁴: the product overflows u64.
        let wrap = idx_bytes(IDX_IMAGES_MAGIC, &[4, 1 << 31, 1 << 31], &[0; 16]);
        let msg = read_idx_images(&wrap[..], p).unwrap_err().to_string();
        assert_eq!(
            msg,
            "crafted: dimensions 4×2147483648×2147483648: their product overflows; expected a \
             header that describes the file's data"
        );
        // A product that fits but claims far more than the file holds.
        let huge = idx_bytes(IDX_IMAGES_MAGIC, &[u32::MAX, u32::MAX, 1], &[7; 3]);
        let msg = read_idx_images(&huge[..], p).unwrap_err().to_string();
        assert!(
            msg.starts_with(
                "crafted: 3 bytes of data after the header: expected 18446744065119617025"
            ),
            "{msg}"
        );
        // A reader that never ends stops one byte past the header's claim.
        let endless = idx_bytes(IDX_LABELS_MAGIC, &[3], &[]);
        let reader = (&endless[..]).chain(std::io::repeat(1));
        let msg = read_idx_labels(reader, p).unwrap_err().to_string();
        assert_eq!(
            msg,
            "crafted: more than that bytes of data after the header: expected 3 (dimensions 3)"
        );
    }

    #[test]
    fn a_csv_too_small_to_split_is_refused_naming_rows_and_holdout() {
        let p = Path::new("two.csv");
        let d = read_csv("label,x\n0,1\n1,2\n".as_bytes(), p, None).unwrap();
        let msg = prepare(d, None, 0.2, Scale::Max, 0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "task.data.holdout = 0.2: expected a hold-out that leaves rows on both sides: 2 rows \
             split into 2 for training and 0 held out (give a file with more rows, or a separate \
             test file)"
        );
        // Three rows at a hold-out of 0.5 leave rows on both sides.
        let d = read_csv("label,x\n0,1\n1,2\n1,3\n".as_bytes(), p, None).unwrap();
        let (tr, te) = prepare(d, None, 0.5, Scale::Max, 0).unwrap();
        assert_eq!(tr.n + te.n, 3);
        assert!(tr.n >= 1 && te.n >= 1);
    }

    mod readers_never_panic {
        use super::*;
        use proptest::prelude::*;

        fn digits_head() -> Vec<u8> {
            std::fs::read(DIGITS).unwrap()[..4000].to_vec()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Arbitrary bytes: an error (or a table), never a panic.
            #[test]
            fn random_bytes_into_every_reader(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let p = Path::new("fuzz");
                let _ = read_csv(&bytes[..], p, None);
                let _ = read_csv(&bytes[..], p, Some("label"));
                let _ = read_idx_images(&bytes[..], p);
                let _ = read_idx_labels(&bytes[..], p);
            }

            /// An IDX header with random dimensions over random data: the data's length is
            /// checked against the dimensions, whatever they are.
            #[test]
            fn idx_headers_with_random_dimensions(
                dims in proptest::collection::vec(any::<u32>(), 3),
                data in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let bytes = idx_bytes(IDX_IMAGES_MAGIC, &dims, &data);
                let p = Path::new("fuzz");
                match read_idx_images(&bytes[..], p) {
                    Ok((features, n, dim)) => prop_assert_eq!(features.len(), n * dim),
                    Err(e) => prop_assert!(e.to_string().starts_with("fuzz: "), "{}", e),
                }
            }

            /// A real file cut anywhere, or with one byte changed: read or refused with the
            /// file's name, never a panic.
            #[test]
            fn truncated_and_corrupted_csv(cut in 0usize..4000, at in 0usize..4000, byte in any::<u8>()) {
                let mut bytes = digits_head();
                bytes[at] = byte;
                bytes.truncate(cut);
                let p = Path::new("digits.csv");
                if let Err(e) = read_csv(&bytes[..], p, None) {
                    prop_assert!(e.to_string().starts_with("digits.csv: "), "{}", e);
                }
            }
        }
    }

    #[test]
    fn split_is_seeded_disjoint_and_ordered() {
        let d = load_csv(Path::new(DIGITS), None).unwrap();
        let (tr, te) = split(&d, 0.2, 5);
        assert_eq!((tr.n, te.n), (1797 - 359, 359));
        assert_eq!(split(&d, 0.2, 5), (tr.clone(), te.clone()));
        assert_ne!(split(&d, 0.2, 6).1, te);
        // Every row lands in exactly one part: the label counts add up.
        let count = |ds: &Dataset, k: u32| ds.labels.iter().filter(|&&l| l == k).count();
        for k in 0..10 {
            assert_eq!(count(&tr, k) + count(&te, k), count(&d, k));
        }
    }

    #[test]
    fn scaling_uses_training_statistics() {
        let mk = |features: Vec<f32>| Dataset {
            n: features.len() / 2,
            labels: vec![0; features.len() / 2],
            features,
            dim: 2,
            classes: 1,
        };
        let train = mk(vec![1., 10., 3., 10.]);
        let mut test = mk(vec![2., 4.]);
        Scaling::fit(Scale::Standardize, &train).apply(&mut test);
        // Column 0: mean 2, sd 1; column 1 constant: only centred.
        assert_eq!(test.features, vec![0., -6.]);
        let mut test = mk(vec![2., 4.]);
        Scaling::fit(Scale::Max, &train).apply(&mut test);
        assert_eq!(test.features, vec![0.2, 0.4]);
        let (tr, te) = prepare(
            train.clone(),
            Some((mk(vec![5., 5.]), "t".into())),
            0.5,
            Scale::None,
            0,
        )
        .unwrap();
        assert_eq!((tr, te.features), (train, vec![5., 5.]));
        let bad = Dataset {
            features: vec![1.],
            labels: vec![0],
            n: 1,
            dim: 1,
            classes: 1,
        };
        let msg = prepare(
            mk(vec![1., 2.]),
            Some((bad, "t.csv".into())),
            0.5,
            Scale::None,
            0,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "t.csv: 1 features per row: expected 2, as in the training file"
        );
    }
}
