//! The `batchlab` binary as a user runs it.

mod common;

use common::{batchlab, text};

use std::path::Path;

#[test]
fn train_writes_config_metrics_and_summary_that_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = batchlab(&[
        "train",
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "32",
        "--steps",
        "25",
        "--set",
        "task.dim=50",
        "--set",
        "eval_every=5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("INCOMPLETE after 25 steps"),
        "{}",
        text(&o)
    );

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"]["status"], "INCOMPLETE");
    assert_eq!(summary["summary"]["steps"], 25);
    assert_eq!(summary["summary"]["samples"], 25 * 32);
    assert_eq!(summary["config"]["task"]["dim"], 50);

    let jsonl = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 25);
    let mut csv = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    let header = csv.headers().unwrap().clone();
    let records: Vec<_> = csv.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 25);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("column {name}"))
    };
    // The CSV and JSONL carry the same numbers; eval_loss is empty off evaluation steps.
    for (r, j) in records.iter().zip(&rows) {
        let loss: f64 = r[col("train_loss")].parse().unwrap();
        assert_eq!(loss, j["train_loss"].as_f64().unwrap());
        assert_eq!(r[col("eval_loss")].is_empty(), j["eval_loss"].is_null());
    }
    assert!(!records[5][col("eval_loss")].is_empty() && records[6][col("eval_loss")].is_empty());

    // The resolved config reruns to the same parameters.
    let again = dir.path().join("again");
    let o = batchlab(&[
        "train",
        "--config",
        out.join("config.toml").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let digest = |p: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("summary.json")).unwrap())
                .unwrap();
        v["summary"]["params_digest"].as_str().unwrap().to_string()
    };
    assert_eq!(digest(&out), digest(&again));
}

#[test]
fn bad_config_values_are_refused_naming_field_value_and_accepted_range() {
    let o = batchlab(&[
        "train",
        "--batch",
        "10",
        "--micro",
        "3",
        "--out",
        "/nonexistent/never",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("micro = 3: expected a divisor of batch = 10"),
        "{}",
        text(&o)
    );

    let o = batchlab(&[
        "train",
        "--set",
        "optimizer.momentum=1.5",
        "--optimizer",
        "momentum",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("optimizer.momentum = 1.5"),
        "{}",
        text(&o)
    );

    let o = batchlab(&["train", "--set", "task.dimm=5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown field `dimm`"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "batch = \"many\"\n").unwrap();
    let o = batchlab(&["train", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("bad.toml") && text(&o).contains("many"),
        "{}",
        text(&o)
    );
}

#[test]
fn print_config_shows_every_section_and_round_trips() {
    let o = batchlab(&["train", "--print-config", "--task", "linreg"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8(o.stdout).unwrap();
    for section in [
        "[task]",
        "kind = \"linreg\"",
        "[optimizer]",
        "[schedule]",
        "batch = 64",
    ] {
        assert!(s.contains(section), "missing {section} in\n{s}");
    }
}
