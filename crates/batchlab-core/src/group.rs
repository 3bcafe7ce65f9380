//! Several seeds' runs in lock step, ended on their mean evaluation loss.
//!
//! Closed forms such as the noisy quadratic model's `E[L](t)` describe the *expected* loss; a
//! single run's loss fluctuates around it. Steps to target of the expectation are measured by
//! training one replica per seed in lock step and checking the target on the mean of their
//! evaluation losses:
//!
//! ```text
//!   step t:  member 0 ─► row₀(t)     a member that ends on its own (budget spent, diverged)
//!            member 1 ─► row₁(t)     ends the group with its status
//!            ...
//!            mean of the rows' eval losses ─► window ─► ≤ target: COMPLETE
//!                                                     stalled: INCOMPLETE
//! ```
//!
//! [`SeedMean`] is the rule alone: the run driver (`crate::driver`) feeds it the rows in member
//! order wherever the members run (one process, a cluster of workers), so the group's result
//! does not depend on where it ran.

use crate::train::{
    EvalWindow, RunSummary, STALL_MIN_EVALS, STALL_TOLERANCE, Status, StepMetrics, TrainConfig,
    params_digest,
};

/// How a group ended: status, steps to the end, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupEnd {
    /// COMPLETE (the mean reached the target), INCOMPLETE or INFEASIBLE.
    pub status: Status,
    /// Steps applied when the group ended.
    pub steps: u64,
    /// Why, in words.
    pub message: String,
}

/// The stopping rule of a seed-mean group and its summary (see the [module docs](self)).
/// Plain data (serde): an elastic run hands it to a new worker with the replicas.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeedMean {
    target: Option<f64>,
    fraction: f64,
    stop_stalled: bool,
    batch: u64,
    /// Whether the batch is constant (else the samples are read from the members' rows).
    constant: bool,
    micro: u64,
    peak_lr: f64,
    window: EvalWindow,
    /// Each member's latest row.
    last: Vec<Option<StepMetrics>>,
    /// Members that produced a row with an evaluation in the current step.
    evals: Vec<Option<f64>>,
}

impl SeedMean {
    /// The rule for `members` runs of `cfg` (its target, target window and stall stop apply to
    /// the mean); `micro` is the plan's microbatch size.
    pub fn new(cfg: &TrainConfig, micro: u64, members: usize) -> Self {
        Self {
            target: cfg.target_loss,
            fraction: cfg.target_window,
            stop_stalled: cfg.stop_stalled,
            batch: cfg.batch,
            constant: cfg.batch_schedule.is_constant(),
            micro,
            peak_lr: cfg.lr,
            window: EvalWindow::default(),
            last: vec![None; members],
            evals: vec![None; members],
        }
    }

    /// The configuration of the member with `seed`: `cfg` with that seed and no target of its
    /// own (only the mean counts).
    pub fn member_config(cfg: &TrainConfig, seed: u64) -> TrainConfig {
        let mut c = cfg.clone();
        c.seed = seed;
        c.target_loss = None;
        c
    }

    /// Records member `i`'s row of the current step.
    pub fn record(&mut self, i: usize, row: &StepMetrics) {
        self.evals[i] = row.eval_loss;
        self.last[i] = Some(row.clone());
    }

    /// The steps of member `i`'s latest row (0 before any).
    fn step(&self, i: usize) -> u64 {
        self.last[i].as_ref().map_or(0, |r| r.step)
    }

    /// After every member recorded its row of a step: how the group ends, if it does.
    pub fn check(&mut self) -> Option<GroupEnd> {
        let evals: Option<Vec<f64>> = self.evals.iter().copied().collect();
        self.evals.iter_mut().for_each(|e| *e = None);
        let evals = evals?;
        let n = evals.len();
        let mean = evals.iter().sum::<f64>() / n as f64;
        let smoothed = self.window.push(mean, self.fraction);
        let step = self.step(0);
        let target = self.target?;
        if smoothed <= target {
            return Some(GroupEnd {
                status: Status::Complete,
                steps: step,
                message: format!(
                    "the mean over {n} seeds reached {smoothed:.6e} ≤ target after {step} steps{}",
                    self.window.describe()
                ),
            });
        }
        if self.stop_stalled
            && let Some(level) = self.window.stalled(STALL_MIN_EVALS, STALL_TOLERANCE)
        {
            return Some(GroupEnd {
                status: Status::Incomplete,
                steps: step,
                message: format!(
                    "the mean over {n} seeds stalled at {level:.6e} above the target after \
                         {step} steps"
                ),
            });
        }
        None
    }

    /// Member `i`'s run ended on its own (budget spent, diverged), after recording its last row
    /// if it had one: the group ends with that status, at that member's steps.
    pub fn member_ended(&self, i: usize, summary: &RunSummary) -> GroupEnd {
        GroupEnd {
            status: summary.status,
            steps: self.step(i),
            message: summary.message.clone(),
        }
    }

    /// The group's summary: `end`, and the median over members of each final figure from
    /// their latest rows. `params` are the members' final parameters, in member order; the
    /// digest covers them all.
    pub fn summary<'a>(
        &self,
        end: GroupEnd,
        params: impl IntoIterator<Item = &'a [f64]>,
    ) -> RunSummary {
        let median = |f: &dyn Fn(&StepMetrics) -> Option<f64>| {
            let v = crate::stats::sorted(
                self.last
                    .iter()
                    .filter_map(|r| r.as_ref().and_then(f))
                    .filter(|x| x.is_finite()),
            );
            crate::stats::upper_median(&v)
        };
        let all: Vec<f64> = params.into_iter().flatten().copied().collect();
        RunSummary {
            status: end.status,
            steps: end.steps,
            samples: match median(&|r| Some(r.samples as f64)) {
                // A batch schedule: the members' samples differ where it follows each one's
                // noise scale; the median member's.
                Some(s) if !self.constant => s as u64,
                _ => end.steps * self.batch,
            },
            message: end.message,
            batch: self.batch,
            micro: self.micro,
            peak_lr: self.peak_lr,
            final_eval_loss: median(&|r| r.eval_loss),
            final_eval_accuracy: median(&|r| r.eval_accuracy),
            final_train_loss: median(&|r| Some(r.train_loss)),
            final_b_simple: median(&|r| Some(r.b_simple)),
            last_sharpness: median(&|r| r.sharpness),
            final_b_simple_exact: median(&|r| r.b_simple_exact),
            final_b_noise_exact: None,
            params_digest: params_digest(&all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, eval: Option<f64>) -> StepMetrics {
        StepMetrics {
            step,
            lr: 0.1,
            train_loss: eval.unwrap_or(1.0),
            eval_loss: eval,
            ..StepMetrics::default()
        }
    }

    fn config(target: f64) -> TrainConfig {
        TrainConfig {
            target_loss: Some(target),
            target_window: 0.0,
            stop_stalled: true,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn the_mean_not_each_member_reaches_the_target() {
        let mut g = SeedMean::new(&config(1.0), 1, 2);
        // Member 0 is below the target, member 1 above: the mean 1.25 is not.
        g.record(0, &row(1, Some(0.5)));
        g.record(1, &row(1, Some(2.0)));
        assert_eq!(g.check(), None);
        // 0.75 and 1.2: mean 0.975 ≤ 1.
        g.record(0, &row(2, Some(0.75)));
        g.record(1, &row(2, Some(1.2)));
        let end = g.check().expect("the mean reached the target");
        assert_eq!((end.status, end.steps), (Status::Complete, 2));
        assert!(end.message.contains("mean over 2 seeds"), "{}", end.message);
    }

    #[test]
    fn a_step_without_every_members_evaluation_is_not_checked() {
        let mut g = SeedMean::new(&config(1.0), 1, 2);
        g.record(0, &row(1, Some(0.1)));
        g.record(1, &row(1, None));
        assert_eq!(g.check(), None);
        // The evaluations of one step do not carry over to the next.
        g.record(0, &row(2, None));
        g.record(1, &row(2, Some(0.1)));
        assert_eq!(g.check(), None);
    }

    #[test]
    fn a_flat_mean_above_the_target_stalls() {
        let mut g = SeedMean::new(&config(0.5), 1, 2);
        let mut end = None;
        for t in 1..=1000 {
            g.record(0, &row(t, Some(1.0)));
            g.record(1, &row(t, Some(1.1)));
            if let Some(e) = g.check() {
                end = Some(e);
                break;
            }
        }
        let end = end.expect("stalled");
        assert_eq!(end.status, Status::Incomplete);
        // Stalls are declared once at least STALL_MIN_EVALS evaluations exist.
        assert_eq!(end.steps, STALL_MIN_EVALS as u64);
    }

    #[test]
    fn the_summary_takes_medians_and_digests_every_member() {
        let mut g = SeedMean::new(&config(1.0), 4, 3);
        for (i, l) in [3.0, 1.0, 2.0].into_iter().enumerate() {
            g.record(i, &row(7, Some(l)));
        }
        let end = GroupEnd {
            status: Status::Incomplete,
            steps: 7,
            message: "budget".into(),
        };
        let p = [vec![1.0, 2.0], vec![3.0], vec![]];
        let s = g.summary(end, p.iter().map(Vec::as_slice));
        assert_eq!(s.final_eval_loss, Some(2.0));
        assert_eq!((s.steps, s.samples, s.micro), (7, 7 * 64, 4));
        assert_eq!(s.params_digest, params_digest(&[1.0, 2.0, 3.0]));
    }
}
