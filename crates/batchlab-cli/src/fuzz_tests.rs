//! Random, truncated and corrupted files into every reader of the binary: a config, a
//! checkpoint, a run folder's metrics and summary, a study's JSON. Each must end in an error
//! (or a value), never a panic. The data readers (CSV, IDX) have their own in `batchlab-core`,
//! the protocol's decoders theirs in `batchlab-net`.

use std::path::Path;

use batchlab_core::train::TrainConfig;
use proptest::prelude::*;

use crate::output::Rows;

/// A file of `bytes` at `dir/name`.
fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A small config, then cut at `cut` and one byte replaced at `at`.
fn mangled(text: &str, cut: usize, at: usize, byte: u8) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    if !b.is_empty() {
        let i = at % b.len();
        b[i] = byte;
    }
    b.truncate(cut.min(b.len()));
    b
}

const CONFIG: &str = "batch = 64\nlr = 0.5\nsteps = 30\n[task]\nkind = \"mlp\"\nhidden = [8]\n\
                      [task.data]\nsource = \"teacher\"\ninput_dim = 4\n[optimizer]\nkind = \"sgd\"\n";

const STUDY: &str = r#"{"batches": [1, 2], "seeds": 2, "lr_policy": "tuned", "lr_grid": "1e-3:2:4",
"patience": 2, "refine": 0, "target_loss": 0.5, "target_on": "mean", "target_window": 0.0,
"selection_window": 0.25, "held_out_seeds": 0, "base": {"batch": 64}}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_config_file_of_any_bytes_is_read_or_refused(
        cut in 0usize..200, at in 0usize..200, byte in any::<u8>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, mangled(CONFIG, cut, at, byte)).unwrap();
        if let Ok(cfg) = crate::config::load::<TrainConfig>(Some(&path), &[], &[], &[]) {
            let _ = cfg.build();
        }
    }

    #[test]
    fn a_checkpoint_of_random_bytes_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), crate::cluster::CHECKPOINT, &bytes);
        // Not this run's checkpoint, or not one at all: never a panic.
        let _ = crate::cluster::load_checkpoint(dir.path(), &TrainConfig::default(), &[]);
    }

    #[test]
    fn a_run_folder_of_random_files_is_read_or_refused(
        csv in "[-0-9a-z_,.\n]{0,300}", summary in proptest::collection::vec(any::<u8>(), 0..200),
        step in 0u64..50,
    ) {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "metrics.csv", csv.as_bytes());
        put(dir.path(), "summary.json", &summary);
        let cfg = TrainConfig::default();
        let _ = crate::output::read_rows(dir.path());
        prop_assert!(crate::output::cached_summary(dir.path(), &cfg).is_none());
        let _ = crate::output::MetricsWriter::resume(dir.path(), &cfg, step, Rows::Every);
    }

    #[test]
    fn a_study_folder_of_broken_json_is_refused(
        cut in 0usize..400, at in 0usize..400, byte in any::<u8>(),
        trials in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "study.json", &mangled(STUDY, cut, at, byte));
        put(dir.path(), "trials.json", &trials);
        put(dir.path(), "cells.json", &trials);
        put(dir.path(), "lr_find.json", &trials);
        prop_assert!(crate::sweep::report(dir.path()).is_err());
        prop_assert!(crate::warmup::report(dir.path()).is_err());
        prop_assert!(crate::lrfind::report(dir.path()).is_err());
    }
}
