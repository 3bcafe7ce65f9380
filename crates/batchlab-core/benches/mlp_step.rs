//! One training step of the `mlp` task, timed, beside PyTorch's.
//!
//! `cargo bench -p batchlab-core --bench mlp_step [-- --steps N --batch B]`
//!
//! Forward + backward (`Mlp::loss_grad`) of a 784-256-256-10 ReLU MLP at batch 256 on one
//! thread, for each compiled-in matmul backend (faer) and precision; the forward pass alone
//! (`Mlp::loss`) shows how the time splits. Then `bench/peers/torch_mlp_step.py` runs the same
//! step in PyTorch (1 thread) if `torch` is importable, and the ratio is printed.

use std::process::Command;
use std::time::Instant;

use batchlab_core::tasks::mlp::{MlpConfig, MlpData, Precision, TeacherData};
use batchlab_core::{Scratch, Task};

const WIDTHS: [usize; 4] = [784, 256, 256, 10];

/// Median, 10th and 90th percentile of `steps` timed calls of `f` after `warmup` calls, in ms.
fn time(warmup: usize, steps: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..steps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[t.len() / 10], t[(9 * t.len()) / 10])
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let steps = arg("--steps", 200);
    let batch = arg("--batch", 256);
    let pairs = || WIDTHS.windows(2).map(|w| (w[0] * w[1]) as f64);
    let fwd_flops = 2.0 * batch as f64 * pairs().sum::<f64>();
    // Backward: weight gradients (as many flops as the forward pass) and input gradients of
    // every layer but the first.
    let step_flops = 2.0 * fwd_flops + 2.0 * batch as f64 * pairs().skip(1).sum::<f64>();
    println!(
        "mlp step: widths {WIDTHS:?}, batch {batch}, 1 thread, {steps} timed steps; {:.1} MFLOP per step",
        step_flops / 1e6
    );
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let samples: Vec<u64> = (0..batch as u64).collect();
    let mut faer_f32_ms = None;
    for precision in [Precision::F32, Precision::F64] {
        let config = MlpConfig {
            hidden: WIDTHS[1..3].to_vec(),
            data: MlpData::Teacher(TeacherData {
                input_dim: WIDTHS[0],
                classes: WIDTHS[3],
                train_size: batch,
                eval_size: 1,
                ..TeacherData::default()
            }),
            precision,
            seed: 1,
        };
        let mlp = config.build().expect("bench config is valid");
        let params = mlp.init_params();
        let mut grad = vec![0.0; params.len()];
        let mut scratch = Scratch::new();
        let (med, p10, p90) = time(20, steps, || {
            std::hint::black_box(mlp.loss_grad(&params, &samples, &mut grad, &mut scratch));
        });
        let (fmed, _, _) = time(20, steps, || {
            std::hint::black_box(mlp.loss(&params, &samples, &mut scratch));
        });
        println!(
            "batchlab faer {precision:?}: step median {med:.3} ms (p10 {p10:.3}, p90 {p90:.3}), {:.1} GFLOP/s; forward alone {fmed:.3} ms",
            step_flops / med / 1e6
        );
        if precision == Precision::F32 {
            faer_f32_ms = Some(med);
        }
    }

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/peers/torch_mlp_step.py"
    );
    let has_torch = Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        println!(
            "PyTorch: not importable; to compare, `pip install torch` and rerun (peer script: {script})"
        );
        return;
    }
    let widths = WIDTHS.map(|w| w.to_string()).join(",");
    let out = Command::new("python3")
        .args([
            script,
            "--widths",
            &widths,
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            println!(
                "PyTorch peer failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!("PyTorch peer could not start: {e}");
            return;
        }
    };
    print!("{text}");
    let torch_ms = text
        .lines()
        .filter_map(|l| l.strip_prefix("torch_mlp_step median_ms="))
        .find_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok());
    if let (Some(t), Some(ours)) = (torch_ms, faer_f32_ms) {
        println!(
            "side by side (f32, 1 thread, medians): batchlab {ours:.3} ms, PyTorch {t:.3} ms; batchlab / PyTorch = {:.2}",
            ours / t
        );
    }
}
