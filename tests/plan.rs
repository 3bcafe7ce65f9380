//! `batchlab plan` as a user runs it, on a sweep analysis written by hand (a known fit), checked
//! against the time-to-target formula of docs/science.md#planning computed here.

use batchlab_tests::{batchlab, text};

/// A sweep folder whose analysis says `S(B) = s_min(1 + b_crit/B)`, measured on `B = 1…1024`.
fn sweep_with_fit(dir: &std::path::Path, fit: Option<(f64, f64)>) -> std::path::PathBuf {
    let sweep = dir.join("sweep");
    std::fs::create_dir_all(&sweep).unwrap();
    let best: Vec<serde_json::Value> = [1u64, 32, 1024]
        .iter()
        .map(|&b| serde_json::json!({"batch": b, "seed": 0, "lr": 0.1, "steps": 10, "samples": 10 * b}))
        .collect();
    let fit = fit.map(|(s_min, b_crit)| {
        serde_json::json!({"s_min": s_min, "e_min": s_min * b_crit, "b_crit": b_crit,
                           "rms_log_residual": 0.0, "n": 3})
    });
    let doc = serde_json::json!({"target": 0.1, "fit": fit, "best": best});
    std::fs::write(sweep.join("analysis.json"), doc.to_string()).unwrap();
    sweep
}

#[test]
fn the_plan_gives_the_formulas_time_and_best_batch_for_each_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let (s_min, b_crit) = (100.0, 1000.0);
    let sweep = sweep_with_fit(dir.path(), Some((s_min, b_crit)));
    let out = dir.path().join("plan");
    let o = batchlab(&[
        "plan",
        "--sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--per-sample-us",
        "100",
        "--grad-bytes",
        "4M",
        "--alpha-us",
        "100",
        "--bandwidth-gbs",
        "1",
        "--workers",
        "1,4,16,64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    // t(B, N) = S(B)·(t_c·⌈B/N⌉ + ring(N)), ring(N) = 2(N−1)α + 2(N−1)/N·bytes/β.
    let time = |b: f64, n: f64| {
        let ring = if n > 1.0 {
            2.0 * (n - 1.0) * 100e-6 + 2.0 * (n - 1.0) / n * 4e6 / 1e9
        } else {
            0.0
        };
        s_min * (1.0 + b_crit / b) * (100e-6 * (b / n).ceil() + ring)
    };
    let fastest = plan["fastest_per_workers"].as_array().unwrap();
    assert_eq!(fastest.len(), 4);
    for p in fastest {
        let n = p["workers"].as_f64().unwrap();
        // The default batches: powers of two up to 2^20, at least one sample per worker.
        let want = (0..=20)
            .map(|k| f64::from(1u32 << k))
            .filter(|&b| b >= n)
            .min_by(|&a, &b| time(a, n).total_cmp(&time(b, n)))
            .unwrap();
        let (b, t) = (p["batch"].as_f64().unwrap(), p["time_s"].as_f64().unwrap());
        assert_eq!(b, want, "N = {n}");
        assert!((t / time(want, n) - 1.0).abs() < 1e-12, "N = {n}: {t}");
    }
    // Every (B, N) with B ≥ N is in the table: 21 + 19 + 17 + 15 rows.
    let rows = std::fs::read_to_string(out.join("plan.csv")).unwrap();
    assert_eq!(rows.lines().count(), 1 + 21 + 19 + 17 + 15);
    assert!(text(&o).contains("fastest: B = "), "{}", text(&o));
}

#[test]
fn bad_plan_input_is_refused_naming_the_value_and_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let with_fit = sweep_with_fit(dir.path(), Some((100.0, 1000.0)));
    let no_fit_dir = tempfile::tempdir().unwrap();
    let no_fit = sweep_with_fit(no_fit_dir.path(), None);
    let network = dir.path().join("not-allreduce.json");
    std::fs::write(&network, "{\"rows\": []}").unwrap();
    let (with_fit, no_fit, network) = (
        with_fit.to_str().unwrap(),
        no_fit.to_str().unwrap(),
        network.to_str().unwrap(),
    );
    let base = ["--per-sample-us", "100", "--params", "1M"];
    let link = ["--alpha-us", "10", "--bandwidth-gbs", "10"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--sweep", no_fit], "has no fit of S(B)"),
        (
            vec!["--sweep", "/nonexistent-sweep"],
            "no analysis.json there",
        ),
        (
            vec!["--sweep", with_fit, "--workers", "0"],
            "--workers 0: expected worker counts of at least 1",
        ),
        (
            vec!["--sweep", with_fit, "--network", network],
            "no \"algorithms\"",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec!["plan"];
        a.extend(&args);
        a.extend(base);
        if !args.contains(&"--network") {
            a.extend(link);
        }
        let o = batchlab(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{a:?}: {}", text(&o));
    }
    // A zero bandwidth, and a count clap's parser refuses, each named.
    let a = [
        "plan",
        "--sweep",
        with_fit,
        "--per-sample-us",
        "100",
        "--params",
        "1M",
        "--alpha-us",
        "10",
        "--bandwidth-gbs",
        "0",
    ];
    let o = batchlab(&a);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--bandwidth-gbs = 0: expected a positive number"),
        "{}",
        text(&o)
    );
    let a = [
        "plan",
        "--sweep",
        with_fit,
        "--per-sample-us",
        "100",
        "--params",
        "lots",
        "--alpha-us",
        "10",
        "--bandwidth-gbs",
        "10",
    ];
    let o = batchlab(&a);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("\"lots\": expected a positive count such as 1000000, 25M or 7G"),
        "{}",
        text(&o)
    );
}
