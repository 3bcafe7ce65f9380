//! A sweep's analysis and report, read from and written to its folder; what they say is
//! `batchlab_lab::sweep::study`.

use std::path::Path;

use anyhow::Result;
use batchlab_core::train::{NestedNoise, StepMetrics, TrainConfig};
use batchlab_lab::report::NestedCurve;
use batchlab_lab::study::TrialRecord;
use batchlab_lab::sweep::study::{self, SweepAnalysis, TrialCurves};

/// Analyses a sweep, writes `analysis.json` into `out`, and prints the summary.
pub fn sweep_summary(
    out: &Path,
    records: &[TrialRecord],
    target: f64,
    base: &TrainConfig,
    batches: &[u64],
    grid: &[f64],
) -> Result<SweepAnalysis> {
    let a = study::analyse(records, target, base, batches, grid);
    std::fs::write(
        out.join("analysis.json"),
        serde_json::to_string_pretty(&a)? + "\n",
    )?;
    print!("{}", study::summary(&a));
    Ok(a)
}

/// A trial's metrics rows: its own `metrics.csv`, or for a seed-mean trial its first seed's
/// (`seed{s}/metrics.csv`, smallest `s`). A trial without either has no curve to draw (and
/// says so); one that cannot be read or parsed is an error.
fn read_rows(dir: &Path) -> Result<Vec<StepMetrics>> {
    let mut path = dir.join("metrics.csv");
    if !path.exists() {
        let first_seed = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("seed")?.parse::<u64>().ok()
            })
            .min();
        match first_seed {
            Some(s) => path = dir.join(format!("seed{s}")).join("metrics.csv"),
            None => {
                tracing::warn!(
                    "{}: no metrics.csv, so no curve in the report",
                    dir.display()
                );
                return Ok(Vec::new());
            }
        }
    }
    crate::output::read_rows(path.parent().unwrap_or(dir))
}

/// The noise probe's nested-prefix curve of the trial of batch `batch` in `dir`.
fn read_nested(batch: u64, dir: &Path) -> Option<NestedCurve> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("probe.json")).ok()?).ok()?;
    let n: NestedNoise = serde_json::from_value(doc["probe"]["nested"].clone()).ok()?;
    let points = n
        .sizes
        .iter()
        .zip(&n.mean_sq_norms)
        .map(|(&b, &g)| (b as f64, g))
        .collect();
    Some((batch, points, n.g2, n.trace_sigma))
}

/// Writes `report.html` for a sweep from its analysis, its records and the curves of the
/// trials it draws (read from their folders, `trial_dir(batch, lr, seed)`).
pub fn sweep_report(
    out: &Path,
    a: &SweepAnalysis,
    records: &[TrialRecord],
    trial_dir: impl Fn(u64, f64, u64) -> std::path::PathBuf,
) -> Result<std::path::PathBuf> {
    let curves = study::drawn_trials(a)
        .into_iter()
        .map(|(b, probed)| {
            let dir = trial_dir(b.batch, b.lr, b.seed);
            Ok(TrialCurves {
                trial: b.clone(),
                rows: read_rows(&dir)?,
                nested: probed.then(|| read_nested(b.batch, &dir)).flatten(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let path = out.join("report.html");
    std::fs::write(&path, study::page(a, records, &curves))?;
    Ok(path)
}
