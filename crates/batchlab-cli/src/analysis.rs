//! What a sweep's trials say: the best rate and steps per batch size, and the terminal summary.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use batchlab_core::train::Status;
use batchlab_lab::study::TrialRecord;

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { 0.5 * (xs[n / 2 - 1] + xs[n / 2]) })
}

/// Prints the per-batch table of a sweep.
pub fn sweep_summary(_out: &Path, records: &[TrialRecord], target: f64) -> Result<()> {
    // Best (fewest steps) COMPLETE trial per (batch, seed).
    let mut best: BTreeMap<(u64, u64), &TrialRecord> = BTreeMap::new();
    for r in records.iter().filter(|r| r.status == Status::Complete) {
        let e = best.entry((r.batch, r.seed)).or_insert(r);
        if r.steps < e.steps || (r.steps == e.steps && r.lr < e.lr) {
            *e = r;
        }
    }
    let mut per_batch: BTreeMap<u64, Vec<&TrialRecord>> = BTreeMap::new();
    for ((b, _), r) in &best {
        per_batch.entry(*b).or_default().push(r);
    }
    println!("target loss {target:.4e}; per batch size, medians over seeds of the best rate's trial:");
    println!("{:>7} {:>6} {:>10} {:>12} {:>11} {:>10} {:>10}", "B", "seeds", "steps S", "samples E", "best lr", "B_simple", "exact");
    let fmt = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for (b, rs) in &per_batch {
        let m = |f: fn(&TrialRecord) -> Option<f64>| median(rs.iter().filter_map(|r| f(r)).collect());
        println!(
            "{b:>7} {:>6} {:>10} {:>12} {:>11} {:>10} {:>10}",
            rs.len(),
            fmt(m(|r| Some(r.steps as f64)), 0),
            fmt(m(|r| Some(r.samples as f64)), 0),
            m(|r| Some(r.lr)).map_or("-".into(), |v| format!("{v:.3e}")),
            fmt(m(|r| r.b_simple), 1),
            fmt(m(|r| r.b_simple_exact), 1),
        );
    }
    Ok(())
}
