//! The `batchlab` binary as a user runs it.

use batchlab_tests::{batchlab, text};

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

    // One table per run: the CSV (no JSON-lines copy of it).
    assert!(!out.join("metrics.jsonl").exists());
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
    // Every step's row, in order; eval_loss is empty off evaluation steps, and the last
    // evaluation is the summary's.
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r[col("step")].parse::<usize>().unwrap(), i);
        assert!(r[col("train_loss")].parse::<f64>().unwrap().is_finite());
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

/// The number printed after `label` in `text`.
fn printed_number(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not printed in\n{text}"));
    let rest = &text[at + label.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{label:?} followed by {:?}: {e}", &rest[..end]))
}

#[test]
fn lr_find_on_the_noisy_quadratic_reads_h_max_from_alpha_star_and_lanczos() {
    // NQM d = 100, h_i = c_i = 1/i: λ_max = h_max = 1, so SGD's edge is 2/h_max = 2.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lr");
    let o = batchlab(&[
        "lr-find",
        "--out",
        out.to_str().unwrap(),
        "--lr-min",
        "0.05",
        "--lr-max",
        "5",
        "--ramp-steps",
        "400",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");

    // Lanczos on the exact Hessian diag(1/i): λ_max = 1 and λ_min = 1/100 at both ends.
    let top = printed_number(&t, "Lanczos at θ₀: λ_max = ");
    assert!((top - 1.0).abs() < 1e-3, "Lanczos λ_max {top}");
    let bottom = printed_number(&t, "(λ_min = ");
    assert!((bottom - 0.01).abs() < 2e-3, "Lanczos λ_min {bottom}\n{t}");
    // 2/α* within 20% of h_max: the ramp (×1.0116 per step) overshoots the edge by ×1.08
    // before the loss has grown 4-fold (the closed-form lag), and the top mode's noise, whose
    // stationary variance diverges at the edge, can make the loss rise up to ~15% before it.
    let two_over = printed_number(&t, "2/α* = ");
    assert!((two_over - 1.0).abs() < 0.2, "2/α* = {two_over}\n{t}");
    assert!(t.contains("ratio 2/α* / Lanczos = "), "{t}");

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lr_find.json")).unwrap()).unwrap();
    let alpha = doc["alpha_star"].as_f64().unwrap();
    assert!(
        (2.0 / alpha / two_over - 1.0).abs() < 1e-3,
        "printed and saved α* agree"
    );
    assert!((doc["lambda_max_power"].as_f64().unwrap() - 1.0).abs() < 0.01);
    assert_eq!(doc["suggestion"].as_f64().unwrap(), alpha / 10.0);
    assert_eq!(doc["loss_source"], "eval");
    assert_eq!(doc["settings"]["ramp_steps"], 400);
    assert_eq!(doc["seeds"][0]["cause"], "rise");
    assert_eq!(doc["config"]["schedule"]["decay"], "exponential_ramp");

    // The CSV: one row per step up to the blow-up and a little beyond, rates rising by the
    // ramp's ratio, α* among them.
    let mut csv = csv::Reader::from_path(out.join("lr_find.csv")).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, ["seed", "step", "lr", "loss", "smoothed_loss"]);
    let rows: Vec<(u64, u64, f64, f64, f64)> = csv.deserialize().map(Result::unwrap).collect();
    let blowup = doc["seeds"][0]["blowup_step"].as_u64().unwrap();
    assert!(
        rows.len() as u64 > blowup && rows.len() <= 400,
        "{} rows",
        rows.len()
    );
    let ratio = 100f64.powf(1.0 / 399.0);
    for (k, w) in rows.windows(2).enumerate() {
        assert_eq!((w[0].0, w[0].1, w[1].1), (0, k as u64, k as u64 + 1));
        assert!((w[1].2 / w[0].2 / ratio - 1.0).abs() < 1e-9, "ramp ratio");
    }
    assert!((rows[0].2 / 0.05 - 1.0).abs() < 1e-12);
    let before = rows.iter().find(|r| r.1 + 1 == blowup).unwrap();
    assert_eq!(
        before.2, alpha,
        "α* is the rate of the step before the blow-up"
    );
    assert!(
        rows[..blowup as usize]
            .iter()
            .all(|r| r.3 > 0.0 && r.4 > 0.0)
    );

    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("Loss vs learning rate"));
    assert!(
        page.contains("α* = ") && page.contains("2/λ_p = 2.0000"),
        "marks drawn"
    );
    assert!(out.join("seed0/metrics.csv").exists());
}

#[test]
fn lr_find_print_config_shows_the_ramp_as_the_schedule() {
    let o = batchlab(&["lr-find", "--print-config", "--lr-min", "0.01"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8(o.stdout).unwrap();
    for line in [
        "decay = \"exponential_ramp\"",
        "min_factor = 0.001",
        "horizon = 1000",
        "steps = 1000",
        "lr = 10.0",
        "eval_every = 1",
        "dim = 100",
    ] {
        assert!(s.contains(line), "missing {line} in\n{s}");
    }
    // Another task replaces the default noisy quadratic, and without a closed form the
    // training loss is read (no evaluation but the final one).
    let o = batchlab(&["lr-find", "--print-config", "--task", "mlp"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8(o.stdout).unwrap();
    for line in ["kind = \"mlp\"", "eval_every = 0", "batch = 256"] {
        assert!(s.contains(line), "missing {line} in\n{s}");
    }
}

#[test]
fn lr_find_refuses_bad_ramps_naming_the_value_and_what_is_accepted() {
    for (args, message) in [
        (
            &["--lr-min", "0"][..],
            "lr_min = 0: expected a finite rate > 0",
        ),
        (
            &["--lr-min", "1", "--lr-max", "0.1"],
            "lr_max = 0.1: expected a finite rate above lr_min = 1",
        ),
        (
            &["--ramp-steps", "1"],
            "ramp_steps = 1: expected at least 2 steps",
        ),
        (&["--seeds", "0"], "--seeds 0: expected at least 1 seed"),
    ] {
        let mut all = vec!["lr-find", "--out", "/nonexistent/never"];
        all.extend(args);
        let o = batchlab(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(message), "{args:?}: {}", text(&o));
    }
}

#[test]
fn sweep_takes_another_task_than_its_default_noisy_quadratic() {
    // The default study's `task.dim = 100` belongs to the noisy quadratic: --task drops it.
    let o = batchlab(&["sweep", "--print-config", "--task", "mlp"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(
        s.contains("kind = \"mlp\"") && !s.contains("dim = 100"),
        "{s}"
    );
}

#[test]
fn lr_find_on_two_workers_writes_the_same_files_as_in_process_blow_up_included() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            "lr-find",
            "--ramp-steps",
            "200",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = batchlab(&args);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
        (read("lr_find.csv"), read("seed0/metrics.csv"))
    };
    let (finder, rows) = run("local", &[]);
    // The ramp ends in the blow-up: its rows hold non-finite losses, which travel exactly.
    assert!(
        rows.contains("inf") || rows.contains("NaN"),
        "the ramp blew up: {}",
        rows.lines().last().unwrap_or("")
    );
    assert_eq!((finder, rows), run("workers", &["--workers", "2"]));
    // `batchlab report` renders an lr-find folder again.
    let page = dir.path().join("local").join("report.html");
    std::fs::remove_file(&page).unwrap();
    let o = batchlab(&["report", dir.path().join("local").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read_to_string(&page).unwrap().contains("<svg"));
}
