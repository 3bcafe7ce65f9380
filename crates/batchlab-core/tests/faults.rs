//! Elastic runs and their faults, in memory: N run drivers over the in-memory collective
//! (`driver::memory::Cluster`), with ranks lost mid-step, late joiners and a coordinator
//! restarting from a checkpoint. Each scenario must give the uninterrupted run's rows, summary
//! and parameters, bit for bit (the networked tests in `tests/` keep a few end-to-end cases).

use batchlab_collective::Algorithm;
use batchlab_core::driver::Trainer;
use batchlab_core::driver::memory::{Cluster, Fault, Outcome};
use batchlab_core::driver::run_in_process;
use batchlab_core::driver::{ReduceMode, Reduction, RunDriver, Settings};
use batchlab_core::group::SeedMean;
use batchlab_core::optim::{OptimizerConfig, OptimizerKind};
use batchlab_core::tasks::TaskConfig;
use batchlab_core::tasks::linreg::LinregConfig;
use batchlab_core::tasks::mlp::{MlpConfig, MlpData, TeacherData};
use batchlab_core::train::{RunSummary, StepMetrics, TrainConfig};

fn linreg() -> TrainConfig {
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
        batch: 60,
        micro: Some(5),
        lr: 0.05,
        steps: 40,
        eval_every: 7,
        ..TrainConfig::default()
    }
}

fn mlp() -> TrainConfig {
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
        batch: 32,
        micro: Some(4),
        lr: 0.05,
        steps: 30,
        eval_every: 5,
        sharpness_every: 9,
        ..TrainConfig::default()
    }
}

/// The run in one process.
fn alone(cfg: &TrainConfig) -> (Vec<StepMetrics>, RunSummary) {
    let mut rows = Vec::new();
    let summary = Trainer::new(&cfg.build().unwrap()).run(|r| rows.push(r.clone()));
    (rows, summary)
}

fn elastic(every: u64) -> Settings {
    Settings {
        elastic: true,
        checkpoint_every: every,
        ..Settings::default()
    }
}

/// `world` ranks of `cfg` (a group when `seeds` is not empty) under `settings`, with `script`.
fn cluster(
    cfg: &TrainConfig,
    seeds: &[u64],
    settings: Settings,
    world: usize,
    script: Vec<Fault>,
) -> Outcome {
    let (cfg, seeds) = (cfg.clone(), seeds.to_vec());
    let make = move |state, rank, world| match state {
        None => RunDriver::new(&cfg, &seeds, settings, rank, world).unwrap(),
        Some(s) => RunDriver::resume(&cfg, &seeds, settings, s, (rank, world)).unwrap(),
    };
    let started = std::time::Instant::now();
    let out = Cluster::new(make, world, script).run().unwrap();
    // The point of running faults in memory: each scenario is quick.
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "{:?}",
        started.elapsed()
    );
    out
}

fn json<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_string(x).unwrap()
}

fn same_as_alone(cfg: &TrainConfig, out: &Outcome, what: &str) {
    let (rows, summary) = alone(cfg);
    assert_eq!(json(&out.rows[0]), json(&rows), "{what}: rows");
    assert_eq!(out.summary, summary, "{what}: summary");
}

#[test]
fn every_algorithm_and_world_gives_the_lone_runs_numbers() {
    for algorithm in Algorithm::ALL {
        for world in [1, 2, 3, 5, 12] {
            let settings = Settings {
                reduction: Reduction {
                    algorithm,
                    chunk_bytes: 64,
                    ..Reduction::default()
                },
                ..Settings::default()
            };
            let out = cluster(&linreg(), &[], settings, world, vec![]);
            same_as_alone(&linreg(), &out, &format!("{algorithm} on {world}"));
            assert_eq!(out.generations, 1);
        }
    }
}

#[test]
fn an_overlapped_step_gives_the_same_words_as_a_whole_one() {
    for world in [2, 3, 8] {
        let settings = Settings {
            reduction: Reduction {
                overlap: true,
                ..Reduction::default()
            },
            ..Settings::default()
        };
        let out = cluster(&mlp(), &[], settings, world, vec![]);
        same_as_alone(&mlp(), &out, &format!("overlap on {world}"));
    }
}

#[test]
fn fast_mode_is_within_its_bound_and_refused_when_elastic() {
    let fast = Settings {
        reduction: Reduction {
            mode: ReduceMode::Fast,
            ..Reduction::default()
        },
        ..Settings::default()
    };
    let out = cluster(&linreg(), &[], fast, 3, vec![]);
    let (rows, _) = alone(&linreg());
    assert_eq!(out.rows[0].len(), rows.len());
    // One f32 rounding per rank and per addition: the first step's loss (before any update)
    // is exact, later ones stay within a relative 1e-4 over 40 steps.
    assert_eq!(out.rows[0][0].train_loss, rows[0].train_loss);
    for (a, b) in out.rows[0].iter().zip(&rows) {
        assert!(
            (a.train_loss - b.train_loss).abs() <= 1e-4 * b.train_loss.abs(),
            "step {}: {} vs {}",
            a.step,
            a.train_loss,
            b.train_loss
        );
    }
    let refused = RunDriver::new(
        &linreg(),
        &[],
        Settings {
            elastic: true,
            ..fast
        },
        0,
        2,
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.starts_with("reduce = fast, in an elastic cluster: expected exact"),
        "{refused}"
    );
}

#[test]
fn a_rank_lost_mid_step_is_redone_by_the_survivors_bit_identically() {
    let cfg = linreg();
    // Nobody finished the all-reduce: the survivors redo the step.
    let out = cluster(
        &cfg,
        &[],
        elastic(0),
        4,
        vec![Fault::Lose {
            at: 13,
            rank: 2,
            finished: vec![],
        }],
    );
    same_as_alone(&cfg, &out, "lost, none finished");
    assert_eq!(out.generations, 2);
    assert!(
        out.syncs.iter().all(|(_, _, s)| s.took.is_none()),
        "{:?}",
        out.syncs
    );
}

#[test]
fn survivors_that_applied_the_step_hand_their_state_to_those_that_did_not() {
    let cfg = linreg();
    // Ranks 1 and 3 got the whole sum before rank 2 vanished; 0 did not. The new generation is
    // 0, 1, 3 → ranks 0, 1, 2: the new rank 1 is the first with the highest apply count.
    let out = cluster(
        &cfg,
        &[],
        elastic(0),
        4,
        vec![Fault::Lose {
            at: 13,
            rank: 2,
            finished: vec![1, 3],
        }],
    );
    same_as_alone(&cfg, &out, "lost, some finished");
    let took: Vec<_> = out
        .syncs
        .iter()
        .filter_map(|(g, r, s)| s.took.map(|t| (*g, *r, t.0, t.1)))
        .collect();
    assert_eq!(
        took,
        vec![(2, 0, 1, 1)],
        "rank 0 took rank 1's state, one apply ahead"
    );
}

#[test]
fn a_new_rank_0_resends_the_rows_the_coordinator_never_got() {
    let cfg = linreg();
    // Rank 1 applied step 20 and kept its row; rank 0, the only one sending rows, vanished
    // before sending it. Rank 1 becomes rank 0 and sends what is unconfirmed.
    let out = cluster(
        &cfg,
        &[],
        elastic(0),
        3,
        vec![Fault::Lose {
            at: 20,
            rank: 0,
            finished: vec![1],
        }],
    );
    same_as_alone(&cfg, &out, "rank 0 lost");
}

#[test]
fn a_late_joiner_takes_the_runs_state_and_every_rank_ends_the_same() {
    let cfg = mlp();
    let settings = Settings {
        reduction: Reduction {
            overlap: true,
            ..Reduction::default()
        },
        ..elastic(0)
    };
    let out = cluster(
        &cfg,
        &[],
        settings,
        2,
        vec![Fault::Join { at: 9 }, Fault::Join { at: 10 }],
    );
    same_as_alone(&cfg, &out, "two joiners");
    assert_eq!(out.generations, 3);
    let joiners: Vec<_> = out
        .syncs
        .iter()
        .filter_map(|(g, r, s)| s.took.map(|t| (*g, *r, t.1)))
        .collect();
    // Each joiner starts at apply 0 and takes the state of the apply count the others have.
    assert_eq!(joiners.len(), 2, "{joiners:?}");
    assert_eq!((joiners[0].0, joiners[0].1), (2, 2));
    assert_eq!((joiners[1].0, joiners[1].1), (3, 3));
    assert!(joiners.iter().all(|j| j.2 >= 9), "{joiners:?}");
}

#[test]
fn a_straggler_dropped_as_lost_and_back_as_a_new_worker_changes_nothing() {
    // A frozen rank is declared lost by the heartbeats (the others go on without it, none of
    // them past the all-reduce), and the same machine joins again later, fresh.
    let cfg = linreg();
    let out = cluster(
        &cfg,
        &[],
        elastic(0),
        3,
        vec![
            Fault::Lose {
                at: 6,
                rank: 1,
                finished: vec![],
            },
            Fault::Join { at: 17 },
        ],
    );
    same_as_alone(&cfg, &out, "straggler");
    assert_eq!(out.generations, 3);
}

#[test]
fn a_coordinator_restarted_from_a_checkpoint_ends_as_the_uninterrupted_run() {
    let cfg = linreg();
    for world in [1, 3, 6] {
        let out = cluster(
            &cfg,
            &[],
            elastic(5),
            4,
            vec![Fault::Restart { at: 23, world }],
        );
        same_as_alone(&cfg, &out, &format!("restart on {world}"));
        assert!(out.checkpoints >= 4, "{}", out.checkpoints);
    }
}

/// A seed-mean group of three members on an elastic in-memory cluster under `script` ends
/// with the rows, summary and parameters of the group run in one process.
fn seed_group_under(script: Vec<Fault>) {
    let mut cfg = linreg();
    cfg.target_loss = Some(0.05);
    cfg.steps = 300;
    let seeds = [3, 4, 5];
    let plans: Vec<_> = seeds
        .iter()
        .map(|&s| SeedMean::member_config(&cfg, s).build().unwrap())
        .collect();
    let rule = SeedMean::new(&cfg, plans[0].micro, seeds.len());
    let mut want_rows = vec![Vec::new(); seeds.len()];
    let (want, want_params) = run_in_process(rule, &plans, |m, row| {
        want_rows[m].push(row.clone());
        Ok::<(), ()>(())
    })
    .unwrap();
    assert!(want.steps > 12, "{want:?}");
    let what = format!("{script:?}");
    let out = cluster(&cfg, &seeds, elastic(2), 3, script);
    assert_eq!(json(&out.rows), json(&want_rows), "{what}: rows");
    assert_eq!(out.summary, want, "{what}");
    assert_eq!(out.params, want_params, "{what}");
}

#[test]
fn a_seed_mean_group_on_a_cluster_ends_as_in_one_process() {
    seed_group_under(vec![]);
}

#[test]
fn a_seed_mean_group_survives_a_loss_in_the_middle_of_its_members() {
    // Rank 1 is lost at step 12 after member 2 of that step had finished.
    seed_group_under(vec![Fault::Lose {
        at: 12,
        rank: 1,
        finished: vec![2],
    }]);
}

#[test]
fn a_seed_mean_group_survives_a_late_joiner_and_a_coordinator_restart() {
    seed_group_under(vec![
        Fault::Join { at: 4 },
        Fault::Restart { at: 11, world: 2 },
    ]);
}
