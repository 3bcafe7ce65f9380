//! A batch that changes during the run (`[batch_schedule]`): each rule against its closed form,
//! the rate following the batch by the scaling rule, schedules counted in samples, and the same
//! numbers, bit for bit, on any number of ranks and through an elastic run's faults.

use batchlab_core::batching::{BatchKind, BatchSchedule};
use batchlab_core::driver::memory::{Cluster, Fault, Outcome};
use batchlab_core::driver::{Reduction, RunDriver, Settings, Trainer};
use batchlab_core::optim::{OptimizerConfig, OptimizerKind};
use batchlab_core::schedule::{DecayKind, Scaling, ScheduleConfig, Unit};
use batchlab_core::tasks::TaskConfig;
use batchlab_core::tasks::linreg::LinregConfig;
use batchlab_core::tasks::mlp::{MlpConfig, MlpData, TeacherData};
use batchlab_core::train::{RunSummary, StepMetrics, TrainConfig};

fn linreg(schedule: BatchSchedule) -> TrainConfig {
    TrainConfig {
        task: TaskConfig::Linreg(LinregConfig {
            dim: 20,
            train_size: Some(500),
            ..LinregConfig::default()
        }),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::Momentum,
            momentum: 0.9,
            ..OptimizerConfig::default()
        },
        batch: 20,
        batch_schedule: schedule,
        micro: Some(5),
        lr: 0.02,
        lr_scaling: Scaling::Linear,
        steps: 40,
        eval_every: 7,
        ..TrainConfig::default()
    }
}

fn mlp(schedule: BatchSchedule) -> TrainConfig {
    TrainConfig {
        task: TaskConfig::Mlp(MlpConfig {
            hidden: vec![8, 6],
            data: MlpData::Teacher(TeacherData {
                input_dim: 6,
                classes: 3,
                train_size: 600,
                eval_size: 100,
                ..TeacherData::default()
            }),
            ..MlpConfig::default()
        }),
        batch: 8,
        batch_schedule: schedule,
        micro: Some(4),
        lr: 0.05,
        lr_scaling: Scaling::Sqrt,
        steps: 30,
        eval_every: 5,
        ..TrainConfig::default()
    }
}

fn step_schedule(unit: Unit, at: Vec<u64>) -> BatchSchedule {
    BatchSchedule {
        kind: BatchKind::Step,
        unit,
        at,
        factor: 2,
        ..BatchSchedule::default()
    }
}

fn ramp(start: u64, over: u64) -> BatchSchedule {
    BatchSchedule {
        kind: BatchKind::Ramp,
        start: Some(start),
        over,
        ..BatchSchedule::default()
    }
}

fn noise(min: u64, max: u64, every: u64) -> BatchSchedule {
    BatchSchedule {
        kind: BatchKind::Noise,
        min: Some(min),
        max: Some(max),
        every,
        ..BatchSchedule::default()
    }
}

fn alone(cfg: &TrainConfig) -> (Vec<StepMetrics>, RunSummary) {
    let mut rows = Vec::new();
    let summary = Trainer::new(&cfg.build().unwrap()).run(|r| rows.push(r.clone()));
    (rows, summary)
}

fn cluster(cfg: &TrainConfig, settings: Settings, world: usize, script: Vec<Fault>) -> Outcome {
    let cfg = cfg.clone();
    let make = move |state, rank, world| match state {
        None => RunDriver::new(&cfg, &[], settings, rank, world).unwrap(),
        Some(s) => RunDriver::resume(&cfg, &[], settings, s, (rank, world)).unwrap(),
    };
    Cluster::new(make, world, script).run().unwrap()
}

fn json<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_string(x).unwrap()
}

fn batches(rows: &[StepMetrics]) -> Vec<u64> {
    rows.iter().map(|r| r.batch).collect()
}

/// Every row's samples are the sum of the batches so far.
fn samples_add_up(rows: &[StepMetrics], summary: &RunSummary) {
    let mut total = 0;
    for r in rows {
        total += r.batch;
        assert_eq!(r.samples, total, "step {}", r.step);
    }
    assert_eq!(summary.samples, total);
}

#[test]
fn a_step_schedule_doubles_the_batch_and_the_linear_rule_doubles_the_rate() {
    let cfg = linreg(step_schedule(Unit::Steps, vec![10, 25]));
    let (rows, summary) = alone(&cfg);
    assert_eq!(rows.len(), 40);
    for r in &rows {
        let want = match r.step {
            0..10 => 20,
            10..25 => 40,
            _ => 80,
        };
        assert_eq!(r.batch, want, "step {}", r.step);
        // lr = 0.02 · B_t / 20 (base batch = the first batch).
        assert_eq!(r.lr, 0.02 * want as f64 / 20.0, "step {}", r.step);
    }
    samples_add_up(&rows, &summary);
    assert_eq!(summary.samples, 10 * 20 + 15 * 40 + 15 * 80);
    assert_eq!(summary.batch, 20, "the summary names the first batch");

    // Counted in samples: doubling once 200 samples are consumed (after step 9, 10 · 20), and
    // again after 200 + 400 (step 19, 10 · 40 more).
    let cfg = linreg(step_schedule(Unit::Samples, vec![200, 600]));
    let (rows, summary) = alone(&cfg);
    assert_eq!(
        batches(&rows),
        [[20; 10].as_slice(), &[40; 10], &[80; 20]].concat()
    );
    samples_add_up(&rows, &summary);
}

#[test]
fn a_rate_schedule_counted_in_samples_stays_on_its_curve_when_the_batch_changes() {
    // A cosine over 2000 samples, while the batch ramps from 5 to 60 over 20 steps: the rate of
    // each step is the cosine at the samples consumed before it, times √(B_t/B₀) (sqrt rule).
    let mut cfg = linreg(ramp(5, 20));
    cfg.batch = 60;
    cfg.base_batch = Some(60);
    cfg.lr_scaling = Scaling::Sqrt;
    cfg.schedule = ScheduleConfig {
        decay: DecayKind::Cosine,
        horizon: Some(2000),
        unit: Unit::Samples,
        ..ScheduleConfig::default()
    };
    cfg.steps = 60;
    let (rows, summary) = alone(&cfg);
    samples_add_up(&rows, &summary);
    let mut before = 0u64;
    for r in &rows {
        // The ramp: 5 + 55·t/20 rounded down to a multiple of 5, 60 from step 20 on.
        let want_b = ((5 + 55 * r.step.min(20) / 20) / 5 * 5).max(5);
        assert_eq!(r.batch, want_b, "step {}", r.step);
        let s = before.min(2000) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * s / 2000.0).cos());
        let want = 0.02 * (want_b as f64 / 60.0).sqrt() * cosine;
        assert!(
            (r.lr - want).abs() <= 1e-15 * 0.02,
            "step {}: {} vs {want}",
            r.step,
            r.lr
        );
        before += r.batch;
    }
    assert!(before > 2000, "the run passes the horizon: {before}");
}

#[test]
fn the_noise_rule_sets_the_batch_from_the_previous_steps_b_simple() {
    let every = 4;
    let cfg = linreg(noise(10, 400, every));
    let (rows, summary) = alone(&cfg);
    samples_add_up(&rows, &summary);
    let mut changed = 0;
    for w in rows.windows(2) {
        let (prev, r) = (&w[0], &w[1]);
        let want = if r.step.is_multiple_of(every) && prev.b_simple.is_finite() {
            // round(B_simple / m)·m, clamped to [10, 400].
            (((prev.b_simple / 5.0).round() as u64) * 5).clamp(10, 400)
        } else {
            prev.batch
        };
        assert_eq!(r.batch, want, "step {}: B_simple {}", r.step, prev.b_simple);
        changed += usize::from(r.batch != prev.batch);
    }
    assert!(
        changed >= 2,
        "the batch followed the noise scale: {:?}",
        batches(&rows)
    );
    assert_eq!(rows[0].batch, 20, "the first batch is the config's");
}

#[test]
fn every_schedule_gives_the_lone_runs_numbers_on_any_number_of_ranks() {
    let cases = [
        ("ramp", linreg(ramp(5, 30))),
        (
            "step in samples",
            linreg(step_schedule(Unit::Samples, vec![100, 700])),
        ),
        ("noise", linreg(noise(10, 400, 3))),
        ("mlp noise", mlp(noise(8, 96, 2))),
    ];
    for (what, cfg) in &cases {
        let (rows, summary) = alone(cfg);
        assert!(
            batches(&rows).windows(2).any(|w| w[0] != w[1]),
            "{what}: the batch changes"
        );
        // World 7 > the first steps' micros: some ranks have nothing to compute at first.
        for world in [1, 2, 3, 7] {
            let out = cluster(cfg, Settings::default(), world, vec![]);
            assert_eq!(json(&out.rows[0]), json(&rows), "{what} on {world}: rows");
            assert_eq!(out.summary, summary, "{what} on {world}: summary");
        }
    }
    // Overlapped steps reshape their buckets' plans too.
    let cfg = mlp(noise(8, 96, 2));
    let (rows, _) = alone(&cfg);
    let overlap = Settings {
        reduction: Reduction {
            overlap: true,
            ..Reduction::default()
        },
        ..Settings::default()
    };
    let out = cluster(&cfg, overlap, 3, vec![]);
    assert_eq!(json(&out.rows[0]), json(&rows), "mlp noise, overlapped");
}

#[test]
fn an_elastic_run_whose_batch_follows_the_noise_scale_survives_losses_joins_and_restarts() {
    let cfg = linreg(noise(10, 400, 3));
    let (rows, summary) = alone(&cfg);
    let settings = Settings {
        elastic: true,
        checkpoint_every: 5,
        ..Settings::default()
    };
    let script = vec![
        Fault::Lose {
            at: 7,
            rank: 1,
            finished: vec![0],
        },
        Fault::Join { at: 14 },
        Fault::Restart { at: 23, world: 4 },
    ];
    let out = cluster(&cfg, settings, 3, script);
    assert_eq!(json(&out.rows[0]), json(&rows));
    assert_eq!(out.summary, summary);
    assert!(out.generations >= 3, "{}", out.generations);
}

#[test]
fn a_schedule_that_cannot_run_is_refused_before_training() {
    let refused = |cfg: TrainConfig| cfg.build().unwrap_err().to_string();
    // A ramp's start that the microbatch does not divide.
    let e = refused(linreg(ramp(7, 10)));
    assert!(
        e.starts_with("batch_schedule.start = 7")
            && e.contains("multiple of the microbatch size 5"),
        "{e}"
    );
    // A first batch outside the noise rule's bounds.
    let e = refused(linreg(noise(40, 400, 3)));
    assert!(e.contains("batch = 20") && e.contains("[40, 400]"), "{e}");
    // A schedule whose largest batch would exhaust the sample stream.
    let mut cfg = linreg(step_schedule(Unit::Steps, vec![1, 2, 3]));
    cfg.batch = 1 << 30;
    cfg.micro = Some(1 << 20);
    cfg.steps = 200;
    let e = refused(cfg);
    assert!(e.contains("this run's largest is 8589934592"), "{e}");
}
