//! Experiments other than the batch-size sweep, as a user runs them, checked against closed
//! forms from docs/science.md: `batchlab warmup`.

use std::path::Path;

use batchlab_tests::{batchlab, text};
use serde_json::Value;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The record of the cell `(multiple, warmup, momentum)` in `cells.json`.
fn cell(cells: &Value, multiple: f64, warmup: u64, momentum: f64) -> &Value {
    cells
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["multiple"] == multiple && c["warmup_steps"] == warmup && c["momentum"] == momentum
        })
        .unwrap_or_else(|| panic!("no cell ×{multiple} T_w={warmup} μ={momentum}"))
}

#[test]
fn on_a_quadratic_the_edge_is_two_over_lambda_max_whatever_the_warmup() {
    // Exact gradient descent on ½ Σ θ_i²/i (no noise): λ_max = h_1 = 1, so SGD is stable iff
    // η < 2 (×1 of the unit 2/λ_max) and heavy ball with μ = 0.5 iff η < 2(1 + μ) = 3 (×1.5).
    // A warmup only delays the divergence: the curvature never changes.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid");
    let args = [
        "warmup",
        "--out",
        out.to_str().unwrap(),
        "--set",
        "task.dim=10",
        "--set",
        "task.noise_scale=0",
        "--batch",
        "8",
        "--steps",
        "300",
        "--multiples",
        "0.9,1.1,1.6",
        "--warmups",
        "0,20",
        "--shapes",
        "linear",
        "--momentum",
        "0,0.5",
    ];
    let o = batchlab(&args);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    // The printed λ_max(θ₀) and heavy ball's edge 2(1+μ)/λ_max = 3.
    let printed = |label: &str| -> f64 {
        let at = t
            .find(label)
            .unwrap_or_else(|| panic!("{label} not in {t}"))
            + label.len();
        let end = t[at..].find([' ', ',', ':', '\n']).unwrap() + at;
        t[at..end].parse().unwrap()
    };
    assert!((printed("λ_max(θ₀) = ") - 1.0).abs() < 0.01, "{t}");
    assert!((printed("2(1+μ)/λ_max = ") - 3.0).abs() < 0.03, "{t}");

    let study = json(&out.join("study.json"));
    assert_eq!(study["experiment"], "warmup");
    let lambda = study["reference"]["lambda_max"].as_f64().unwrap();
    assert!((lambda - 1.0).abs() < 0.01, "λ_max(θ₀) {lambda} vs h_1 = 1");
    let unit = study["reference"]["unit_lr"].as_f64().unwrap();
    assert!((unit - 2.0).abs() < 0.02, "2/λ_max {unit}");

    let cells = json(&out.join("cells.json"));
    assert_eq!(cells.as_array().unwrap().len(), 3 * 2 * 2);
    let status = |k: f64, w: u64, mu: f64| cell(&cells, k, w, mu)["status"].as_str().unwrap();
    for w in [0, 20] {
        // SGD: ×0.9 below the edge trains, ×1.1 above it diverges, with or without warmup.
        assert_eq!(status(0.9, w, 0.0), "COMPLETE", "×0.9 T_w={w}");
        assert_eq!(status(1.1, w, 0.0), "INFEASIBLE", "×1.1 T_w={w}");
        assert_eq!(status(1.6, w, 0.0), "INFEASIBLE", "×1.6 T_w={w}");
        // Heavy ball μ = 0.5: the edge moves to ×1.5.
        assert_eq!(status(1.1, w, 0.5), "COMPLETE", "μ=0.5 ×1.1 T_w={w}");
        assert_eq!(status(1.6, w, 0.5), "INFEASIBLE", "μ=0.5 ×1.6 T_w={w}");
    }
    // The peak rate is the multiple of 2/λ_max, and η·λ_max at the peak is twice the multiple.
    let c = cell(&cells, 0.9, 0, 0.0);
    assert!((c["peak_lr"].as_f64().unwrap() - 1.8).abs() < 0.02);
    let edge = c["max_lr_sharpness"].as_f64().unwrap();
    assert!((edge - 1.8).abs() < 0.02, "max η·λ_max {edge}");
    // The warmup delays the descent of a stable rate.
    let steps = |w: u64| {
        cell(&cells, 0.9, w, 0.0)["steps_to_target"]
            .as_u64()
            .unwrap()
    };
    assert!(steps(20) > steps(0), "{} vs {}", steps(20), steps(0));

    let analysis = json(&out.join("analysis.json"));
    let maps = analysis["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 2, "one map per momentum (one shape)");
    for m in maps {
        let mu = m["momentum"].as_f64().unwrap();
        let (stable, diverged) = if mu == 0.0 { (0.9, 1.1) } else { (1.1, 1.6) };
        for r in m["rows"].as_array().unwrap() {
            assert_eq!(r["largest_stable"], stable, "μ={mu}: {r}");
            assert_eq!(r["smallest_diverged"], diverged, "μ={mu}: {r}");
        }
    }
    for f in ["cells.csv", "report.html"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("Stability map: linear warmup, μ = 0.5"));
    assert!(page.contains("Sharpness and 2/η(t)") && page.contains("<svg"));

    // Again: every run is reused.
    let o = batchlab(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("12 runs (0 run, 12 reused)"),
        "{}",
        text(&o)
    );

    // The report is rendered again from the folder alone.
    std::fs::remove_file(out.join("report.html")).unwrap();
    let o = batchlab(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("largest stable ×"), "{}", text(&o));
    assert!(out.join("report.html").exists());
}

#[test]
fn on_the_plateau_warmup_only_delays_the_descent() {
    // f = Σ ln(1 + x_i²) from x = 10: the gradient 2x/(1 + x²) is small and the path depends on
    // the cumulative rate Σ η_t alone (to first order in the step). A linear warmup of T_w
    // steps covers Σ_{t<T_w} (t+1)/T_w = (T_w + 1)/2 steps' worth of the peak rate, so it
    // reaches the target (T_w − 1)/2 = 24.5 steps later for T_w = 50.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plateau");
    let o = batchlab(&[
        "warmup",
        "--out",
        out.to_str().unwrap(),
        "--task",
        "plateau",
        "--unit",
        "lr",
        "--lr",
        "0.5",
        "--multiples",
        "1",
        "--warmups",
        "0,50",
        "--shapes",
        "linear",
        "--momentum",
        "0",
        "--batch",
        "16",
        "--steps",
        "200",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("slower to target"), "{t}");
    let cells = json(&out.join("cells.json"));
    let steps = |w: u64| {
        let c = cell(&cells, 1.0, w, 0.0);
        assert_eq!(c["status"], "COMPLETE", "{c}");
        c["steps_to_target"].as_u64().unwrap() as f64
    };
    let delay = steps(50) - steps(0);
    assert!(
        (delay - 24.5).abs() <= 3.0,
        "warmup delay {delay} steps ({} vs {}), closed form 24.5",
        steps(50),
        steps(0)
    );
}

#[test]
fn bad_warmup_settings_are_refused_naming_the_value() {
    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["warmup"];
        all.extend_from_slice(args);
        let o = batchlab(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    };
    refused(
        &["--shapes", "linear,foo"],
        "--shapes foo: expected none, linear or cubic",
    );
    refused(
        &["--multiples", "1,-2"],
        "--multiples -2: expected finite multiples > 0",
    );
    refused(&["--momentum", "0,1"], "--momentum 1: expected μ in [0, 1)");
    refused(&["--unit", "steps"], "--unit steps: expected edge");
    refused(
        &["--target-fraction", "2"],
        "--target-fraction 2: expected a fraction in (0, 1)",
    );
    refused(
        &["--optimizer", "adam"],
        "--optimizer adam: the warmup grid",
    );
    refused(
        &["--shapes", "none", "--warmups", "0,10"],
        "--shapes none: expected linear or cubic as well, for the warmups 10",
    );
    // The plateau curves down at θ₀ = 10: 2/λ_max is no rate there.
    refused(
        &["--task", "plateau"],
        "λ_max(θ₀) = -1.9410e-2: the loss does not curve up",
    );
}
