//! The batch-size sweep as a plan of trials: which `(batch, lr, seed)` to train next, and with
//! what step budget, given the results so far.
//!
//! ```text
//!   for each (B, seed), independently:
//!     tuned:   rates of the grid from the largest down; a rate that diverges costs a few
//!              steps; each trial's budget is the best step count found so far for this
//!              (B, seed) (a slower rate cannot win, so it stops as soon as it has lost);
//!              the search stops after `patience` rates in a row did worse than the best
//!              (steps to target are unimodal in the rate, up to noise).
//!              Then, with a held-out seed, one more trial: the chosen rate on fresh seeds
//!              with the full budget, whose steps are the ones reported (the best of noisy
//!              trials is biased low: docs/science.md#selection-bias).
//!     linear / sqrt / none: one trial at η₀·B/B₀, η₀·√(B/B₀) or η₀.
//! ```
//!
//! A [`RateSearch`] is a plain state machine: [`RateSearch::next_trial`] says what to run,
//! [`RateSearch::record`] takes the result. Executors (in one process, or on a cluster) drive
//! many searches, in parallel or not; the outcome does not depend on the order in which the
//! searches of different `(B, seed)` are advanced.

pub mod study;

use batchlab_core::train::Status;
use serde::{Deserialize, Serialize};

use crate::study::TrialRecord;

/// How the learning rate is chosen for each batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrPolicy {
    /// The best rate of a grid, by steps to target (Shallue et al. 2018).
    Tuned,
    /// `η = η₀ B/B₀`.
    Linear,
    /// `η = η₀ √(B/B₀)`.
    Sqrt,
    /// `η = η₀`.
    None,
}

impl std::str::FromStr for LrPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tuned" => Ok(Self::Tuned),
            "linear" => Ok(Self::Linear),
            "sqrt" => Ok(Self::Sqrt),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown learning-rate policy {other:?}: expected tuned, linear, sqrt or none"
            )),
        }
    }
}

/// A trial to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialPlan {
    /// Global batch size.
    pub batch: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Sampler seed.
    pub seed: u64,
    /// Step budget.
    pub budget: u64,
    /// The measurement of the chosen rate on held-out seeds (not a selection trial).
    pub held_out: bool,
}

/// The rate search of one `(batch, seed)`.
#[derive(Debug, Clone)]
pub struct RateSearch {
    batch: u64,
    seed: u64,
    /// Rates still to try, largest first.
    rates: Vec<f64>,
    next: usize,
    max_steps: u64,
    patience: usize,
    best: Option<(f64, u64)>,
    worse_in_a_row: usize,
    single: bool,
    done: bool,
    /// The seed (key) of the held-out measurement, when the search ends with one.
    held_out_seed: Option<u64>,
    /// The held-out trial has been handed out.
    measuring: bool,
    /// Its result: `(status, steps)`.
    measured: Option<(Status, u64)>,
    /// Refinement rounds left after the grid (see [`RateSearch::with_refinement`]).
    rounds_left: u32,
    /// The factor between the best rate and the next candidates on either side.
    step_factor: f64,
    /// Candidates of the current refinement round still to try.
    refine: Vec<f64>,
}

impl RateSearch {
    /// A tuned search over `grid` (any order) with at most `max_steps` per trial, stopping after
    /// `patience` consecutive rates that lost to the best.
    pub fn tuned(batch: u64, seed: u64, grid: &[f64], max_steps: u64, patience: usize) -> Self {
        let mut rates = grid.to_vec();
        rates.sort_by(|a, b| b.total_cmp(a));
        rates.dedup();
        Self {
            batch,
            seed,
            rates,
            next: 0,
            max_steps,
            patience: patience.max(1),
            best: None,
            worse_in_a_row: 0,
            single: false,
            done: false,
            held_out_seed: None,
            measuring: false,
            measured: None,
            rounds_left: 0,
            step_factor: 0.0,
            refine: Vec::new(),
        }
    }

    /// The same search, refining the grid's best rate `rounds` times: each round tries the
    /// geometric midpoints between the best rate so far and its neighbours at the current
    /// spacing, then halves the spacing (in `ln η`). Two rounds bring a grid of ratio `ρ`
    /// to `ρ^{1/4}` around the optimum, which a coarse grid otherwise misses by up to a
    /// factor `√ρ` in rate and a few percent in steps, most at large batches (where the
    /// steps are flattest in the rate, and `S_min`, hence `B_crit`, is decided).
    pub fn with_refinement(mut self, rounds: u32) -> Self {
        self.rounds_left = rounds;
        self
    }

    /// The same search, ended by a measurement of the chosen rate on the held-out seed (key)
    /// `seed`, with the full budget (see the module docs).
    pub fn with_held_out(mut self, seed: u64) -> Self {
        self.held_out_seed = Some(seed);
        self
    }

    /// A single trial at rate `lr` (the scaling policies).
    pub fn fixed(batch: u64, seed: u64, lr: f64, max_steps: u64) -> Self {
        Self {
            single: true,
            ..Self::tuned(batch, seed, &[lr], max_steps, 1)
        }
    }

    /// The next trial, or `None` when the search is over.
    pub fn next_trial(&mut self) -> Option<TrialPlan> {
        if self.done || self.next >= self.rates.len() {
            self.done = true;
            if !self.measuring
                && let Some(lr) = self.next_refinement()
            {
                return Some(self.selection_trial(lr));
            }
            return match (self.held_out_seed, self.best, self.measuring) {
                (Some(seed), Some((lr, steps)), false) => {
                    self.measuring = true;
                    Some(TrialPlan {
                        batch: self.batch,
                        seed,
                        lr,
                        budget: held_out_horizon(steps, self.max_steps),
                        held_out: true,
                    })
                }
                _ => None,
            };
        }
        let lr = self.rates[self.next];
        self.next += 1;
        Some(self.selection_trial(lr))
    }

    /// A selection trial at `lr`: a slower rate cannot win, so it gets the best step count so
    /// far as its budget (ties go to the rate tried first).
    fn selection_trial(&self, lr: f64) -> TrialPlan {
        let budget = match self.best {
            Some((_, steps)) if !self.single => steps.min(self.max_steps),
            _ => self.max_steps,
        };
        TrialPlan {
            batch: self.batch,
            seed: self.seed,
            lr,
            budget,
            held_out: false,
        }
    }

    /// The next refinement candidate, starting a round when the last one is spent.
    fn next_refinement(&mut self) -> Option<f64> {
        if self.refine.is_empty() && self.rounds_left > 0 {
            let (best, _) = self.best?;
            if self.step_factor == 0.0 {
                // The grid's ratio around the best rate (the larger one, at an end).
                let k = self.rates.iter().position(|&r| r == best)?;
                let up = k.checked_sub(1).map(|i| self.rates[i] / best);
                let down = self.rates.get(k + 1).map(|r| best / r);
                self.step_factor = up.into_iter().chain(down).fold(1.0, f64::max);
                if self.step_factor <= 1.0 {
                    return None;
                }
            }
            self.step_factor = self.step_factor.sqrt();
            self.rounds_left -= 1;
            // Tried in the search's order: the larger first.
            self.refine = vec![best / self.step_factor, best * self.step_factor];
        }
        self.refine.pop()
    }

    /// Takes the result of the trial last returned by [`RateSearch::next_trial`].
    pub fn record(&mut self, r: &TrialRecord) {
        if self.measuring {
            self.measured = Some((r.status, r.steps));
            return;
        }
        let won = r.status == Status::Complete && self.best.is_none_or(|(_, s)| r.steps < s);
        if won {
            self.best = Some((r.lr, r.steps));
            self.worse_in_a_row = 0;
        } else if self.best.is_some() {
            // Only rates that lost to a best count against patience: above the optimum, rates
            // diverge or stall on their noise floor (INCOMPLETE) before any rate completes,
            // and the search must go on down the grid.
            self.worse_in_a_row += 1;
        }
        if self.worse_in_a_row >= self.patience {
            self.done = true;
        }
    }

    /// The best `(lr, steps)` found so far by the selection trials.
    pub fn best(&self) -> Option<(f64, u64)> {
        self.best
    }

    /// The held-out measurement's `(status, steps)`, once it ran.
    pub fn measured(&self) -> Option<(Status, u64)> {
        self.measured
    }

    /// The batch size and seed searched.
    pub fn key(&self) -> (u64, u64) {
        (self.batch, self.seed)
    }
}

/// The first budget of a held-out measurement whose selection took `steps`: twice that (and
/// 50 more), so that the mean loss has time to settle past its crossing; at most
/// `max_steps`. An executor that finds the crossing too near the end doubles it.
pub fn held_out_horizon(steps: u64, max_steps: u64) -> u64 {
    steps.saturating_mul(2).max(steps + 50).min(max_steps)
}

/// Powers of two from `lo` to `hi` inclusive (`lo` rounded up to a power of two).
pub fn powers_of_two(lo: u64, hi: u64) -> Vec<u64> {
    let mut b = lo.max(1).next_power_of_two();
    let mut out = Vec::new();
    while b <= hi {
        out.push(b);
        b *= 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(plan: TrialPlan, status: Status, steps: u64) -> TrialRecord {
        TrialRecord {
            batch: plan.batch,
            lr: plan.lr,
            seed: plan.seed,
            seeds: 1,
            status,
            steps,
            samples: steps * plan.batch,
            b_simple: None,
            b_simple_se: None,
            b_simple_ema: None,
            b_simple_nested: None,
            b_simple_nested_se: None,
            b_simple_exact: None,
            b_noise_exact: None,
            final_loss: None,
            held_out: plan.held_out,
            selection_steps: None,
            crossing: None,
            group_crossings: Vec::new(),
        }
    }

    /// Drives a search against a model of steps-to-target: diverges above `edge`, else
    /// `steps(lr)`, stopping INCOMPLETE at the budget.
    fn drive(
        mut s: RateSearch,
        edge: f64,
        steps: impl Fn(f64) -> u64,
    ) -> (Vec<TrialPlan>, Option<(f64, u64)>) {
        let mut plans = Vec::new();
        while let Some(p) = s.next_trial() {
            plans.push(p);
            let r = if p.lr >= edge {
                rec(p, Status::Infeasible, 3)
            } else if steps(p.lr) > p.budget {
                rec(p, Status::Incomplete, p.budget)
            } else {
                rec(p, Status::Complete, steps(p.lr))
            };
            s.record(&r);
        }
        (plans, s.best())
    }

    #[test]
    fn tuned_search_finds_the_fastest_rate_and_caps_slower_ones_at_the_best_so_far() {
        let grid = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];
        // Steps ∝ 1/lr below the edge 0.7: the best is the largest stable rate, 0.5.
        let (plans, best) = drive(RateSearch::tuned(8, 0, &grid, 10_000, 2), 0.7, |lr| {
            (10.0 / lr) as u64
        });
        assert_eq!(best, Some((0.5, 20)));
        let tried: Vec<f64> = plans.iter().map(|p| p.lr).collect();
        assert_eq!(
            tried,
            [2.0, 1.0, 0.5, 0.2, 0.1],
            "stops after two rates lost in a row"
        );
        assert_eq!(
            plans[3].budget, 20,
            "a slower rate runs at most the best's steps"
        );
    }

    #[test]
    fn a_noisy_interior_optimum_is_found_with_patience() {
        let grid: Vec<f64> = (0..12).map(|k| 0.01 * 1.5f64.powi(k)).collect();
        // Unimodal in log lr with its minimum near 0.2.
        let steps = |lr: f64| (100.0 * (1.0 + (lr / 0.2).ln().powi(2))) as u64;
        let (_, best) = drive(RateSearch::tuned(4, 1, &grid, 100_000, 3), 10.0, steps);
        let (lr, _) = best.unwrap();
        assert!((lr / 0.2).ln().abs() < 1.5f64.ln(), "best {lr}");
    }

    #[test]
    fn rates_stalled_on_their_noise_floor_before_the_optimum_do_not_end_the_search() {
        let grid: Vec<f64> = (0..10).map(|k| 0.001 * 2f64.powi(k)).collect();
        // Above 0.02 the noise floor stays above the target (never completes); below, 1/lr.
        let steps = |lr: f64| {
            if lr > 0.02 {
                u64::MAX
            } else {
                (10.0 / lr) as u64
            }
        };
        let (_, best) = drive(RateSearch::tuned(1, 0, &grid, 1_000_000, 2), 10.0, steps);
        assert_eq!(best, Some((0.016, 625)));
    }

    #[test]
    fn a_held_out_measurement_of_the_chosen_rate_ends_the_search() {
        let grid = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];
        let search = RateSearch::tuned(8, 0, &grid, 10_000, 2).with_held_out(2);
        let (plans, best) = drive(search, 0.7, |lr| (10.0 / lr) as u64);
        assert_eq!(best, Some((0.5, 20)));
        let last = plans.last().unwrap();
        assert_eq!(
            (last.seed, last.lr, last.budget, last.held_out),
            (2, 0.5, 70, true),
            "twice the best's 20 steps, and 50 more"
        );
        assert_eq!(plans.iter().filter(|p| p.held_out).count(), 1);
        // No rate reached the target: nothing to measure.
        let none = RateSearch::tuned(8, 0, &grid, 10_000, 2).with_held_out(2);
        let (plans, _) = drive(none, 0.0, |_| 1);
        assert!(plans.iter().all(|p| !p.held_out));
    }

    #[test]
    fn refinement_halves_the_spacing_around_the_best_rate_each_round() {
        let grid: Vec<f64> = (0..8).map(|k| 2f64.powi(k - 6)).collect(); // 1/64 … 2, ratio 2
        // Unimodal in ln η with its minimum at 0.3, between the grid's 0.25 and 0.5.
        let steps = |lr: f64| (1e5 * (1.0 + (lr / 0.3).ln().powi(2))) as u64;
        let (_, plain) = drive(RateSearch::tuned(4, 0, &grid, u64::MAX, 3), 10.0, steps);
        assert_eq!(plain.unwrap().0, 0.25);
        let search = RateSearch::tuned(4, 0, &grid, u64::MAX, 3).with_refinement(2);
        let (plans, best) = drive(search, 10.0, steps);
        let (lr, _) = best.unwrap();
        // Two rounds: candidates at 0.25·2^{±1/2}, then the new best·2^{±1/4}.
        assert!(
            (lr / 0.3).ln().abs() <= 2f64.ln() / 8.0 + 1e-12,
            "best {lr}"
        );
        let refined: Vec<f64> = plans
            .iter()
            .map(|p| p.lr)
            .filter(|r| !grid.contains(r))
            .collect();
        assert_eq!(refined.len(), 4, "{refined:?}");
        assert!((refined[0] / (0.25 * 2f64.sqrt())).ln().abs() < 1e-12);
    }

    #[test]
    fn fixed_policies_run_one_trial_with_the_full_budget() {
        let mut s = RateSearch::fixed(64, 2, 0.3, 500);
        let p = s.next_trial().unwrap();
        assert_eq!((p.batch, p.seed, p.lr, p.budget), (64, 2, 0.3, 500));
        s.record(&rec(p, Status::Complete, 100));
        assert!(s.next_trial().is_none());
    }

    #[test]
    fn powers_of_two_cover_the_range() {
        assert_eq!(powers_of_two(1, 16), [1, 2, 4, 8, 16]);
        assert_eq!(powers_of_two(3, 40), [4, 8, 16, 32]);
        assert!(powers_of_two(64, 32).is_empty());
    }

    #[test]
    fn policies_parse_and_refuse_with_the_accepted_values() {
        assert_eq!("sqrt".parse::<LrPolicy>(), Ok(LrPolicy::Sqrt));
        let e = "cubic".parse::<LrPolicy>().unwrap_err();
        assert!(
            e.contains("\"cubic\"") && e.contains("tuned, linear, sqrt or none"),
            "{e}"
        );
    }
}
