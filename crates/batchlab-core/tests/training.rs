//! Whole training runs against closed forms (docs/science.md), stability edges, and the
//! independence of the result from how the work is split.

use batchlab_core::driver::Trainer;
use batchlab_core::exact::Packet;
use batchlab_core::optim::OptimizerKind;
use batchlab_core::tasks::TaskConfig;
use batchlab_core::tasks::linreg::LinregConfig;
use batchlab_core::tasks::logreg::LogregConfig;
use batchlab_core::tasks::nqm::NqmConfig;
use batchlab_core::train::{
    Applied, Begin, RunSummary, Status, StepMetrics, TargetMetric, TrainConfig, WorkerScratch,
    compute_micros,
};

fn nqm(dim: usize, noise_scale: f64) -> TaskConfig {
    TaskConfig::Nqm(NqmConfig {
        dim,
        noise_scale,
        ..NqmConfig::default()
    })
}

fn run(cfg: &TrainConfig) -> (Vec<StepMetrics>, RunSummary) {
    let plan = cfg.build().expect("valid config");
    let mut rows = Vec::new();
    let summary = Trainer::new(&plan).run(|r| rows.push(r.clone()));
    (rows, summary)
}

/// Science.md, NQM under SGD: `s_i(t) = s*_i + (1−αh_i)^{2t}(s_i(0) − s*_i)`,
/// `s*_i = αc_i/(Bh_i(2 − αh_i))`, `E[L](t) = ½ Σ h_i s_i(t)`; here `h_i = c_i = 1/i`, `θ₀ = 1`.
fn nqm_expected_loss(dim: usize, lr: f64, batch: f64, t: u64) -> f64 {
    (1..=dim)
        .map(|i| {
            let h = 1.0 / i as f64;
            let s_star = lr * h / (batch * h * (2.0 - lr * h));
            let s = s_star + (1.0 - lr * h).powi(2 * t as i32) * (1.0 - s_star);
            0.5 * h * s
        })
        .sum()
}

#[test]
fn nqm_mean_loss_over_seeds_matches_the_closed_form_expected_loss() {
    let (dim, batch, lr, steps, runs) = (20, 4u64, 0.6, 40u64, 400u64);
    let mut sums = vec![(0.0, 0.0); steps as usize];
    for seed in 0..runs {
        let cfg = TrainConfig {
            task: nqm(dim, 1.0),
            batch,
            micro: Some(1),
            lr,
            seed,
            steps,
            eval_every: 1,
            ..TrainConfig::default()
        };
        let (rows, _) = run(&cfg);
        for r in &rows {
            let l = r.eval_loss.expect("evaluated every step");
            sums[r.step as usize].0 += l;
            sums[r.step as usize].1 += l * l;
        }
    }
    let n = runs as f64;
    for t in [0u64, 1, 5, 10, 20, 39] {
        let (s, s2) = sums[t as usize];
        let mean = s / n;
        let se = ((s2 / n - mean * mean).max(0.0) / (n - 1.0)).sqrt();
        let expected = nqm_expected_loss(dim, lr, batch as f64, t);
        // Five standard errors, plus 1e-12 for step 0 where every run has the same loss.
        assert!(
            (mean - expected).abs() <= 5.0 * se + 1e-12,
            "step {t}: mean loss {mean:.6} vs closed form {expected:.6} (se {se:.2e})"
        );
    }
}

/// Runs `reps` independent global batches at the initial parameters and returns the mean of the
/// two-batch `|G|²` and `tr Σ` estimates with their standard errors.
fn two_batch_means(
    task: TaskConfig,
    batch: u64,
    micro: u64,
    reps: u64,
) -> ([f64; 2], [f64; 2], f64, f64) {
    let mut acc = [[0.0; 2]; 2];
    let mut exact = (0.0, 0.0);
    for seed in 0..reps {
        let cfg = TrainConfig {
            task: task.clone(),
            batch,
            micro: Some(micro),
            seed,
            steps: 1,
            ..TrainConfig::default()
        };
        let (rows, _) = run(&cfg);
        let r = &rows[0];
        for (k, x) in [r.g2_est, r.trace_sigma_est].into_iter().enumerate() {
            acc[k][0] += x;
            acc[k][1] += x * x;
        }
        if seed == 0 {
            let plan = cfg.build().unwrap();
            let cf = plan.task.closed_form().expect("closed form");
            let p = plan.task.init_params();
            let g = cf.true_gradient(&p);
            exact = (g.iter().map(|x| x * x).sum(), cf.trace_sigma(&p));
        }
    }
    let n = reps as f64;
    let stat = |k: usize| {
        let m = acc[k][0] / n;
        (m, ((acc[k][1] / n - m * m) / (n - 1.0)).sqrt())
    };
    let ((g2, g2_se), (tr, tr_se)) = (stat(0), stat(1));
    ([g2, tr], [g2_se, tr_se], exact.0, exact.1)
}

#[test]
fn nqm_noise_scale_estimates_match_the_exact_values_at_the_same_state() {
    let ([g2, tr], [g2_se, tr_se], g2_exact, tr_exact) = two_batch_means(nqm(50, 1.0), 64, 8, 300);
    assert!(
        (g2 - g2_exact).abs() <= 5.0 * g2_se,
        "|G|² {g2} ± {g2_se} vs {g2_exact}"
    );
    assert!(
        (tr - tr_exact).abs() <= 5.0 * tr_se,
        "tr Σ {tr} ± {tr_se} vs {tr_exact}"
    );
    // B_simple = tr Σ / |G|² from the means, within its delta-method standard error.
    let b = tr / g2;
    let b_se = b * ((tr_se / tr).powi(2) + (g2_se / g2).powi(2)).sqrt();
    let b_exact = tr_exact / g2_exact;
    assert!(
        (b - b_exact).abs() <= 5.0 * b_se,
        "B_simple {b} ± {b_se} vs {b_exact}"
    );
    assert!(
        b_se < 0.1 * b_exact,
        "the check is sharp enough to mean something: se {b_se}"
    );
}

#[test]
fn linreg_noise_scale_estimates_match_the_closed_form() {
    let task = TaskConfig::Linreg(LinregConfig {
        dim: 30,
        ..LinregConfig::default()
    });
    let ([g2, tr], [g2_se, tr_se], g2_exact, tr_exact) = two_batch_means(task, 64, 8, 300);
    assert!(
        (g2 - g2_exact).abs() <= 5.0 * g2_se,
        "|G|² {g2} ± {g2_se} vs {g2_exact}"
    );
    assert!(
        (tr - tr_exact).abs() <= 5.0 * tr_se,
        "tr Σ {tr} ± {tr_se} vs {tr_exact}"
    );
}

/// Full-batch-like gradient descent on the noiseless NQM (`λ_max = h_1 = 1`) at `factor` times
/// the optimizer's stability edge; returns the run's status.
fn edge_status(kind: OptimizerKind, edge: f64, factor: f64) -> (Status, String) {
    let mut cfg = TrainConfig {
        task: nqm(10, 0.0),
        batch: 1,
        lr: edge * factor,
        steps: 3000,
        eval_every: 0,
        ..TrainConfig::default()
    };
    cfg.optimizer.kind = kind;
    cfg.optimizer.momentum = 0.9;
    let (_, s) = run(&cfg);
    (s.status, s.message)
}

#[test]
fn gradient_descent_is_stable_just_below_two_over_lambda_max_and_diverges_just_above() {
    let mu: f64 = 0.9;
    let cases = [
        (OptimizerKind::Sgd, 2.0),
        (OptimizerKind::Momentum, 2.0 * (1.0 + mu)),
        (OptimizerKind::Nesterov, (2.0 + 2.0 * mu) / (1.0 + 2.0 * mu)),
    ];
    for (kind, edge) in cases {
        let (below, msg) = edge_status(kind, edge, 0.98);
        assert_eq!(below, Status::Incomplete, "{kind:?} at 0.98 × edge: {msg}");
        let (above, msg) = edge_status(kind, edge, 1.02);
        assert_eq!(above, Status::Infeasible, "{kind:?} at 1.02 × edge: {msg}");
        assert!(
            msg.contains("diverged at step") && msg.contains("learning rate"),
            "{msg}"
        );
    }
}

/// The smallest and largest eigenvalues of the training loss's Hessian, from the dense matrix
/// built column by column from `curvature_hvp` and a symmetric eigensolver (faer): an
/// independent reference for the Lanczos sharpness.
fn dense_extremes(plan: &batchlab_core::train::RunPlan, params: &[f64]) -> (f64, f64) {
    let n = params.len();
    let samples = plan.task.curvature_samples();
    let mut scratch = batchlab_core::Scratch::new();
    let mut h = faer::Mat::<f64>::zeros(n, n);
    let mut e = vec![0.0; n];
    let mut col = vec![0.0; n];
    for j in 0..n {
        e[j] = 1.0;
        batchlab_core::train::curvature_hvp(
            plan.task.as_ref(),
            params,
            &samples,
            &e,
            &mut col,
            &mut scratch,
        );
        e[j] = 0.0;
        for i in 0..n {
            h[(i, j)] = col[i];
        }
    }
    let eig = h
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .expect("symmetric eigenvalues");
    (eig[0], *eig.last().expect("n >= 1"))
}

/// The plateau task `Σ ln(1 + x_i²)` at `x = (1.5, 3, 0.9)` has the diagonal Hessian
/// `2(1 − x²)/(1 + x²)²` = (−0.2367, −0.16, 0.1160): the eigenvalue of largest magnitude, which
/// power iteration returns, is the most negative one, while the sharpness is 0.1160.
#[test]
fn sharpness_is_the_top_eigenvalue_where_a_negative_one_dominates() {
    use batchlab_core::tasks::plateau::PlateauConfig;
    let cfg = TrainConfig {
        task: TaskConfig::Plateau(PlateauConfig {
            dim: 3,
            ..PlateauConfig::default()
        }),
        steps: 1,
        ..TrainConfig::default()
    };
    let plan = cfg.build().unwrap();
    let mut state = plan.replica().state();
    state.params = vec![1.5, 3.0, 0.9];
    let replica = plan.restore(state).unwrap();
    let h = |x: f64| 2.0 * (1.0 - x * x) / (1.0 + x * x).powi(2);
    let ends = replica.spectrum_ends(&mut batchlab_core::Scratch::new());
    assert!(ends.converged, "{ends:?}");
    assert!((ends.top - h(0.9)).abs() < 1e-9, "{ends:?}");
    assert!((ends.bottom - h(1.5)).abs() < 1e-9, "{ends:?}");
    assert_eq!(
        replica.sharpness(&mut batchlab_core::Scratch::new()),
        ends.top
    );
    let (lo, hi) = dense_extremes(&plan, &replica.params);
    assert!((ends.top - hi).abs() < 1e-9 && (ends.bottom - lo).abs() < 1e-9);
    // What plain power iteration reads instead.
    let samples = plan.task.curvature_samples();
    let mut scratch = batchlab_core::Scratch::new();
    let power = batchlab_core::estimate::power_iteration(
        |v, out| {
            batchlab_core::train::curvature_hvp(
                plan.task.as_ref(),
                &replica.params,
                &samples,
                v,
                out,
                &mut scratch,
            )
        },
        vec![1.0, 1.0, 1.0],
        500,
        1e-12,
    );
    assert!((power.lambda - h(1.5)).abs() < 1e-6, "{power:?}");
}

#[test]
fn lanczos_recovers_both_ends_of_the_spectrum_within_one_percent() {
    let tasks = [
        nqm(40, 1.0),
        TaskConfig::Linreg(LinregConfig {
            dim: 40,
            ..LinregConfig::default()
        }),
        TaskConfig::Logreg(LogregConfig {
            dim: 30,
            ..LogregConfig::default()
        }),
    ];
    for task in tasks {
        let cfg = TrainConfig {
            task,
            steps: 1,
            sharpness_iters: 300,
            ..TrainConfig::default()
        };
        let plan = cfg.build().unwrap();
        let replica = plan.replica();
        let ends = replica.spectrum_ends(&mut batchlab_core::Scratch::new());
        let lambda = ends.top;
        let (bottom, exact) = dense_extremes(&plan, &replica.params);
        assert!(
            (lambda - exact).abs() <= 0.01 * exact,
            "{}: λ {lambda} vs {exact}",
            plan.task.name()
        );
        assert!(
            (ends.bottom - bottom).abs() <= 0.01 * exact,
            "{}: λ_min {} vs {bottom}",
            plan.task.name(),
            ends.bottom
        );
        if let Some(cf) = plan
            .task
            .closed_form()
            .and_then(|c| c.lambda_max(&replica.params))
        {
            // NQM: diag(h), λ_max = h_1 = 1; infinite-stream linreg: diag(1/i), λ_max = 1.
            assert!(
                (lambda - cf).abs() <= 0.01 * cf,
                "{}: λ {lambda} vs closed form {cf}",
                plan.task.name()
            );
        }
    }
}

#[test]
fn divergence_message_gives_step_rate_and_lr_times_sharpness() {
    let cfg = TrainConfig {
        task: nqm(10, 0.0),
        batch: 1,
        lr: 2.5,
        steps: 500,
        sharpness_every: 1,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let (rows, s) = run(&cfg);
    assert_eq!(s.status, Status::Infeasible);
    let last = rows.last().unwrap();
    assert_eq!(
        s.steps, last.step,
        "the diverged step's update is not applied"
    );
    assert!(
        s.message
            .contains(&format!("diverged at step {}", last.step)),
        "{}",
        s.message
    );
    assert!(s.message.contains("η·λ_max = 2.50"), "{}", s.message);
}

#[test]
fn the_same_seed_gives_bit_identical_metrics() {
    let cfg = TrainConfig {
        task: TaskConfig::Linreg(LinregConfig {
            dim: 20,
            ..LinregConfig::default()
        }),
        batch: 32,
        lr: 0.3,
        steps: 50,
        eval_every: 5,
        ..TrainConfig::default()
    };
    let (a, sa) = run(&cfg);
    let (b, sb) = run(&cfg);
    let bits = |rows: &[StepMetrics]| serde_json::to_string(rows).unwrap();
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(sa, sb);
    let (c, _) = run(&TrainConfig { seed: 1, ..cfg });
    assert_ne!(bits(&a), bits(&c), "a different seed gives a different run");
}

/// Drives a run with the step's microbatches split over `world` in-memory workers whose packets
/// are merged in reverse rank order: the data-parallel step without the network.
fn run_split(cfg: &TrainConfig, world: usize) -> (Vec<StepMetrics>, RunSummary) {
    use batchlab_core::driver::memory::Cluster;
    use batchlab_core::driver::{RunDriver, Settings};
    let cfg = cfg.clone();
    let make = move |_, rank, world| {
        RunDriver::new(&cfg, &[], Settings::default(), rank, world).expect("valid config")
    };
    let mut out = Cluster::new(make, world, vec![])
        .run()
        .expect("a clean run");
    (out.rows.swap_remove(0), out.summary)
}

#[test]
fn any_number_of_workers_gives_bit_identical_runs() {
    let cfg = TrainConfig {
        task: TaskConfig::Linreg(LinregConfig {
            dim: 20,
            train_size: Some(500),
            ..LinregConfig::default()
        }),
        batch: 60,
        micro: Some(5),
        lr: 0.5,
        steps: 40,
        eval_every: 10,
        ..TrainConfig::default()
    };
    cfg.build().unwrap();
    let (reference, summary) = run(&cfg);
    let json = serde_json::to_string(&reference).unwrap();
    for world in [1, 2, 3, 4, 7, 12] {
        let (rows, s) = run_split(&cfg, world);
        assert_eq!(serde_json::to_string(&rows).unwrap(), json, "world {world}");
        assert_eq!(s.params_digest, summary.params_digest, "world {world}");
    }
}

#[test]
fn a_gradient_beyond_the_initial_fixed_point_range_is_redone_not_wrapped() {
    // NQM with θ₀ = 1e9: gradients ~1e9 per sample exceed the initial scale's 2^26 bound.
    let task = TaskConfig::Nqm(NqmConfig {
        dim: 5,
        init: 1e9,
        noise_scale: 0.0,
        ..NqmConfig::default()
    });
    let cfg = TrainConfig {
        task,
        batch: 4,
        micro: Some(1),
        lr: 0.1,
        steps: 3,
        ..TrainConfig::default()
    };
    let (rows, _) = run(&cfg);
    assert!(rows[0].redos >= 1, "first step redone at a wider scale");
    assert_eq!(rows[1].redos, 0, "later steps start from the fitted scale");
    // Noise-free GD: θ₁ = (1 − lr·h)θ₀ exactly in every coordinate, up to fixed-point rounding.
    let expected_loss_0: f64 = (1..=5).map(|i| 0.5 / i as f64 * 1e18).sum();
    assert!((rows[0].train_loss - expected_loss_0).abs() <= 1e-12 * expected_loss_0);
    let expected_loss_1: f64 = (1..=5)
        .map(|i| 0.5 / i as f64 * (1e9 * (1.0 - 0.1 / i as f64)).powi(2))
        .sum();
    assert!((rows[1].train_loss - expected_loss_1).abs() <= 1e-12 * expected_loss_1);
}

#[test]
fn a_train_target_completes_with_the_step_that_reached_it() {
    let cfg = TrainConfig {
        task: nqm(10, 0.0),
        batch: 1,
        lr: 1.0,
        steps: 1000,
        target_loss: Some(0.01),
        target_metric: TargetMetric::Train,
        ..TrainConfig::default()
    };
    let (rows, s) = run(&cfg);
    assert_eq!(s.status, Status::Complete);
    let last = rows.last().unwrap();
    assert!(last.train_loss <= 0.01 && rows[rows.len() - 2].train_loss > 0.01);
    // Noise-free GD with lr = 1 on h_i = 1/i: L(t) = ½ Σ h_i (1 − h_i)^{2t}; first t with L ≤ 0.01.
    let loss = |t: i32| {
        (1..=10)
            .map(|i| 0.5 / i as f64 * (1.0 - 1.0 / i as f64).powi(2 * t))
            .sum::<f64>()
    };
    let t_star = (0..).find(|&t| loss(t) <= 0.01).unwrap();
    assert_eq!(last.step, t_star as u64);
}

#[test]
fn bad_configs_are_refused_before_any_work_naming_the_field() {
    let bad = |f: fn(&mut TrainConfig)| {
        let mut c = TrainConfig::default();
        f(&mut c);
        c.build().unwrap_err().to_string()
    };
    assert_eq!(
        bad(|c| c.batch = 0),
        "batch = 0: expected a batch size of at least 1"
    );
    assert_eq!(
        bad(|c| c.micro = Some(7)),
        "micro = 7: expected a divisor of batch = 64"
    );
    assert_eq!(
        bad(|c| c.lr = f64::NAN),
        "lr = NaN: expected a finite rate > 0"
    );
    assert!(bad(|c| c.noise_ema = 1.0).starts_with("noise_ema = 1"));
}

#[test]
fn a_nan_in_the_reduced_gradient_ends_the_run_infeasible_without_applying_it() {
    use batchlab_core::train::compute_micros_fast;
    let cfg = TrainConfig {
        task: nqm(10, 1.0),
        batch: 8,
        micro: Some(2),
        steps: 5,
        ..TrainConfig::default()
    };
    let plan = cfg.build().unwrap();
    let mut replica = plan.replica();
    assert_eq!(
        replica.begin(&mut batchlab_core::Scratch::new()),
        Begin::Compute
    );
    let before = replica.params.clone();
    let mut grad = vec![0f32; 10];
    let mut stats = Packet::zeroed(0, plan.num_micro());
    let mut sampler = plan.sampler();
    compute_micros_fast(
        replica.input(),
        &mut sampler,
        0..plan.num_micro(),
        &mut grad,
        &mut stats,
        &mut WorkerScratch::default(),
    );
    grad[3] = f32::NAN; // what a faulty peer's piece would contribute
    match replica.apply_fast(&grad, &stats) {
        Applied::Finished(_, s) => {
            assert_eq!(s.status, Status::Infeasible);
            assert!(
                s.message.contains("non-finite") && s.message.contains("step 0"),
                "{}",
                s.message
            );
        }
        other => panic!("expected the run to end, got {other:?}"),
    }
    assert_eq!(replica.params, before, "nothing was applied");
}

#[test]
fn an_overflowing_run_is_infeasible_even_without_a_loss_bound() {
    // lr = 1e3 on h_1 = 1 multiplies θ₁ by 999 per step: the loss overflows to ∞ in ~50 steps.
    let cfg = TrainConfig {
        task: nqm(5, 0.0),
        batch: 2,
        lr: 1e3,
        steps: 1000,
        divergence_factor: f64::MAX,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let (_, s) = run(&cfg);
    assert_eq!(s.status, Status::Infeasible);
    assert!(s.message.contains("non-finite"), "{}", s.message);
}

#[test]
fn the_noise_probe_measures_the_exact_b_simple_within_its_standard_error() {
    use batchlab_core::train::noise_probe;
    // Near the optimum of an NQM, where |G|² ≪ tr Σ and the training-time EMA is poor.
    let task = TaskConfig::Nqm(NqmConfig {
        dim: 50,
        init: 0.05,
        ..NqmConfig::default()
    })
    .build()
    .unwrap();
    let params = task.init_params();
    let exact = task.closed_form().unwrap().b_simple(&params);
    let p = noise_probe(task.as_ref(), &params, 3, 64, 64, 64);
    assert!(
        (p.b_simple - exact).abs() <= 4.0 * p.b_simple_se,
        "probe {} ± {} vs exact {exact}",
        p.b_simple,
        p.b_simple_se
    );
    assert!(
        p.b_simple_se < 0.15 * exact,
        "precise enough to mean something: {p:?}"
    );
    assert_eq!(p.samples, 64 * 64 * 64);
}

#[test]
fn the_nested_prefix_noise_scale_on_linreg_matches_the_closed_form_within_its_interval() {
    use batchlab_core::train::noise_probe;
    let task = TaskConfig::Linreg(LinregConfig {
        dim: 30,
        ..LinregConfig::default()
    })
    .build()
    .unwrap();
    let cf = task.closed_form().unwrap();
    // At θ₀ and at a point nearer the optimum, where tr Σ dominates |G|².
    let init = task.init_params();
    let near: Vec<f64> = init.iter().map(|x| 0.1 * x).collect();
    for params in [init, near] {
        let exact = cf.b_simple(&params);
        let p = noise_probe(task.as_ref(), &params, 11, 4, 32, 200);
        let n = &p.nested;
        assert_eq!(n.sizes, [4, 8, 16, 32, 64, 128]);
        assert!(
            (n.b_simple - exact).abs() <= 4.0 * n.b_simple_se,
            "nested prefixes {} ± {} vs exact {exact}",
            n.b_simple,
            n.b_simple_se
        );
        assert!(
            n.b_simple_se < 0.15 * exact,
            "the interval is narrow enough to mean something: {n:?}"
        );
        // Every size's mean squared norm follows E|g_b|² = |G|² + tr Σ/b of the closed form.
        let g2: f64 = cf.true_gradient(&params).iter().map(|g| g * g).sum();
        let tr = cf.trace_sigma(&params);
        for (&b, &m) in n.sizes.iter().zip(&n.mean_sq_norms) {
            let want = g2 + tr / b as f64;
            assert!(
                (m / want - 1.0).abs() < 0.1,
                "b = {b}: mean |g_b|² {m} vs {want}"
            );
        }
    }
}

/// The overlapped computation (every micro but the last, then the last one bucket by bucket)
/// gives the packet of `compute_micros`, word for word, on an MLP whose micro spans several
/// chunks (buckets finish on the last chunk) and on one chunk, and on a one-bucket task.
#[test]
fn the_streamed_last_micro_gives_the_same_packet_word_for_word() {
    use batchlab_core::tasks::mlp::{CHUNK, MlpConfig, MlpData, TeacherData};
    use batchlab_core::train::{compute_last_micro_streamed, compute_micros_but_last};
    let mlp = |micro: u64| TrainConfig {
        task: TaskConfig::Mlp(MlpConfig {
            hidden: vec![9, 7],
            data: MlpData::Teacher(TeacherData {
                input_dim: 12,
                classes: 3,
                train_size: 4000,
                eval_size: 100,
                ..TeacherData::default()
            }),
            ..MlpConfig::default()
        }),
        batch: 4 * micro,
        micro: Some(micro),
        ..TrainConfig::default()
    };
    let linreg = TrainConfig {
        task: TaskConfig::Linreg(LinregConfig {
            dim: 20,
            ..LinregConfig::default()
        }),
        batch: 12,
        micro: Some(3),
        ..TrainConfig::default()
    };
    for cfg in [mlp(CHUNK as u64 + 37), mlp(5), linreg] {
        let plan = cfg.build().unwrap();
        let replica = plan.replica();
        let (dim, n) = (plan.task.num_params(), plan.num_micro());
        let task = plan.task.as_ref();
        let mut want = Packet::zeroed(dim, n);
        compute_micros(
            replica.input(),
            &mut plan.sampler(),
            1..n,
            &mut want,
            &mut WorkerScratch::default(),
        );
        let mut got = Packet::zeroed(dim, n);
        let (mut sampler, mut scratch) = (plan.sampler(), WorkerScratch::default());
        let last =
            compute_micros_but_last(replica.input(), &mut sampler, 1..n, &mut got, &mut scratch)
                .unwrap();
        assert_eq!(last, n - 1);
        let ranges = task.buckets();
        let (grad, _) = got.grad_and_stats_mut();
        // The buckets partition the gradient; cut the words along them.
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&k| ranges[k].start);
        let mut slices: Vec<Option<&mut [i64]>> = (0..ranges.len()).map(|_| None).collect();
        let mut rest = grad;
        for &k in &order {
            let (a, b) = std::mem::take(&mut rest).split_at_mut(ranges[k].len());
            slices[k] = Some(a);
            rest = b;
        }
        assert!(rest.is_empty());
        let mut finished = Vec::new();
        let stats = compute_last_micro_streamed(
            replica.input(),
            &mut sampler,
            last,
            slices.into_iter().map(Option::unwrap).collect(),
            &mut scratch,
            &mut |k, _| finished.push(k),
        );
        assert_eq!(
            finished,
            (0..ranges.len()).collect::<Vec<_>>(),
            "in bucket order"
        );
        if matches!(cfg.task, TaskConfig::Mlp(_)) {
            assert_eq!(ranges.len(), 3);
        }
        got.add_stats(last, &stats);
        assert_eq!(got.words(), want.words());
    }
}

/// A replica rebuilt from its [`ReplicaState`](batchlab_core::train::ReplicaState) at every
/// point an elastic run may hand it over (between steps, after `begin`, with `begin` called
/// again for the same step) takes the very steps of the uninterrupted run: the rows, the
/// summary and the final parameters are bit-identical, with momentum, evaluations, sharpness,
/// the noise-scale EMA and a train-loss target all in play.
#[test]
fn a_replica_restored_from_its_state_at_any_step_continues_bit_identically() {
    use batchlab_core::optim::OptimizerConfig;
    use batchlab_core::tasks::mlp::{MlpConfig, MlpData, TeacherData};
    let cfg = TrainConfig {
        task: TaskConfig::Mlp(MlpConfig {
            hidden: vec![8],
            data: MlpData::Teacher(TeacherData {
                input_dim: 6,
                classes: 3,
                train_size: 600,
                eval_size: 100,
                ..TeacherData::default()
            }),
            ..MlpConfig::default()
        }),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::Momentum,
            momentum: 0.9,
            ..OptimizerConfig::default()
        },
        batch: 32,
        micro: Some(8),
        lr: 0.05,
        steps: 60,
        eval_every: 7,
        sharpness_every: 11,
        ..TrainConfig::default()
    };
    let (want_rows, want) = run(&cfg);
    let plan = cfg.build().unwrap();
    let mut replica = plan.replica();
    let mut sampler;
    let n = plan.num_micro();
    let mut packet = Packet::zeroed(plan.task.num_params(), n);
    let mut scratch = WorkerScratch::default();
    let mut eval_scratch = batchlab_core::Scratch::new();
    let mut rows = Vec::new();
    let moved = |r: &batchlab_core::train::Replica| plan.restore(r.state()).unwrap();
    let summary = 'run: loop {
        // A new worker builds its own sampler: it depends on (seed, step) alone.
        replica = moved(&replica);
        sampler = plan.sampler();
        if let Begin::Finished(s) = replica.begin(&mut eval_scratch) {
            break *s;
        }
        // Handed over after `begin`, and begun again: the evaluation counts once.
        replica = moved(&replica);
        assert_eq!(replica.begin(&mut eval_scratch), Begin::Compute);
        loop {
            compute_micros(
                replica.input(),
                &mut sampler,
                0..n,
                &mut packet,
                &mut scratch,
            );
            match replica.apply(&packet) {
                Applied::Redo => replica = moved(&replica),
                Applied::Step(r) => {
                    rows.push(*r);
                    break;
                }
                Applied::Finished(r, s) => {
                    rows.push(*r);
                    break 'run *s;
                }
            }
        }
    };
    let bits = |rows: &[StepMetrics]| serde_json::to_string(rows).unwrap();
    assert_eq!(rows.len(), 60);
    assert!(
        rows.iter()
            .any(|r| r.eval_loss.is_some() && r.sharpness.is_some())
    );
    assert_eq!(bits(&rows), bits(&want_rows));
    assert_eq!(summary, want);

    // A state that does not fit the plan is refused, naming the field.
    let mut state = plan.replica().state();
    state.params.pop();
    let e = plan.restore(state).unwrap_err().to_string();
    assert!(e.contains("replica_state.params"), "{e}");
}

/// Heavy ball (`b ← μb + g`, `θ ← θ − ηb`) on the noiseless plateau `ln(1 + x²)` from `x₀ = 2`,
/// by hand: row `t` holds `V_t = L(x_t) + ½ b_{t−1}²` (`b_{−1} = 0`).
#[test]
fn momentum_energy_is_the_loss_plus_half_the_squared_buffer_of_the_same_state() {
    use batchlab_core::tasks::plateau::PlateauConfig;
    let (lr, mu) = (0.5, 0.9);
    let mut cfg = TrainConfig {
        task: TaskConfig::Plateau(PlateauConfig {
            dim: 1,
            init: 2.0,
            noise: 0.0,
            ..PlateauConfig::default()
        }),
        batch: 1,
        steps: 3,
        lr,
        ..TrainConfig::default()
    };
    cfg.optimizer.kind = OptimizerKind::Momentum;
    cfg.optimizer.momentum = mu;
    let (rows, _) = run(&cfg);
    let loss = |x: f64| (1.0 + x * x).ln();
    let grad = |x: f64| 2.0 * x / (1.0 + x * x);
    let (mut x, mut b) = (2.0, 0.0);
    for row in &rows {
        let want = loss(x) + 0.5 * b * b;
        // 1e-9: the reduced gradient is rounded to the packet's fixed point (~1e-12 here).
        assert!(
            (row.momentum_energy - want).abs() < 1e-9,
            "step {}: {} vs {want}",
            row.step,
            row.momentum_energy
        );
        b = mu * b + grad(x);
        x -= lr * b;
    }
    assert_eq!(rows.len(), 3);
}

/// Mean and standard error of the mean.
fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// Two-batch estimates `(|G|², tr Σ)` at fixed `params` from `reps` batches of `batch` samples
/// (microbatches of `micro`), each the start of its own seeded permutation of the `n` training
/// samples (drawn without replacement), with the factor of `population`.
fn finite_two_batch(
    task: &dyn batchlab_core::Task,
    params: &[f64],
    (n, batch, micro, reps): (u64, u64, u64, u64),
    population: Option<u64>,
) -> (Vec<f64>, Vec<f64>) {
    use batchlab_core::sampler::{Sampler, Source};
    let mut scratch = batchlab_core::Scratch::new();
    let (mut grad, mut sum) = (vec![0.0; params.len()], vec![0.0; params.len()]);
    let (mut g2s, mut trs) = (Vec::new(), Vec::new());
    let mut samples = Vec::new();
    let num_micro = (batch / micro) as usize;
    for r in 0..reps {
        let mut sampler = Sampler::new(1000 + r, micro, Source::Epochs { n }).unwrap();
        sum.fill(0.0);
        let mut small = 0.0;
        for j in 0..num_micro {
            samples.clear();
            sampler.samples_into(0, j..j + 1, &mut samples);
            task.loss_grad(params, &samples, &mut grad, &mut scratch);
            small += grad.iter().map(|g| g * g).sum::<f64>() / (micro * micro) as f64;
            sum.iter_mut().zip(&grad).for_each(|(s, g)| *s += g);
        }
        let big = sum.iter().map(|g| g * g).sum::<f64>() / (batch * batch) as f64;
        let est = batchlab_core::estimate::two_batch(
            micro as f64,
            small / num_micro as f64,
            batch as f64,
            big,
            population,
        );
        g2s.push(est.g2);
        trs.push(est.trace_sigma);
    }
    (g2s, trs)
}

/// Linear regression on a training set of N = 64 samples, at θ₀: with the finite-population
/// factor the two-batch estimates are unbiased against the full pass of per-sample gradients,
/// and at B = N, where `|g_B|² = |G|²` exactly, the `|G|²` estimate is exact; the stream's
/// formula applied to the same batches reads `|G|²` low by `tr Σ/(N − 1)`
/// (docs/science.md#finite-data).
#[test]
fn noise_estimates_on_a_finite_training_set_are_unbiased_against_the_full_pass() {
    let n = 64;
    let cfg = TrainConfig {
        task: TaskConfig::Linreg(LinregConfig {
            dim: 8,
            train_size: Some(n),
            ..LinregConfig::default()
        }),
        ..TrainConfig::default()
    };
    let plan = cfg.build().unwrap();
    let task = plan.task.as_ref();
    let params = task.init_params();
    let exact = batchlab_core::train::exact_noise(task, &params).unwrap();
    assert_eq!(exact.source, batchlab_core::train::ExactSource::FullPass);

    // B = N: every batch is the whole set.
    let (g2s, trs) = finite_two_batch(task, &params, (n, n, 4, 4000), Some(n));
    for g in &g2s {
        assert!(
            (g - exact.g2).abs() <= 1e-9 * exact.g2,
            "{g} vs {}",
            exact.g2
        );
    }
    let (tr, se) = mean_se(&trs);
    assert!(
        (tr - exact.trace_sigma).abs() < 4.0 * se,
        "tr Σ {tr} ± {se} vs {exact:?}"
    );

    // B = 16 < N: both unbiased within 4 standard errors.
    let (g2s, trs) = finite_two_batch(task, &params, (n, 16, 2, 20_000), Some(n));
    let ((g2, g2_se), (tr, tr_se)) = (mean_se(&g2s), mean_se(&trs));
    assert!(
        (g2 - exact.g2).abs() < 4.0 * g2_se,
        "|G|² {g2} ± {g2_se} vs {exact:?}"
    );
    assert!(
        (tr - exact.trace_sigma).abs() < 4.0 * tr_se,
        "tr Σ {tr} ± {tr_se} vs {exact:?}"
    );
    // The stream's formulas on the same kind of batches: |G|² low by tr Σ/(N − 1).
    let (naive, _) = finite_two_batch(task, &params, (n, 16, 2, 20_000), None);
    let (naive, naive_se) = mean_se(&naive);
    let bias = exact.trace_sigma / (n - 1) as f64;
    assert!(
        bias > 10.0 * naive_se,
        "the bias {bias} is visible at this precision"
    );
    assert!(
        (naive - (exact.g2 - bias)).abs() < 4.0 * naive_se,
        "naive |G|² {naive} ± {naive_se} vs {} − {bias}",
        exact.g2
    );

    // The probe (asked for more than N samples per batch) shrinks its batches to N and is then
    // exact in |G|².
    let probe = batchlab_core::train::noise_probe(task, &params, 0, 16, 64, 8);
    assert_eq!(probe.samples, 8 * n);
    assert!(
        (probe.g2 - exact.g2).abs() <= 1e-9 * exact.g2,
        "{probe:?} {exact:?}"
    );
}

/// The same on an MLP trained on a CSV dataset (digits.csv, 1437 training rows after the
/// 20 % hold-out): the estimates at θ₀ against the full pass.
#[test]
fn noise_estimates_on_csv_data_are_unbiased_against_the_full_pass() {
    use batchlab_core::tasks::mlp::{CsvData, MlpConfig, MlpData};
    let digits = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/digits.csv");
    let cfg = TrainConfig {
        task: TaskConfig::Mlp(MlpConfig {
            hidden: vec![16],
            data: MlpData::Csv(CsvData {
                path: digits.into(),
                ..CsvData::default()
            }),
            ..MlpConfig::default()
        }),
        ..TrainConfig::default()
    };
    let plan = cfg.build().unwrap();
    let task = plan.task.as_ref();
    let n = task.train_size().unwrap();
    let params = task.init_params();
    let exact = batchlab_core::train::exact_noise(task, &params).unwrap();
    let (g2s, trs) = finite_two_batch(task, &params, (n, 64, 4, 3000), Some(n));
    let ((g2, g2_se), (tr, tr_se)) = (mean_se(&g2s), mean_se(&trs));
    assert!(
        (g2 - exact.g2).abs() < 4.0 * g2_se,
        "|G|² {g2} ± {g2_se} vs {exact:?}"
    );
    assert!(
        (tr - exact.trace_sigma).abs() < 4.0 * tr_se,
        "tr Σ {tr} ± {tr_se} vs {exact:?}"
    );
}

/// What a run would allocate is checked from its settings before anything is allocated, and
/// the error names the setting behind the largest item (each of these asked for terabytes).
#[test]
fn runs_too_large_for_memory_are_refused_before_allocating_naming_the_setting() {
    use batchlab_core::tasks::mlp::{CsvData, MlpConfig, MlpData};
    let limited = |cfg: TrainConfig| TrainConfig {
        memory_limit_gb: Some(16.0),
        ..cfg
    };
    let build_error = |cfg: TrainConfig| limited(cfg).build().unwrap_err().to_string();

    // A batch of 10¹¹: 16 microbatches of 6.25·10⁹ sample indices (50 GB).
    let e = build_error(TrainConfig {
        batch: 100_000_000_000,
        steps: 2,
        ..TrainConfig::default()
    });
    assert!(
        e.starts_with(
            "batch = 100000000000 (sample indices of one microbatch of 6250000000: 50.0 GB"
        ),
        "{e}"
    );
    assert!(e.contains("memory_limit_gb = 16.0 (lower batch"), "{e}");
    // More samples than one seed's stream holds.
    let e = build_error(TrainConfig {
        batch: 1 << 30,
        steps: 2048,
        ..TrainConfig::default()
    });
    assert!(e.contains("largest batch × steps ≤ 2⁴⁰ samples"), "{e}");
    assert!(e.contains("a batch of at most 536870912"), "{e}");

    // Hidden widths of 10⁶: 10¹² parameters of the middle layer.
    let mlp = |hidden: Vec<usize>, data: MlpData| {
        TaskConfig::Mlp(MlpConfig {
            hidden,
            data,
            ..MlpConfig::default()
        })
    };
    let e = build_error(TrainConfig {
        task: mlp(vec![1_000_000, 1_000_000], MlpData::default()),
        ..TrainConfig::default()
    });
    assert!(
        e.starts_with("task.hidden = [1000000, 1000000] (parameters of a 1000000×1000000 layer"),
        "{e}"
    );

    // A label of 4·10⁹ in a data file: the classes are known only once the file is read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big-label.csv");
    std::fs::write(&path, "label,x\n0,1\n4000000000,2\n1,3\n0,4\n1,5\n").unwrap();
    let csv = MlpData::Csv(CsvData {
        path: path.clone(),
        ..CsvData::default()
    });
    let e = build_error(TrainConfig {
        task: mlp(vec![16], csv.clone()),
        ..TrainConfig::default()
    });
    assert!(
        e.starts_with(&format!(
            "task.data = 4000000001 classes in {}",
            path.display()
        )),
        "{e}"
    );
    // The same file with small labels builds, and so does the default run within 16 GB.
    std::fs::write(&path, "label,x\n0,1\n3,2\n1,3\n0,4\n1,5\n").unwrap();
    limited(TrainConfig {
        task: mlp(vec![16], csv),
        ..TrainConfig::default()
    })
    .build()
    .unwrap();
    limited(TrainConfig::default()).build().unwrap();
    // The limit itself is checked.
    let e = TrainConfig {
        memory_limit_gb: Some(-1.0),
        ..TrainConfig::default()
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("memory_limit_gb = -1: expected a positive number"),
        "{e}"
    );
}
