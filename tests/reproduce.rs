//! `batchlab reproduce` as a user runs it: the quick form of an entry, its verdict checked
//! against the rule applied here to the figures its own studies wrote, and the same figures
//! on local worker processes.

use batchlab_tests::{batchlab, text};
use serde_json::Value;

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What the rules of docs/science.md#mccandlish say of the figures, written out here apart from
/// the program's own code: (noise check, growth check).
fn rules(
    per_task: &[(f64, f64, bool)],
    falling: &[(f64, f64, f64, bool)],
) -> (&'static str, &'static str) {
    let noise = if per_task
        .iter()
        .any(|&(b, s, inside)| inside && !(0.1..=10.0).contains(&(b / s)))
    {
        "does_not_hold"
    } else if per_task.iter().all(|&(_, _, inside)| inside) {
        "holds"
    } else {
        "inconclusive"
    };
    // (target, lo, hi, inside), the target falling.
    let growth = if falling.iter().any(|f| !f.3) {
        "inconclusive"
    } else if falling.windows(2).all(|w| w[1].1 > w[0].2) {
        "holds"
    } else if falling.windows(2).any(|w| w[1].2 < w[0].1) {
        "does_not_hold"
    } else {
        "inconclusive"
    };
    (noise, growth)
}

#[test]
fn mccandlish_quick_judges_the_figures_of_its_own_sweeps_and_workers_change_none() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut a = vec![
            "reproduce",
            "mccandlish",
            "--quick",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        let o = batchlab(&a);
        assert!(o.status.success(), "{}", text(&o));
        (out.join("mccandlish"), text(&o))
    };
    let (here, log) = run("here", &[]);
    let verdict = json(&here.join("verdict.json"));
    assert_eq!(verdict["form"], "quick");
    // The figures are the sweeps' own: read from their analysis.json here.
    let mut falling = Vec::new();
    for (i, folder) in ["nqm-quick-30pct", "nqm-quick-10pct", "nqm-quick-3pct"]
        .iter()
        .enumerate()
    {
        let a = json(&here.join(folder).join("analysis.json"));
        let fig = &verdict["figures"]["falling_target"][i];
        assert_eq!(fig["b_crit"], a["fit"]["b_crit"], "{folder}");
        assert_eq!(fig["target"], a["target"], "{folder}");
        assert_eq!(fig["b_simple"], a["noise"]["median_b_simple"], "{folder}");
        let ci = &a["interval"]["b_crit"];
        falling.push((
            a["target"].as_f64().unwrap(),
            ci["lo"].as_f64().unwrap(),
            ci["hi"].as_f64().unwrap(),
            a["in_range"].as_bool().unwrap(),
        ));
    }
    assert!(
        falling.windows(2).all(|w| w[1].0 < w[0].0),
        "targets fall: {falling:?}"
    );
    let a = json(&here.join("nqm-quick-3pct").join("analysis.json"));
    let per_task = [(
        a["fit"]["b_crit"].as_f64().unwrap(),
        a["noise"]["median_b_simple"].as_f64().unwrap(),
        a["in_range"].as_bool().unwrap(),
    )];
    let (noise, growth) = rules(&per_task, &falling);
    let checks = verdict["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[0]["verdict"], noise, "{}", checks[0]);
    assert_eq!(checks[1]["verdict"], growth, "{}", checks[1]);
    let overall = if checks.iter().any(|c| c["verdict"] == "does_not_hold") {
        "does_not_hold"
    } else if checks.iter().any(|c| c["verdict"] == "inconclusive") {
        "inconclusive"
    } else {
        "holds"
    };
    assert_eq!(verdict["verdict"], overall);
    assert!(log.contains("mccandlish (quick): "), "{log}");
    let html = std::fs::read_to_string(here.join("report.html")).unwrap();
    let first = html.find("<h2>").expect("a section");
    assert!(
        html[first..].starts_with("<h2>Verdict: "),
        "the verdict comes first"
    );
    assert!(html.contains("<svg"), "the plot");

    // On two local worker processes: the same figures.
    let (workers, _) = run("workers", &["--workers", "2"]);
    let w = json(&workers.join("verdict.json"));
    assert_eq!(w["figures"], verdict["figures"]);
    assert_eq!(w["checks"], verdict["checks"]);
}

#[test]
fn an_unknown_entry_is_refused_naming_it_and_the_catalog() {
    let o = batchlab(&["reproduce", "no-such-claim"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no entry \"no-such-claim\" in the catalog; expected one of: mccandlish, smith-batch-for-decay"),
        "{}",
        text(&o)
    );
    let o = batchlab(&["reproduce", "--list"]);
    assert!(o.status.success(), "{}", text(&o));
    for field in ["claim:", "source:", "rule:", "default:", "--quick:"] {
        assert!(text(&o).contains(field), "{}", text(&o));
    }
}

/// The rule of docs/science.md#reproduce for `smith-batch-for-decay`, written out here: the
/// median of per-seed ratios of final eval losses.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[test]
fn batch_for_decay_quick_judges_its_own_runs_and_workers_change_none() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut a = vec![
            "reproduce",
            "smith-batch-for-decay",
            "--quick",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        let o = batchlab(&a);
        assert!(o.status.success(), "{}", text(&o));
        out.join("smith-batch-for-decay")
    };
    let here = run("here", &[]);
    let verdict = json(&here.join("verdict.json"));
    // Every figure from the runs' own summaries, read here.
    let summary = |name: &str, seed: u64| {
        json(&here.join(format!("{name}-s{seed}")).join("summary.json"))["summary"].clone()
    };
    let loss = |name: &str, seed: u64| summary(name, seed)["final_eval_loss"].as_f64().unwrap();
    let seeds = 0..4u64;
    let grow = median(
        seeds
            .clone()
            .map(|s| loss("grow", s) / loss("decay", s))
            .collect(),
    );
    let control = median(
        seeds
            .clone()
            .map(|s| loss("control", s) / loss("decay", s))
            .collect(),
    );
    let want = if control < 1.1 {
        "inconclusive"
    } else if (0.9..=1.1).contains(&grow) {
        "holds"
    } else {
        "does_not_hold"
    };
    let checks = verdict["checks"].as_array().unwrap();
    assert_eq!(checks[0]["verdict"], want, "{}", checks[0]);
    assert!(
        checks[0]["measured"]
            .as_str()
            .unwrap()
            .contains(&format!("grow/decay {grow:.3}")),
        "{}",
        checks[0]
    );
    // Same samples; the grown batch takes 16000/32 + 16000/160 + 16000/800 = 620 updates.
    for s in seeds.clone() {
        assert_eq!(summary("grow", s)["steps"], 620);
        assert_eq!(summary("decay", s)["steps"], 1500);
        assert_eq!(
            summary("grow", s)["samples"],
            summary("decay", s)["samples"]
        );
    }
    assert_eq!(checks[1]["verdict"], "holds", "{}", checks[1]);

    let workers = run("workers", &["--workers", "2"]);
    let w = json(&workers.join("verdict.json"));
    assert_eq!(w["figures"], verdict["figures"]);
    assert_eq!(w["checks"], verdict["checks"]);
}
