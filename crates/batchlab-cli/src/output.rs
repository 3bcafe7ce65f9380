//! Writing a run's results: per-step metrics as CSV, and a summary JSON.
//!
//! ```text
//!   OUT/config.toml     the resolved configuration (defaults filled in)
//!   OUT/metrics.csv     one StepMetrics row per step (or thinned: Rows), one column per
//!                       field (empty = not measured)
//!   OUT/summary.json    RunSummary plus the configuration
//!   OUT/.batchlab.lock  who writes the folder now (empty once they are done)
//! ```
//!
//! One writer per folder: every command that writes a folder first takes its [`FolderLock`].
//!
//! Experiments read these folders back: [`cached_summary`] (a finished run of the same
//! configuration is not run again) and [`read_rows`] (per-step rows for reports).

use std::fs::File;
use std::io::{BufWriter, Write};

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use batchlab_core::train::{RunSummary, StepMetrics, TrainConfig};

/// The name of the lock file in an output folder.
pub const LOCK_FILE: &str = ".batchlab.lock";

/// An exclusive claim on an output folder, held while the value lives.
///
/// The claim is an advisory lock (`flock`) on `DIR/.batchlab.lock`, which also holds the
/// holder's pid, host and command, so that a second writer is refused with a message naming
/// the first. The kernel drops the lock when its process dies however it dies, so a lock file
/// left by a killed process is taken over, and said so. The file is emptied on release, not
/// removed: a removed lock file could let two writers lock two different files.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
}

impl FolderLock {
    /// Creates `dir` if needed and claims it for `command` (e.g. `batchlab sweep`).
    pub fn acquire(dir: &Path, command: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating output folder {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let holder = |file: &mut File| -> String {
            let mut text = String::new();
            use std::io::{Read, Seek};
            let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
            text.trim().to_string()
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let who = holder(&mut file);
                bail!(
                    "{} is being written by another batchlab ({}): wait for it to finish or stop \
                     it, or give another --out",
                    dir.display(),
                    if who.is_empty() {
                        "holder unknown"
                    } else {
                        &who
                    }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let stale = holder(&mut file);
        if !stale.is_empty() {
            tracing::warn!(
                folder = %dir.display(),
                "took over the lock left by {stale}, which is no longer running: the folder may \
                 hold its partial results"
            );
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "this host".to_string());
        let note = format!(
            "pid {} on {host}: {command}, since {} s after the epoch\n",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        file.set_len(0)
            .and_then(|()| {
                use std::io::Seek;
                file.rewind()
            })
            .and_then(|()| file.write_all(note.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { file, path })
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Empty = released cleanly; the kernel releases the flock itself when the file closes.
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!("emptying {}: {e}", self.path.display());
        }
    }
}

/// Which per-step rows a run folder keeps in `metrics.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every step.
    Every,
    /// Nothing: no folder, no file (a seed of a group other than its first: its rows count
    /// through the group's mean, and the group's own `summary.json` holds its settings).
    None,
    /// About `max` rows over the run's step budget: every `k`-th step with
    /// `k = ⌈steps / max⌉`, every row with a sharpness measurement, and the last row.
    Thin {
        /// The most rows kept (plus the sharpness rows and the last).
        max: u64,
    },
}

impl Rows {
    /// The step stride for a run of `steps` steps.
    fn stride(self, steps: u64) -> u64 {
        match self {
            Self::Every | Self::None => 1,
            Self::Thin { max } => steps.div_ceil(max.max(1)).max(1),
        }
    }
}

/// Streams metrics rows to `metrics.csv` in a run folder (all of them, or thinned: [`Rows`]),
/// and keeps the evaluation loss of every step in memory for the caller.
pub struct MetricsWriter {
    _lock: Option<FolderLock>,
    /// The folder, `None` for [`Rows::None`].
    dir: Option<PathBuf>,
    csv: Option<csv::Writer<BufWriter<File>>>,
    stride: u64,
    /// The latest row not written (thinned out), written at the end if it is the last.
    pending: Option<StepMetrics>,
    eval: Vec<f64>,
    /// How many of `eval` are saved beside a checkpoint ([`MetricsWriter::save_eval`]).
    eval_saved: usize,
}

impl MetricsWriter {
    /// Creates `dir`, claims it, and writes the resolved config into it.
    pub fn create(dir: &Path, config: &TrainConfig, rows: Rows) -> Result<Self> {
        if rows == Rows::None {
            return Ok(Self {
                _lock: None,
                dir: None,
                csv: None,
                stride: 1,
                pending: None,
                eval: Vec::new(),
                eval_saved: 0,
            });
        }
        let lock = FolderLock::acquire(dir, "a training run")?;
        write_config(dir, config)?;
        let p = dir.join("metrics.csv");
        let file = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self {
            _lock: Some(lock),
            dir: Some(dir.to_path_buf()),
            csv: Some(csv::Writer::from_writer(BufWriter::new(file))),
            stride: rows.stride(config.steps),
            pending: None,
            eval: Vec::new(),
            eval_saved: 0,
        })
    }

    /// Opens the metrics of `dir` to go on from step `step` (a run resumed from a checkpoint
    /// taken there): rows of later steps are dropped.
    pub fn resume(dir: &Path, config: &TrainConfig, step: u64, rows: Rows) -> Result<Self> {
        if rows == Rows::None {
            return Self::create(dir, config, rows);
        }
        let lock = FolderLock::acquire(dir, "a resumed training run")?;
        let p = dir.join("metrics.csv");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let mut lines = text.lines();
        let header = lines
            .next()
            .with_context(|| format!("{}: no header row", p.display()))?;
        let mut kept = vec![header];
        for line in lines {
            let s: u64 = line
                .split(',')
                .next()
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("{}: a row without a step: {line}", p.display()))?;
            if s >= step {
                break;
            }
            kept.push(line);
        }
        write_atomic(&p, &(kept.join("\n") + "\n"))?;
        write_config(dir, config)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        Ok(Self {
            _lock: Some(lock),
            dir: Some(dir.to_path_buf()),
            csv: Some(
                csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(BufWriter::new(file)),
            ),
            stride: rows.stride(config.steps),
            pending: None,
            eval: Vec::new(),
            eval_saved: 0,
        })
    }

    /// Flushes the rows written so far to disk (before a checkpoint that covers them; a row
    /// thinned out stays out, so that a resumed run keeps the rows an unbroken one keeps).
    pub fn sync(&mut self) -> Result<()> {
        if let Some(csv) = &mut self.csv {
            csv.flush()
                .and_then(|()| csv.get_ref().get_ref().sync_data())
                .with_context(|| format!("writing {}", self.csv_path().display()))?;
        }
        Ok(())
    }

    /// Takes one row: written if its step is kept, else held until the next row.
    pub fn write(&mut self, row: &StepMetrics) -> Result<()> {
        self.eval.push(row.eval_loss.unwrap_or(f64::NAN));
        let Some(csv) = &mut self.csv else {
            return Ok(());
        };
        if row.step.is_multiple_of(self.stride) || row.sharpness.is_some() {
            self.pending = None;
            if let Err(e) = csv.serialize(row) {
                return Err(e).with_context(|| format!("writing {}", self.csv_path().display()));
            }
        } else {
            self.pending = Some(row.clone());
        }
        Ok(())
    }

    /// Appends the evaluation losses taken since the last call to `path` (raw little-endian
    /// `f64`), flushed to disk: saved beside a checkpoint, so that a resumed run has every
    /// step's loss although it writes few rows (see [`MetricsWriter::restore_eval`]).
    pub fn save_eval(&mut self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.eval[self.eval_saved..]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_data())
            .with_context(|| format!("writing {}", path.display()))?;
        self.eval_saved = self.eval.len();
        Ok(())
    }

    /// Takes the first `steps` losses saved in `path` by [`MetricsWriter::save_eval`] as
    /// this (resumed) run's; the file is cut back to them. `false` (and nothing taken) when
    /// the file is missing or shorter.
    pub fn restore_eval(&mut self, path: &Path, steps: u64) -> Result<bool> {
        let Ok(bytes) = std::fs::read(path) else {
            return Ok(false);
        };
        let n = steps as usize;
        if bytes.len() < 8 * n {
            return Ok(false);
        }
        let saved: Vec<f64> = bytes[..8 * n]
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(8 * steps))
            .with_context(|| format!("cutting {} back to step {steps}", path.display()))?;
        let taken = std::mem::take(&mut self.eval);
        self.eval = saved;
        self.eval.extend(taken);
        self.eval_saved = n;
        Ok(true)
    }

    /// `metrics.csv` of this writer's folder.
    fn csv_path(&self) -> PathBuf {
        self.dir
            .as_deref()
            .unwrap_or(Path::new("."))
            .join("metrics.csv")
    }

    /// The evaluation loss of every row taken since this writer was opened (NaN where none).
    pub fn eval_losses(&self) -> &[f64] {
        &self.eval
    }

    /// Writes the last row if it was thinned out, flushes the metrics and writes
    /// `summary.json` (returns its path; `None` for [`Rows::None`], which writes nothing).
    /// `extra` entries (e.g. per-rank timing) are added beside the summary.
    pub fn finish(
        mut self,
        summary: &RunSummary,
        config: &TrainConfig,
        wall_seconds: f64,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<PathBuf>> {
        let Some(dir) = self.dir.take() else {
            return Ok(None);
        };
        let path = dir.join("metrics.csv");
        if let Some(csv) = &mut self.csv {
            let written = match self.pending.take() {
                Some(row) => csv.serialize(&row).map_err(anyhow::Error::from),
                None => Ok(()),
            };
            written
                .and_then(|()| Ok(csv.flush()?))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let mut doc = serde_json::json!({
            "summary": summary,
            "wall_seconds": wall_seconds,
            "config": config,
        });
        doc.as_object_mut().expect("object").extend(extra);
        let p = dir.join("summary.json");
        write_atomic(&p, &(serde_json::to_string_pretty(&doc)? + "\n"))?;
        Ok(Some(p))
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

/// `"16.2 MB in 862 files"`: what a study folder holds, said when a study ends.
pub fn folder_size(dir: &Path) -> String {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    bytes += m.len();
                    files += 1;
                }
                Err(_) => {}
            }
        }
    }
    format!(
        "{} in {files} files",
        batchlab_core::footprint::human_bytes(bytes.into())
    )
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

/// Which experiment wrote a study folder: its `study.json`'s `"experiment"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Experiment {
    /// `batchlab sweep`.
    Sweep,
    /// `batchlab warmup`.
    Warmup,
    /// `batchlab lr-find`.
    LrFind,
}

impl Experiment {
    /// The experiment of the study in `dir`. Sweeps written before studies named themselves
    /// have a `study.json` without it; lr-find folders of then, none (only `lr_find.json`).
    pub fn of(dir: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Study {
            #[serde(default = "sweep")]
            experiment: Experiment,
        }
        fn sweep() -> Experiment {
            Experiment::Sweep
        }
        let path = dir.join("study.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) if dir.join("lr_find.json").exists() => return Ok(Self::LrFind),
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{}: {e}: expected a study folder written by sweep, warmup or lr-find",
                    path.display()
                ));
            }
        };
        let study: Study = serde_json::from_str(&text).with_context(|| {
            format!(
                "parsing {}: expected \"experiment\": \"sweep\", \"warmup\" or \"lr-find\"",
                path.display()
            )
        })?;
        Ok(study.experiment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64) -> StepMetrics {
        StepMetrics {
            step,
            eval_loss: Some(1.0 / (step as f64 + 1.0)),
            sharpness: (step == 7).then_some(2.0),
            ..StepMetrics::default()
        }
    }

    fn summary() -> RunSummary {
        RunSummary {
            status: batchlab_core::train::Status::Incomplete,
            steps: 20,
            samples: 0,
            message: String::new(),
            batch: 1,
            micro: 1,
            peak_lr: 0.1,
            final_eval_loss: None,
            final_eval_accuracy: None,
            final_train_loss: None,
            final_b_simple: None,
            last_sharpness: None,
            final_b_simple_exact: None,
            final_b_noise_exact: None,
            params_digest: String::new(),
        }
    }

    fn steps_in(dir: &Path) -> Vec<u64> {
        read_rows(dir).unwrap().iter().map(|r| r.step).collect()
    }

    #[test]
    fn thinned_tables_keep_every_kth_step_the_sharpness_rows_and_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            steps: 20,
            ..TrainConfig::default()
        };
        let mut w = MetricsWriter::create(dir.path(), &cfg, Rows::Thin { max: 5 }).unwrap();
        for s in 0..18 {
            w.write(&row(s)).unwrap();
        }
        assert_eq!(
            w.eval_losses().len(),
            18,
            "every step's loss, written or not"
        );
        w.finish(&summary(), &cfg, 0.0, serde_json::Map::new())
            .unwrap();
        // Stride ⌈20 / 5⌉ = 4; step 7 measured sharpness; step 17 is the last.
        assert_eq!(steps_in(dir.path()), vec![0, 4, 7, 8, 12, 16, 17]);

        // No rows at all: no folder, no file.
        let none = dir.path().join("none");
        let mut w = MetricsWriter::create(&none, &cfg, Rows::None).unwrap();
        w.write(&row(0)).unwrap();
        let written = w
            .finish(&summary(), &cfg, 0.0, serde_json::Map::new())
            .unwrap();
        assert_eq!((written, none.exists()), (None, false));
    }

    #[test]
    fn losses_saved_beside_a_checkpoint_complete_a_resumed_run() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            steps: 20,
            ..TrainConfig::default()
        };
        let saved = dir.path().join(".eval-0.f64");
        let mut w = MetricsWriter::create(dir.path(), &cfg, Rows::Thin { max: 5 }).unwrap();
        for s in 0..6 {
            w.write(&row(s)).unwrap();
        }
        w.sync().unwrap();
        w.save_eval(&saved).unwrap();
        for s in 6..9 {
            w.write(&row(s)).unwrap();
        }
        w.save_eval(&saved).unwrap();
        drop(w);
        // Resumed from a checkpoint at step 6: rows and saved losses are cut back to it.
        let mut r = MetricsWriter::resume(dir.path(), &cfg, 6, Rows::Thin { max: 5 }).unwrap();
        assert!(r.restore_eval(&saved, 6).unwrap());
        assert_eq!(std::fs::metadata(&saved).unwrap().len(), 6 * 8);
        for s in 6..20 {
            r.write(&row(s)).unwrap();
        }
        let want: Vec<f64> = (0..20).map(|s| row(s).eval_loss.unwrap()).collect();
        assert_eq!(r.eval_losses(), &want[..]);
        r.finish(&summary(), &cfg, 0.0, serde_json::Map::new())
            .unwrap();
        // The rows an unbroken run keeps.
        assert_eq!(steps_in(dir.path()), vec![0, 4, 7, 8, 12, 16, 19]);
        // Losses not saved that far: not restored.
        let mut short = MetricsWriter::create(&dir.path().join("b"), &cfg, Rows::Every).unwrap();
        assert!(!short.restore_eval(&saved, 7).unwrap());
    }
}
