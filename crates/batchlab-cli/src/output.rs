//! Writing a run's results: per-step metrics as JSON lines and CSV, and a summary JSON.
//!
//! ```text
//!   OUT/config.toml     the resolved configuration (defaults filled in)
//!   OUT/metrics.jsonl   one StepMetrics object per line
//!   OUT/metrics.csv     the same rows, one column per field (empty = not measured)
//!   OUT/summary.json    RunSummary plus the configuration
//! ```
//!
//! Experiments read these folders back: [`cached_summary`] (a finished run of the same
//! configuration is not run again) and [`read_rows`] (per-step rows for reports).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use batchlab_core::train::{RunSummary, StepMetrics, TrainConfig};

/// Streams metrics rows to `metrics.jsonl` and `metrics.csv` in a run folder.
pub struct MetricsWriter {
    dir: PathBuf,
    jsonl: BufWriter<File>,
    csv: csv::Writer<BufWriter<File>>,
}

impl MetricsWriter {
    /// Creates `dir` and writes the resolved config into it.
    pub fn create(dir: &Path, config: &TrainConfig) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating output folder {}", dir.display()))?;
        write_config(dir, config)?;
        let open = |name: &str| -> Result<BufWriter<File>> {
            let p = dir.join(name);
            Ok(BufWriter::new(
                File::create(&p).with_context(|| format!("creating {}", p.display()))?,
            ))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            jsonl: open("metrics.jsonl")?,
            csv: csv::Writer::from_writer(open("metrics.csv")?),
        })
    }

    /// Opens the metrics of `dir` to go on after its first `rows` rows (a run resumed from a
    /// checkpoint): rows written after them are dropped from both files.
    pub fn resume(dir: &Path, config: &TrainConfig, rows: u64) -> Result<Self> {
        let keep = |name: &str, lines: u64| -> Result<()> {
            let p = dir.join(name);
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let kept: Vec<&str> = text.lines().take(lines as usize).collect();
            if (kept.len() as u64) < lines {
                bail!(
                    "{} holds {} lines; the checkpoint covers {lines}",
                    p.display(),
                    kept.len()
                );
            }
            let mut out = kept.join("\n");
            if !kept.is_empty() {
                out.push('\n');
            }
            write_atomic(&p, &out)
        };
        keep("metrics.jsonl", rows)?;
        keep("metrics.csv", rows + 1)?;
        write_config(dir, config)?;
        let open = |name: &str| -> Result<BufWriter<File>> {
            let p = dir.join(name);
            Ok(BufWriter::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .with_context(|| format!("opening {}", p.display()))?,
            ))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            jsonl: open("metrics.jsonl")?,
            csv: csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(open("metrics.csv")?),
        })
    }

    /// Flushes both files to disk (before a checkpoint that covers their rows).
    pub fn sync(&mut self) -> Result<()> {
        self.jsonl.flush()?;
        self.csv.flush()?;
        self.jsonl.get_ref().sync_data()?;
        self.csv.get_ref().get_ref().sync_data()?;
        Ok(())
    }

    /// Appends one row to both files.
    pub fn write(&mut self, row: &StepMetrics) -> Result<()> {
        serde_json::to_writer(&mut self.jsonl, row)?;
        self.jsonl.write_all(b"\n")?;
        self.csv.serialize(row)?;
        Ok(())
    }

    /// Flushes the metrics and writes `summary.json`.
    /// `extra` entries (e.g. per-rank timing) are added beside the summary.
    pub fn finish(
        mut self,
        summary: &RunSummary,
        config: &TrainConfig,
        wall_seconds: f64,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<PathBuf> {
        self.jsonl.flush()?;
        self.csv.flush()?;
        let mut doc = serde_json::json!({
            "summary": summary,
            "wall_seconds": wall_seconds,
            "config": config,
        });
        doc.as_object_mut().expect("object").extend(extra);
        let p = self.dir.join("summary.json");
        write_atomic(&p, &(serde_json::to_string_pretty(&doc)? + "\n"))?;
        Ok(p)
    }
}

/// Writes `text` to `path` so that a reader (or a resumed experiment after a crash) sees the
/// old file or the whole new one, never a part: a temporary file beside it, flushed to disk,
/// then renamed over it.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic_bytes(path, text.as_bytes())
}

/// Writes the resolved config of a run into its folder.
fn write_config(dir: &Path, config: &TrainConfig) -> Result<()> {
    let text = toml::to_string_pretty(config).context("rendering the resolved config")?;
    std::fs::write(dir.join("config.toml"), text)
        .with_context(|| format!("writing {}/config.toml", dir.display()))
}

/// [`write_atomic`] for bytes.
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// A finished run's summary from its folder, if it ran with exactly `config`.
pub fn cached_summary(dir: &Path, config: &TrainConfig) -> Option<RunSummary> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    if serde_json::to_value(config).ok()? != doc["config"] {
        return None;
    }
    serde_json::from_value(doc["summary"].clone()).ok()
}

/// The per-step rows of a run folder, from its `metrics.csv`.
pub fn read_rows(dir: &Path) -> Result<Vec<StepMetrics>> {
    let path = dir.join("metrics.csv");
    let mut r =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize()
        .collect::<Result<Vec<StepMetrics>, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}
