//! `batchlab plan` as a user runs it, on a sweep analysis written by hand (a known fit), checked
//! against the time-to-target formula of docs/science.md#planning computed here.

use batchlab_tests::{batchlab, text};

/// The tests of this file one at a time: one of them times runs, and the others' processes
/// would share its cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A sweep folder whose analysis says `S(B) = s_min(1 + b_crit/B)`, measured on `B = 1…1024`.
fn sweep_with_fit(dir: &std::path::Path, fit: Option<(f64, f64)>) -> std::path::PathBuf {
    sweep_at(dir, "sweep", 0.1, fit)
}

/// [`sweep_with_fit`] in `dir/name`, at target loss `target`.
fn sweep_at(
    dir: &std::path::Path,
    name: &str,
    target: f64,
    fit: Option<(f64, f64)>,
) -> std::path::PathBuf {
    let sweep = dir.join(name);
    std::fs::create_dir_all(&sweep).unwrap();
    let best: Vec<serde_json::Value> = [1u64, 32, 1024]
        .iter()
        .map(|&b| serde_json::json!({"batch": b, "seed": 0, "lr": 0.1, "steps": 10, "samples": 10 * b}))
        .collect();
    let fit = fit.map(|(s_min, b_crit)| {
        serde_json::json!({"s_min": s_min, "e_min": s_min * b_crit, "b_crit": b_crit,
                           "rms_log_residual": 0.0, "n": 3})
    });
    let doc = serde_json::json!({"target": target, "fit": fit, "best": best});
    std::fs::write(sweep.join("analysis.json"), doc.to_string()).unwrap();
    sweep
}

#[test]
fn the_plan_gives_the_formulas_time_and_best_batch_for_each_worker_count() {
    let _alone = alone();
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

/// Sweeps at three targets: a plan for each, the target falling, with B_crit growing as
/// the sweeps' fits say and each target's best batch from its own fit.
#[test]
fn several_sweeps_plan_every_target_and_show_b_crit_as_the_target_falls() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    // Given out of order: (target, S_min, B_crit).
    let fits = [
        (0.01, 400.0, 4000.0),
        (0.1, 100.0, 100.0),
        (0.03, 200.0, 800.0),
    ];
    let sweeps: Vec<String> = fits
        .iter()
        .map(|&(t, s, b)| {
            let d = sweep_at(dir.path(), &format!("sweep-{t}"), t, Some((s, b)));
            d.to_str().unwrap().to_owned()
        })
        .collect();
    let out = dir.path().join("plan");
    let o = batchlab(&[
        "plan",
        "--sweep",
        &sweeps.join(","),
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
        "1,64",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    let targets = plan["targets"].as_array().unwrap();
    let got: Vec<(f64, f64)> = targets
        .iter()
        .map(|p| {
            (
                p["target"].as_f64().unwrap(),
                p["statistics"]["fit"]["b_crit"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(0.1, 100.0), (0.03, 800.0), (0.01, 4000.0)]);
    // The headline is the lowest target's plan.
    assert_eq!(plan["target"].as_f64(), Some(0.01));
    // Each target's best batch on 64 workers is its own fit's argmin over the powers of two.
    for (p, &(_, s_min, b_crit)) in targets.iter().zip([fits[1], fits[2], fits[0]].iter()) {
        let time = |b: f64| {
            let ring = 2.0 * 63.0 * 100e-6 + 2.0 * 63.0 / 64.0 * 4e6 / 1e9;
            s_min * (1.0 + b_crit / b) * (100e-6 * (b / 64.0).ceil() + ring)
        };
        let want = (6..=20)
            .map(|k| f64::from(1u32 << k))
            .min_by(|&a, &b| time(a).total_cmp(&time(b)))
            .unwrap();
        let on64 = &p["fastest_per_workers"].as_array().unwrap()[1];
        assert_eq!(on64["batch"].as_f64(), Some(want), "{p}");
    }
    assert!(t.contains("as the target falls:"), "{t}");
    // B_crit = 4000 lies beyond the measured B = 1…1024: said so.
    assert!(t.contains("outside B = 1…1024 (extrapolated)"), "{t}");
    let rows = std::fs::read_to_string(out.join("plan.csv")).unwrap();
    assert_eq!(rows.lines().count(), 1 + 3 * (21 + 15));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("As the target loss falls"));
    // Two sweeps of one target are refused, naming both.
    let twin = sweep_at(dir.path(), "twin", 0.1, Some((1.0, 1.0)));
    let o = batchlab(&[
        "plan",
        "--sweep",
        &format!("{},{}", sweeps[1], twin.to_str().unwrap()),
        "--per-sample-us",
        "100",
        "--params",
        "1M",
        "--alpha-us",
        "10",
        "--bandwidth-gbs",
        "10",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("both are of target loss 1e-1; expected one sweep per target"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_plan_input_is_refused_naming_the_value_and_what_is_accepted() {
    let _alone = alone();
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
    for (params, bandwidth, want) in [
        ("1M", "0", "--bandwidth-gbs = 0: expected a positive number"),
        (
            "lots",
            "10",
            "\"lots\": expected a positive count such as 1000000, 25M or 7G",
        ),
    ] {
        let a = [
            "plan",
            "--sweep",
            with_fit,
            "--per-sample-us",
            "100",
            "--params",
            params,
            "--alpha-us",
            "10",
            "--bandwidth-gbs",
            bandwidth,
        ];
        let o = batchlab(&a);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(want), "{}", text(&o));
    }
}

/// The whole pipeline on a small case, as `bench/science/plan_validation.py` runs it at full
/// size: a sweep fits S(B), `bench step` times the compute at two batch sizes, `bench allreduce`
/// fits the loopback network, `plan` predicts, and real runs on 1 and 2 local workers are timed
/// to the same target. The steps are seeded (no timing in them) and must come within 25 % of
/// the fit's; the time, under whatever else the machine runs, within a factor of 3 (the 20 %
/// goal is measured by the script on an idle machine; its table is in the README).
#[test]
fn the_plans_predicted_time_to_target_is_near_the_measured_one_on_local_workers() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
    let ok = |args: &[&str]| {
        let o = batchlab(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    };
    let task = ["--task", "nqm", "--set", "task.dim=300", "--micro", "16"];
    let sweep = path("sweep");
    let mut a = vec![
        "sweep",
        "--out",
        &sweep,
        "--batches",
        "32,128,512",
        "--seeds",
        "2",
    ];
    a.extend([
        "--held-out-seeds",
        "4",
        "--lr-grid",
        "0.3:1.9:5",
        "--target-fraction",
        "0.1",
    ]);
    a.extend(["--probe-samples", "0", "--steps", "5000"]);
    a.extend(task);
    ok(&a);
    let (s64, s512) = (path("step64"), path("step512"));
    for (b, out) in [("64", &s64), ("512", &s512)] {
        let mut a = vec![
            "bench",
            "step",
            "--workers",
            "1",
            "--batch",
            b,
            "--steps",
            "60",
        ];
        a.extend(["--out", out.as_str()]);
        a.extend(task);
        ok(&a);
    }
    let net = path("net");
    ok(&[
        "bench",
        "allreduce",
        "--algorithms",
        "ring",
        "-b",
        "4K",
        "-e",
        "256K",
        "-n",
        "10",
        "--workers",
        "2",
        "--out",
        &net,
    ]);
    let plan = path("plan");
    let compute = format!("{s64}/step.json,{s512}/step.json");
    ok(&[
        "plan",
        "--sweep",
        &sweep,
        "--compute",
        &compute,
        "--network",
        &format!("{net}/allreduce.json"),
        "--batches",
        "128,512",
        "--workers",
        "1,2",
        "--out",
        &plan,
    ]);
    let analysis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{sweep}/analysis.json")).unwrap())
            .unwrap();
    let target = analysis["target"].as_f64().unwrap();
    let lr_of = |b: u64| {
        analysis["best"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["batch"] == b)
            .unwrap()["lr"]
            .as_f64()
            .unwrap()
    };
    let mut predicted = csv::Reader::from_path(format!("{plan}/plan.csv")).unwrap();
    let predicted: Vec<(u64, usize, f64, f64)> = predicted
        .deserialize::<std::collections::HashMap<String, String>>()
        .map(|r| {
            let r = r.unwrap();
            (
                r["batch"].parse::<f64>().unwrap() as u64,
                r["workers"].parse().unwrap(),
                r["time_s"].parse().unwrap(),
                r["steps"].parse().unwrap(),
            )
        })
        .collect();
    assert!(
        std::fs::read_to_string(format!("{plan}/report.html"))
            .unwrap()
            .contains("<svg")
    );
    for (b, n) in [(128u64, 1usize), (512, 2)] {
        let out = path(&format!("run-{b}-{n}"));
        let (bs, ns, lr, tg) = (
            b.to_string(),
            n.to_string(),
            lr_of(b).to_string(),
            target.to_string(),
        );
        let mut a = vec![
            "run",
            "--workers",
            &ns,
            "--batch",
            &bs,
            "--lr",
            &lr,
            "--seed",
            "77",
        ];
        a.extend(["--target-loss", &tg, "--steps", "5000", "--out", &out]);
        a.extend(["--set", "eval_every=1", "--set", "target_window=0.05"]);
        a.extend(task);
        ok(&a);
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{out}/summary.json")).unwrap())
                .unwrap();
        assert_eq!(s["summary"]["status"], "COMPLETE", "{s}");
        let measured = s["timing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["wall_s"].as_f64().unwrap())
            .fold(0.0, f64::max);
        let (want_steps, want) = predicted
            .iter()
            .find(|p| p.0 == b && p.1 == n)
            .map(|p| (p.3, p.2))
            .unwrap();
        let steps = s["summary"]["steps"].as_f64().unwrap();
        assert!(
            (steps / want_steps - 1.0).abs() <= 0.25,
            "B = {b}, N = {n}: the fit's {want_steps:.1} steps, measured {steps}"
        );
        let ratio = want / measured;
        assert!(
            (1.0 / 3.0..=3.0).contains(&ratio),
            "B = {b}, N = {n}: predicted {want:.3} s, measured {measured:.3} s"
        );
    }
}

/// `--schedule RUN`: a run whose batch followed the noise scale, priced step by step: on one
/// worker (no all-reduce) its time is Σ_t t_c·B_t, computed here from its metrics.csv; a run
/// that did not reach its target is refused.
#[test]
fn a_schedules_run_is_priced_step_by_step_and_an_unfinished_one_is_refused() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let sweep = sweep_with_fit(dir.path(), Some((100.0, 1000.0)));
    let run = dir.path().join("run");
    let train = |target: &str, steps: &str| {
        let o = batchlab(&[
            "train",
            "--task",
            "nqm",
            "--set",
            "task.dim=50",
            "--batch",
            "8",
            "--micro",
            "4",
            "--lr",
            "0.8",
            "--target-loss",
            target,
            "--steps",
            steps,
            "--out",
            run.to_str().unwrap(),
            "--set",
            "batch_schedule.kind=\"noise\"",
            "--set",
            "batch_schedule.max=512",
            "--set",
            "batch_schedule.every=5",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    };
    train("0.05", "5000");
    let plan = |out: &str| {
        batchlab(&[
            "plan",
            "--sweep",
            sweep.to_str().unwrap(),
            "--out",
            out,
            "--per-sample-us",
            "100",
            "--grad-bytes",
            "4M",
            "--alpha-us",
            "100",
            "--bandwidth-gbs",
            "1",
            "--workers",
            "1,4",
            "--schedule",
            run.to_str().unwrap(),
        ])
    };
    let out = dir.path().join("plan");
    let o = plan(out.to_str().unwrap());
    assert!(o.status.success(), "{}", text(&o));
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let batches: Vec<f64> = batchlab_tests::csv_column(&metrics, "batch");
    assert!(
        batches.iter().any(|&b| b != 8.0),
        "the batch changed: {batches:?}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    let one = &doc["schedule"]["per_workers"][0];
    assert_eq!(one["workers"], 1);
    let want: f64 = batches.iter().map(|b| 100e-6 * b).sum();
    let got = one["time_s"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    assert_eq!(one["steps"], batches.len());
    assert!(text(&o).contains("the schedule of"), "{}", text(&o));

    // The same folder after a run that stopped short of its target.
    train("1e-9", "20");
    let o = plan(dir.path().join("plan2").to_str().unwrap());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("the run ended INCOMPLETE; expected a run that reached its target"),
        "{}",
        text(&o)
    );
}
