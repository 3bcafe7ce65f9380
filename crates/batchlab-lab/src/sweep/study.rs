//! What a sweep's trials say, and its report: the best rate and steps per batch size, the
//! critical-batch fit with its interval, the best rate against `ε_opt(B)`, the noise scale
//! near the target, and (for the noisy quadratic model) the closed-form predictions beside
//! them ([`analyse`]); [`summary`] and [`page`] present them (the binary reads the trials'
//! files and writes `analysis.json` and `report.html`).

use batchlab_core::tasks::TaskConfig;
use batchlab_core::theory::NqmTheory;
use batchlab_core::train::{Status, StepMetrics, TrainConfig};
use serde::Serialize;

use crate::fit::{self, BestTrial, CriticalFit, GroupInterval, MedianPoint, NoiseSummary, RateFit};
use crate::report::NestedCurve;
use crate::study::TrialRecord;

/// Closed-form predictions for a point of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct TheoryPoint {
    /// Batch size.
    pub batch: u64,
    /// Expected steps to the target at the best rate of the grid.
    pub steps: Option<u64>,
    /// That rate.
    pub lr: Option<f64>,
    /// The closed-form optimum: the best constant rate anywhere in the grid's range, with
    /// continuous steps (`NqmTheory::best_sgd_rate_continuous`).
    #[serde(default)]
    pub optimum_steps: Option<f64>,
    /// That rate.
    #[serde(default)]
    pub optimum_lr: Option<f64>,
}

/// Everything the analysis of a sweep found; written as `analysis.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SweepAnalysis {
    /// The target loss.
    pub target: f64,
    /// Seeds averaged in each reported trial (1 when every seed's run is its own trial; the
    /// held-out seeds when the steps were measured on held-out seeds).
    pub seeds_per_trial: u64,
    /// Whether the reported steps are held-out measurements of the chosen rates
    /// (docs/science.md#selection-bias); false for studies without them.
    #[serde(default)]
    pub held_out: bool,
    /// Batch sizes whose held-out measurement did not reach the target, with its status: they
    /// have no point in the fit.
    #[serde(default)]
    pub held_out_failures: Vec<(u64, Status)>,
    /// The trial that stands for each (batch, seed).
    pub best: Vec<BestTrial>,
    /// Medians over seeds per batch.
    pub medians: Vec<MedianPoint>,
    /// `S = S_min(1 + B_crit/B)` fitted to every (batch, seed) point: the point estimate.
    pub fit: Option<CriticalFit>,
    /// The fitted `B_crit` lies within the measured batch sizes, with at least two measured
    /// sizes on each side; otherwise it is an extrapolation (extend --batches).
    pub in_range: Option<bool>,
    /// The 95 % interval of the same fit from the held-out seed groups' fits
    /// (docs/science.md#coverage), or `null` where none is given (see `no_interval`).
    pub interval: Option<GroupInterval>,
    /// Why there is no interval.
    pub no_interval: Option<String>,
    /// `ε(B) = ε_max/(1 + B_noise/B)` fitted to the best rates.
    pub rate_fit: Option<RateFit>,
    /// The batch size where the best rate stops following `η ∝ B`.
    pub linear_breakdown: Option<f64>,
    /// Measured (and exact) `B_simple` near the target.
    pub noise: Option<NoiseSummary>,
    /// Closed-form predictions (noisy quadratic model only).
    pub theory: Vec<TheoryPoint>,
    /// The critical-batch fit of the closed-form optimum (best constant rate, continuous
    /// steps) at the measured batch sizes.
    pub theory_fit: Option<CriticalFit>,
    /// The regime of each batch size on the fitted curve (perfect scaling `B ≤ B_crit/4`,
    /// saturation `B ≥ 4·B_crit`, diminishing returns between).
    pub regimes: Vec<(u64, fit::Regime)>,
}

/// The closed-form steps to target per batch, for the noisy quadratic model with SGD.
fn nqm_theory(
    base: &TrainConfig,
    target: f64,
    batches: &[u64],
    grid: &[f64],
) -> Option<Vec<TheoryPoint>> {
    let TaskConfig::Nqm(c) = &base.task else {
        return None;
    };
    if base.optimizer.kind != batchlab_core::optim::OptimizerKind::Sgd
        || base.optimizer.weight_decay != 0.0
    {
        return None;
    }
    let task = c.build().ok()?;
    let theory = NqmTheory::new(task.h().to_vec(), task.c().to_vec()).ok()?;
    let s0 = vec![c.init * c.init; theory.dim()];
    Some(
        batches
            .iter()
            .map(|&b| {
                let best = theory.best_sgd_lr(&s0, b as f64, target, base.steps, grid);
                let range = (
                    grid.iter().copied().fold(f64::INFINITY, f64::min),
                    grid.iter().copied().fold(0.0, f64::max),
                );
                let optimum =
                    theory.best_sgd_rate_continuous(&s0, b as f64, target, base.steps, range);
                TheoryPoint {
                    batch: b,
                    steps: best.map(|r| r.steps),
                    lr: best.map(|r| r.lr),
                    optimum_steps: optimum.map(|o| o.1),
                    optimum_lr: optimum.map(|o| o.0),
                }
            })
            .collect(),
    )
}

/// The level of the critical batch size's interval (its coverage was measured for it,
/// docs/science.md#coverage).
pub const INTERVAL_LEVEL: f64 = 0.95;

/// Analyses a sweep's trial records (`base`: the configuration the trials share; `batches` and
/// `grid`: the batch sizes and rates searched, for the closed form).
pub fn analyse(
    records: &[TrialRecord],
    target: f64,
    base: &TrainConfig,
    batches: &[u64],
    grid: &[f64],
) -> SweepAnalysis {
    let best = fit::best_per_batch(records);
    let medians = fit::median_over_seeds(&best);
    // Every (batch, seed) point, and the held-out groups' points for the interval.
    let (points, groups) = fit::study_points(&best);
    let rates: Vec<(f64, f64)> = medians.iter().map(|m| (m.batch as f64, m.lr)).collect();
    let estimate = fit::critical_estimate(&points, &groups, INTERVAL_LEVEL);
    let theory = nqm_theory(base, target, batches, grid).unwrap_or_default();
    // The truth a measured B_crit is compared with: the closed-form optimum's fit.
    let theory_points: Vec<(f64, f64)> = theory
        .iter()
        .filter_map(|t| t.optimum_steps.map(|s| (t.batch as f64, s)))
        .collect();
    let critical = estimate.as_ref().map(|e| e.fit.clone());
    let regimes = critical.as_ref().map_or_else(Vec::new, |f| {
        medians
            .iter()
            .map(|m| (m.batch, fit::regime(m.batch as f64, f)))
            .collect()
    });
    let held_out = best.iter().any(|t| t.held_out);
    SweepAnalysis {
        target,
        regimes,
        seeds_per_trial: records
            .iter()
            .filter(|r| r.held_out == held_out)
            .map(|r| r.seeds)
            .max()
            .unwrap_or(1),
        held_out,
        held_out_failures: fit::held_out_failures(records)
            .into_iter()
            .map(|(b, _, status)| (b, status))
            .collect(),
        fit: critical,
        in_range: estimate.as_ref().map(|e| e.in_range),
        interval: estimate.as_ref().and_then(|e| e.interval.clone()),
        no_interval: estimate.as_ref().and_then(|e| e.no_interval.clone()),
        rate_fit: fit::fit_best_rate(&rates),
        linear_breakdown: fit::linear_scaling_breakdown(&rates),
        noise: fit::noise_scale_summary(&best),
        theory_fit: fit::fit_critical_batch(&theory_points),
        theory,
        best,
        medians,
    }
}

/// The study's summary for the terminal: per batch size the steps, samples and best rate (the
/// closed form beside them where there is one), the critical-batch fit, the noise scale near
/// the target and the best-rate fit.
pub fn summary(a: &SweepAnalysis) -> String {
    let mut o = String::new();
    let has_theory = !a.theory.is_empty();
    if a.held_out {
        o.push_str(&format!(
            "target loss {:.4e}; per batch size, the chosen rate measured again on held-out seeds \
             (crossing of the mean loss of {} seeds; sel. S: the selection's steps, for ranking only):",
            a.target, a.seeds_per_trial
        ));
        o.push('\n');
    } else if a.seeds_per_trial > 1 {
        o.push_str(&format!(
            "target loss {:.4e} on the mean loss of {} seeds; per batch size, the best rate's trial:",
            a.target, a.seeds_per_trial
        ));
        o.push('\n');
    } else {
        o.push_str(&format!(
            "target loss {:.4e}; per batch size, medians over seeds of each seed's best rate:",
            a.target
        ));
        o.push('\n');
    }
    o.push_str(&format!(
        "{:>7} {:>6} {:>10} {:>12} {:>11}",
        "B", "seeds", "steps S", "samples E", "best lr"
    ));
    if a.held_out {
        o.push_str(&format!(" {:>8}", "sel. S"));
    }
    if has_theory {
        o.push_str(&format!(" {:>10} {:>11}", "theory S", "theory lr"));
    }
    o.push_str(&format!(" {:>10}  regime", "×/doubling"));
    o.push('\n');
    let mut previous: Option<(f64, f64)> = None;
    for m in &a.medians {
        o.push_str(&format!(
            "{:>7} {:>6} {:>10.0} {:>12.0} {:>11.3e}",
            m.batch,
            m.seeds as u64 * a.seeds_per_trial,
            m.steps,
            m.steps * m.batch as f64,
            m.lr
        ));
        if a.held_out {
            let sel = m
                .selection_steps
                .map_or("-".to_string(), |s| format!("{s:.0}"));
            o.push_str(&format!(" {sel:>8}"));
        }
        if let Some(t) = a.theory.iter().find(|t| t.batch == m.batch) {
            let s = t.steps.map_or("-".to_string(), |s| s.to_string());
            let lr = t.lr.map_or("-".to_string(), |l| format!("{l:.3e}"));
            o.push_str(&format!(" {s:>10} {lr:>11}"));
        } else if has_theory {
            o.push_str(&format!(" {:>10} {:>11}", "-", "-"));
        }
        // The measured speed-up per doubling of B since the previous batch size: 2 under
        // perfect scaling, 1 in saturation.
        let b = m.batch as f64;
        let gain = previous
            .filter(|&(pb, ps)| pb < b && ps > 0.0 && m.steps > 0.0)
            .map(|(pb, ps)| (ps / m.steps).powf(1.0 / (b / pb).log2()));
        previous = Some((b, m.steps));
        let regime = a
            .regimes
            .iter()
            .find(|(rb, _)| *rb == m.batch)
            .map_or("", |(_, r)| match r {
                fit::Regime::PerfectScaling => "perfect scaling",
                fit::Regime::DiminishingReturns => "diminishing returns",
                fit::Regime::Saturation => "saturation",
            });
        let gain = gain.map_or("-".to_string(), |g| format!("{g:.2}"));
        o.push_str(&format!(" {gain:>10}  {regime}"));
        o.push('\n');
    }
    for (b, status) in &a.held_out_failures {
        o.push_str(&format!(
            "B = {b}: the chosen rate did not reach the target on the held-out seeds ({status:?}): \
             no point (its expected steps exceed what the selection seeds showed)"
        ));
        o.push('\n');
    }
    o.push_str(&critical_line(a));
    o.push('\n');
    if let Some(t) = &a.theory_fit {
        o.push_str(&format!(
            "closed form (best constant rate, continuous S): B_crit ≈ {:.0}, S_min ≈ {:.0}, E_min ≈ {:.0}",
            t.b_crit, t.s_min, t.e_min
        ));
        o.push('\n');
    }
    if let Some(n) = &a.noise {
        o.push_str(&format!(
            "noise scale near the target: B_simple ≈ {:.0} (IQR {:.0}–{:.0})",
            n.median_b_simple, n.lo, n.hi
        ));
        if let Some(e) = n.median_b_simple_nested {
            o.push_str(&format!("; nested prefixes {e:.0}"));
        }
        if let Some(e) = n.median_b_simple_exact {
            o.push_str(&format!("; exact B_simple {e:.0}"));
        }
        if let Some(e) = n.median_b_noise_exact {
            o.push_str(&format!(", exact B_noise {e:.0}"));
        }
        o.push('\n');
    }
    if let Some(r) = &a.rate_fit {
        o.push_str(&format!(
            "best rate ≈ ε_max/(1 + B_noise/B) with ε_max ≈ {:.3}, B_noise ≈ {:.0}",
            r.eps_max, r.b_noise
        ));
        if let Some(b) = a.linear_breakdown {
            o.push_str(&format!("; linear scaling η ∝ B holds up to B ≈ {b:.0}"));
        }
        o.push('\n');
    }
    o
}

/// The summary line of the critical-batch fit: the estimate, its interval or why there is
/// none, and whether the knee lies inside the measured batch sizes.
pub fn critical_line(a: &SweepAnalysis) -> String {
    let Some(f) = &a.fit else {
        return "critical batch size: not enough batch sizes reached the target to fit".into();
    };
    let mut line = format!("critical batch size B_crit ≈ {:.0}", f.b_crit);
    if let Some(i) = &a.interval {
        line += &format!(
            " ({:.0}% interval {:.0}–{:.0})",
            100.0 * i.level,
            i.b_crit.lo,
            i.b_crit.hi
        );
    }
    line += &format!(
        "; S_min ≈ {:.0} steps, E_min ≈ {:.0} samples",
        f.s_min, f.e_min
    );
    if let Some(i) = &a.interval {
        line += &format!(
            " ({:.0}–{:.0}, {:.0}–{:.0})",
            i.s_min.lo, i.s_min.hi, i.e_min.lo, i.e_min.hi
        );
    }
    if a.in_range == Some(false) {
        line += "\n  B_crit is outside the measured range: extend --batches";
    } else if let Some(why) = &a.no_interval {
        line += &format!("\n  no interval: {why}");
    }
    line
}

/// At most `k` of `items`, spread evenly from the first to the last.
fn spread<T: Clone>(items: &[T], k: usize) -> Vec<T> {
    if items.len() <= k || k < 2 {
        return items.iter().take(k.max(1)).cloned().collect();
    }
    (0..k)
        .map(|i| items[i * (items.len() - 1) / (k - 1)].clone())
        .collect()
}

/// The most points a curve of the report draws: a plot 720 pixels wide shows no more, and
/// a held-out run of 20 000 steps would otherwise put megabytes of SVG in the page.
const PLOT_POINTS: usize = 1500;

/// Every `k`-th point of `points` and the last, `k` the smallest stride that keeps at most
/// `max` (plus the last).
fn thin_points(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    let k = points.len().div_ceil(max.max(1)).max(1);
    if k == 1 {
        return points;
    }
    let last = points.len() - 1;
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % k == 0 || *i == last)
        .map(|(_, p)| p)
        .collect()
}

/// A trial the report draws: its rows, and its noise probe's nested-prefix curve where the
/// report shows one.
#[derive(Debug, Clone)]
pub struct TrialCurves {
    /// The trial.
    pub trial: BestTrial,
    /// Its metrics rows (the first seed's for a seed-mean trial).
    pub rows: Vec<StepMetrics>,
    /// Its probe's curve, for the trials of [`drawn_trials`] marked so.
    pub nested: Option<NestedCurve>,
}

/// Each batch size's best trial of the first seed.
fn first_seed_best(a: &SweepAnalysis) -> Vec<&BestTrial> {
    let first_seed = a.best.iter().map(|b| b.seed).min();
    a.best
        .iter()
        .filter(|b| Some(b.seed) == first_seed)
        .collect()
}

/// The batch sizes whose `B_simple` is drawn over training: at most five, spread over the
/// first seed's best trials, or the lines hide each other.
fn shown_batches(a: &SweepAnalysis) -> Vec<u64> {
    spread(&first_seed_best(a), 5)
        .iter()
        .map(|b| b.batch)
        .collect()
}

/// The trials whose curves the report draws (each batch size's best trial of the first seed),
/// each with whether its noise probe is drawn too (three of them, spread).
pub fn drawn_trials(a: &SweepAnalysis) -> Vec<(&BestTrial, bool)> {
    let probed = spread(&shown_batches(a), 3);
    first_seed_best(a)
        .into_iter()
        .map(|b| (b, probed.contains(&b.batch)))
        .collect()
}

/// The study's `report.html`: steps and samples against `B` with the fit and `B_crit`, best
/// rate against `B`, `B_simple` over training, loss curves per batch, and every trial;
/// `curves` are the rows (and probes) of [`drawn_trials`].
pub fn page(a: &SweepAnalysis, records: &[TrialRecord], curves: &[TrialCurves]) -> String {
    use crate::report::{self, LossAxis, Section};
    let measured: Vec<(f64, f64)> = a
        .medians
        .iter()
        .map(|m| (m.batch as f64, m.steps))
        .collect();
    let batches: Vec<f64> = measured.iter().map(|p| p.0).collect();
    let (lo, hi) = (
        batches.first().copied().unwrap_or(1.0),
        batches.last().copied().unwrap_or(1.0),
    );
    let grid: Vec<f64> = batchlab_core::theory::log_grid(lo, hi.max(lo), 64);
    let fitted: Vec<(f64, f64)> = a.fit.as_ref().map_or_else(Vec::new, |f| {
        grid.iter().map(|&b| (b, f.steps(b))).collect()
    });
    // The closed-form optimum (continuous steps, best constant rate), the fits' truth.
    let theory: Vec<(f64, f64)> = a
        .theory
        .iter()
        .filter_map(|t| {
            t.optimum_steps
                .or(t.steps.map(|s| s as f64))
                .map(|s| (t.batch as f64, s))
        })
        .collect();
    let theory_opt = (!theory.is_empty()).then_some(theory.as_slice());
    let b_crit = a.fit.as_ref().map(|f| f.b_crit);
    let steps_plot = report::steps_vs_batch(&measured, &fitted, b_crit, theory_opt);
    let samples = |v: &[(f64, f64)]| v.iter().map(|&(b, s)| (b, b * s)).collect::<Vec<_>>();
    let samples_plot = report::samples_vs_batch(
        &samples(&measured),
        &samples(&fitted),
        b_crit,
        Some(&samples(&theory))
            .filter(|t| !t.is_empty())
            .map(|v| v.as_slice()),
    );
    let rates: Vec<(f64, f64)> = a.medians.iter().map(|m| (m.batch as f64, m.lr)).collect();
    let linear: Vec<(f64, f64)> = rates.first().map_or_else(Vec::new, |&(b0, l0)| {
        grid.iter().map(|&b| (b, l0 * b / b0)).collect()
    });
    let eps_opt: Vec<(f64, f64)> = a
        .rate_fit
        .as_ref()
        .map_or_else(Vec::new, |r| grid.iter().map(|&b| (b, r.lr(b))).collect());
    let rate_plot = report::best_rate_vs_batch(&rates, &linear, &eps_opt);
    let shown = shown_batches(a);
    let mut b_simple = Vec::new();
    let mut b_exact = Vec::new();
    let mut loss = Vec::new();
    let mut loss_samples = Vec::new();
    let mut nested = Vec::new();
    for c in curves {
        let b = &c.trial;
        nested.extend(c.nested.clone());
        let rows = &c.rows;
        let series =
            |f: &dyn Fn(&StepMetrics) -> Option<f64>, x_samples: bool| -> Vec<(f64, f64)> {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter_map(|r| {
                        f(r).map(|y| {
                            (
                                if x_samples {
                                    r.samples as f64
                                } else {
                                    r.step as f64
                                },
                                y,
                            )
                        })
                    })
                    .collect();
                thin_points(points, PLOT_POINTS)
            };
        if shown.contains(&b.batch) {
            b_simple.push((
                b.batch,
                series(&|r| Some(r.b_simple).filter(|x| x.is_finite()), false),
            ));
            b_exact.push((b.batch, series(&|r| r.b_simple_exact, false)));
        }
        let l = |r: &StepMetrics| r.eval_loss.or(Some(r.train_loss));
        loss.push((b.batch, series(&l, false)));
        loss_samples.push((b.batch, series(&l, true)));
    }
    let has_exact = b_exact.iter().any(|(_, v)| !v.is_empty());
    let noise_plot =
        report::b_simple_over_training(&b_simple, has_exact.then_some(b_exact.as_slice()), b_crit);
    let (w, h) = (720, 440);
    let mut text = String::new();
    if a.fit.is_some() {
        text += &format!(
            "Fit S = S_min(1 + B_crit/B): {}. ",
            critical_line(a).replace('\n', ";")
        );
    }
    if a.held_out {
        text += &format!(
            "Steps are those of each batch size's chosen rate measured again on {} held-out seeds (the selection's best is biased low). ",
            a.seeds_per_trial
        );
    }
    if let Some(t) = &a.theory_fit {
        text += &format!(
            "Closed form (NQM): B_crit ≈ {:.0}, S_min ≈ {:.0}, E_min ≈ {:.0}. ",
            t.b_crit, t.s_min, t.e_min
        );
    }
    if let Some(n) = &a.noise {
        text += &format!(
            "Measured B_simple near the target ≈ {:.0} (IQR {:.0}–{:.0}){}. ",
            n.median_b_simple,
            n.lo,
            n.hi,
            n.median_b_simple_nested
                .map_or_else(String::new, |e| format!(", from nested prefixes ≈ {e:.0}"))
        );
    }
    let sections = vec![
        Section {
            title: "Steps and samples to the target".into(),
            text,
            figures: vec![report::svg(&steps_plot, w, h), report::svg(&samples_plot, w, h)],
            table: None,
        },
        Section {
            title: "Best learning rate".into(),
            text: a.rate_fit.as_ref().map_or_else(String::new, |r| {
                format!(
                    "ε_opt(B) = ε_max/(1 + B_noise/B) with ε_max ≈ {:.3}, B_noise ≈ {:.0}; the dotted line is η ∝ B from the smallest batch.",
                    r.eps_max, r.b_noise
                )
            }),
            figures: vec![report::svg(&rate_plot, w, h)],
            table: None,
        },
        Section {
            title: "Gradient noise scale during training".into(),
            text: "B_simple (ratio of EMAs of the two-batch estimates) over the best runs of up to five batch sizes (first seed), with the exact values where the task has a closed form. Below: the noise probe at the end of three best runs, |g_b|² at every nested prefix size b of each probe batch and the fitted |G|² + tr Σ/b.".into(),
            figures: {
                let mut f = vec![report::svg(&noise_plot, w, h)];
                if !nested.is_empty() {
                    f.push(report::svg(&report::nested_noise(&nested), w, h));
                }
                f
            },
            table: None,
        },
        Section {
            title: "Loss curves".into(),
            text: "Each batch size's best run (first seed), against steps and against samples.".into(),
            figures: vec![report::svg(&report::loss_curves(&loss, LossAxis::Steps), w, h), report::svg(&report::loss_curves(&loss_samples, LossAxis::Samples), w, h)],
            table: None,
        },
        Section { title: "Every trial".into(), text: String::new(), figures: vec![], table: Some(report::trials_table(records)) },
    ];
    report::html_page(
        "batchlab sweep",
        &format!("Target loss {:.4e}.", a.target),
        &sections,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinned_curves_keep_their_ends_and_at_most_the_points_asked_for() {
        let pts: Vec<(f64, f64)> = (0..20_001).map(|i| (i as f64, -(i as f64))).collect();
        let thin = thin_points(pts.clone(), 1500);
        assert!(thin.len() <= 1501, "{}", thin.len());
        assert_eq!(thin.first(), pts.first());
        assert_eq!(thin.last(), pts.last());
        // Evenly spaced: stride ⌈20001/1500⌉ = 14.
        assert_eq!(thin[1].0 - thin[0].0, 14.0);
        let short: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 0.0)).collect();
        assert_eq!(thin_points(short.clone(), 1500), short);
    }
}
