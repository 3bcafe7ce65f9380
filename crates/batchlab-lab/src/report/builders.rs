//! Builders: the standard plots of a batch-size study, each from plain data to a [`Plot`] or a
//! [`Heatmap`] that the caller may still adjust (it is a plain struct) before drawing.

use serde::{Deserialize, Serialize};

use super::axis::fmt_num;
use super::html::NEGATIVE_B_SIMPLE;
use super::{Heatmap, Palette, Plot, Series, Table};
use crate::study::TrialRecord;

/// Curves keyed by batch size: `(B, [(x, y)])`, one entry per batch.
pub type PerBatch = [(u64, Vec<(f64, f64)>)];

fn series(label: impl Into<String>, points: &[(f64, f64)]) -> Series {
    Series::new(label, points.to_vec())
}

/// Steps or samples to target against batch size, log-log: measured points, the fitted curve,
/// `B_crit` as a vertical line, and a theory curve where there is one.
fn to_target_vs_batch(
    title: &str,
    y_label: &str,
    fit_label: &str,
    measured: &[(f64, f64)],
    fitted: &[(f64, f64)],
    b_crit: Option<f64>,
    theory: Option<&[(f64, f64)]>,
) -> Plot {
    let mut lines = vec![series(fit_label, fitted)];
    lines.extend(theory.map(|t| series("theory", t)));
    Plot {
        title: title.to_owned(),
        x_label: "batch size B".to_owned(),
        y_label: y_label.to_owned(),
        log_x: true,
        log_y: true,
        lines,
        scatter: vec![series("measured (best rate)", measured)],
        vlines: b_crit
            .map(|b| (b, format!("B_crit = {}", fmt_num(b))))
            .into_iter()
            .collect(),
        ..Plot::default()
    }
}

/// Steps to target `S` against batch size `B` (log-log): `measured` points `(B, S)` at each
/// batch's best rate, the `fitted_curve` `S_min(1 + B_crit/B)`, `b_crit` as a dashed vertical
/// line, and an optional `theory` curve (e.g. the noisy quadratic model's prediction).
pub fn steps_vs_batch(
    measured: &[(f64, f64)],
    fitted_curve: &[(f64, f64)],
    b_crit: Option<f64>,
    theory: Option<&[(f64, f64)]>,
) -> Plot {
    to_target_vs_batch(
        "Steps to target vs batch size",
        "steps to target S",
        "fit S_min(1 + B_crit/B)",
        measured,
        fitted_curve,
        b_crit,
        theory,
    )
}

/// Samples to target `E = B·S` against batch size (log-log), laid out as [`steps_vs_batch`];
/// the fitted curve is `E_min(1 + B/B_crit)`.
pub fn samples_vs_batch(
    measured: &[(f64, f64)],
    fitted_curve: &[(f64, f64)],
    b_crit: Option<f64>,
    theory: Option<&[(f64, f64)]>,
) -> Plot {
    to_target_vs_batch(
        "Samples to target vs batch size",
        "samples to target E",
        "fit E_min(1 + B/B_crit)",
        measured,
        fitted_curve,
        b_crit,
        theory,
    )
}

/// Best learning rate against batch size (log-log): `measured` points `(B, η*)`, the linear
/// scaling rule `η₀·B/B₀` as a dashed line, and the fitted `ε_opt(B) = ε_max/(1 + B_noise/B)`.
pub fn best_rate_vs_batch(
    measured: &[(f64, f64)],
    linear_rule_line: &[(f64, f64)],
    eps_opt_curve: &[(f64, f64)],
) -> Plot {
    Plot {
        title: "Best learning rate vs batch size".to_owned(),
        x_label: "batch size B".to_owned(),
        y_label: "best learning rate".to_owned(),
        log_x: true,
        log_y: true,
        lines: vec![
            series("linear rule η₀·B/B₀", linear_rule_line).dashed(),
            series("ε_max/(1 + B_noise/B)", eps_opt_curve),
        ],
        scatter: vec![series("measured best rate", measured)],
        ..Plot::default()
    }
}

/// Measured `B_simple` over training, one line per batch size: `per_batch` holds `(B, [(step,
/// B_simple)])`; `exact` the closed-form values where the task has them, drawn dashed in the
/// colour of the same batch's measured line; `b_crit` the fitted critical batch as a dashed
/// horizontal line. Batch sizes are drawn in increasing order, coloured along the sequential
/// palette. The `y` axis is logarithmic: negative estimates (a small `|G|²` against the noise)
/// are not drawn.
pub fn b_simple_over_training(
    per_batch: &PerBatch,
    exact: Option<&PerBatch>,
    b_crit: Option<f64>,
) -> Plot {
    let exact = exact.unwrap_or_default();
    let mut batches: Vec<u64> = per_batch.iter().chain(exact).map(|(b, _)| *b).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut lines = Vec::new();
    for b in batches {
        let group = format!("B={b}");
        let measured = per_batch.iter().filter(|(m, _)| *m == b);
        lines.extend(measured.map(|(_, p)| series(group.clone(), p).in_group(&group)));
        let exact_b = exact.iter().filter(|(e, _)| *e == b);
        lines.extend(
            exact_b.map(|(_, p)| series(format!("B={b} exact"), p).in_group(&group).dashed()),
        );
    }
    Plot {
        title: "Gradient noise scale over training".to_owned(),
        x_label: "step".to_owned(),
        y_label: "B_simple = tr Σ / |G|²".to_owned(),
        log_y: true,
        lines,
        hlines: b_crit
            .map(|b| (b, format!("B_crit = {}", fmt_num(b))))
            .into_iter()
            .collect(),
        palette: Palette::Sequential,
        ..Plot::default()
    }
}

/// One trial's nested-prefix probe: `(B, [(b, mean |g_b|²)], |G|², tr Σ)`.
pub type NestedCurve = (u64, Vec<(f64, f64)>, f64, f64);

/// The gradient noise at many batch sizes at once, from the noise probe's nested prefixes
/// (log-log): per trial ([`NestedCurve`]) the measured points, and the fitted
/// `|G|² + tr Σ/b` as a line in the same colour. Where the line bends from `tr Σ/b` to the
/// flat `|G|²` is `b = B_simple`. Trials are drawn in increasing `B`, coloured along the
/// sequential palette.
pub fn nested_noise(trials: &[NestedCurve]) -> Plot {
    let mut trials: Vec<&NestedCurve> = trials.iter().collect();
    trials.sort_by_key(|t| t.0);
    let mut lines = Vec::new();
    let mut scatter = Vec::new();
    for (batch, points, g2, trace_sigma) in trials {
        let group = format!("B={batch}");
        scatter.push(series(format!("B={batch}: measured"), points).in_group(&group));
        let fit: Vec<(f64, f64)> = points
            .iter()
            .map(|&(b, _)| (b, g2 + trace_sigma / b))
            .collect();
        lines.push(
            series(
                format!("B={batch}: fit, B_simple {}", fmt_num(trace_sigma / g2)),
                &fit,
            )
            .in_group(group),
        );
    }
    Plot {
        title: "Nested prefixes at the target".to_owned(),
        x_label: "prefix size b (samples)".to_owned(),
        y_label: "mean |g_b|²".to_owned(),
        log_x: true,
        log_y: true,
        lines,
        scatter,
        palette: Palette::Sequential,
        ..Plot::default()
    }
}

/// What the horizontal axis of [`loss_curves`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossAxis {
    /// Steps (updates): a linear axis.
    Steps,
    /// Samples consumed: a log axis, as samples span decades across batch sizes.
    Samples,
}

/// Loss curves, one per batch size, in increasing `B` along the sequential palette:
/// `per_batch` holds `(B, [(x, loss)])` with `x` in the unit `x` names (a step row's `step` or
/// `samples`) and the loss a row's evaluation loss, or where a row has none its training loss.
/// The axis says so: the training loss is the mean over the step's minibatch, an unbiased
/// estimate of the population loss that for the noisy quadratic model can be negative (the
/// log loss axis does not draw those points, and the note under the plot counts them).
pub fn loss_curves(per_batch: &PerBatch, x: LossAxis) -> Plot {
    let (title, x_label, log_x) = match x {
        LossAxis::Steps => ("Loss vs steps", "step", false),
        LossAxis::Samples => ("Loss vs samples", "samples", true),
    };
    let mut curves: Vec<&(u64, Vec<(f64, f64)>)> = per_batch.iter().collect();
    curves.sort_by_key(|c| c.0);
    Plot {
        title: title.to_owned(),
        x_label: x_label.to_owned(),
        y_label: LOSS_CURVES_Y.to_owned(),
        log_x,
        log_y: true,
        lines: curves
            .into_iter()
            .map(|(b, points)| series(format!("B={b}"), points))
            .collect(),
        palette: Palette::Sequential,
        ..Plot::default()
    }
}

/// The loss axis of [`loss_curves`]: evaluation loss, else the minibatch training estimate.
const LOSS_CURVES_Y: &str = "eval loss (else minibatch train loss)";

/// Sharpness against the stability thresholds over training (log `y`): `sharpness` as
/// `(step, λ_max)`, `two_over_eta` as `(step, 2/η_t)`, and for heavy ball
/// `two_one_plus_mu_over_eta` as `(step, 2(1+μ)/η_t)`. Edge of stability shows as sharpness
/// rising to the threshold and hovering there.
pub fn sharpness_vs_two_over_lr(
    sharpness: &[(f64, f64)],
    two_over_eta: &[(f64, f64)],
    two_one_plus_mu_over_eta: Option<&[(f64, f64)]>,
) -> Plot {
    let mut lines = vec![
        series("sharpness λ_max", sharpness),
        series("2/η", two_over_eta),
    ];
    lines.extend(two_one_plus_mu_over_eta.map(|p| series("2(1+μ)/η", p)));
    Plot {
        title: "Sharpness and the stability threshold".to_owned(),
        x_label: "step".to_owned(),
        y_label: "λ_max, threshold".to_owned(),
        log_y: true,
        lines,
        ..Plot::default()
    }
}

/// The learning-rate finder's curves, log-log: `curves` holds `(label, [(rate, loss)])` (each
/// seed's loss after the step at that rate, raw and smoothed), `marks` the rates to draw as
/// dashed vertical lines with their legend text (`α*`, the edge that the power iteration's
/// `λ_max` predicts, the suggested rate).
pub fn loss_vs_rate(curves: &[(String, Vec<(f64, f64)>)], marks: &[(f64, String)]) -> Plot {
    Plot {
        title: "Loss vs learning rate (exponential ramp)".to_owned(),
        x_label: "learning rate η (the step's)".to_owned(),
        y_label: "loss after the step".to_owned(),
        log_x: true,
        log_y: true,
        lines: curves
            .iter()
            .map(|(label, points)| series(label.clone(), points))
            .collect(),
        vlines: marks.to_vec(),
        ..Plot::default()
    }
}

/// The warmup stability map from trials `(warmup steps, peak rate, final loss)`, where a
/// `None` (or non-finite) final loss means the run diverged. Columns are the distinct warmups
/// and rows the distinct peak rates, both ascending (highest rate on top); replicates of a cell
/// average their final losses, and a cell is diverged if any replicate diverged. Colour is by
/// log final loss; combinations never run stay blank.
pub fn warmup_map(trials: &[(u64, f64, Option<f64>)]) -> Heatmap {
    let mut warmups: Vec<u64> = trials.iter().map(|t| t.0).collect();
    warmups.sort_unstable();
    warmups.dedup();
    let mut rates: Vec<f64> = trials
        .iter()
        .map(|t| t.1)
        .filter(|r| r.is_finite())
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let cells = rates
        .iter()
        .map(|&rate| {
            warmups
                .iter()
                .map(|&warmup| {
                    let losses: Vec<Option<f64>> = trials
                        .iter()
                        .filter(|t| t.0 == warmup && t.1 == rate)
                        .map(|t| t.2.filter(|l| l.is_finite()))
                        .collect();
                    match losses.iter().copied().collect::<Option<Vec<f64>>>() {
                        _ if losses.is_empty() => None,
                        Some(finite) => Some(finite.iter().sum::<f64>() / finite.len() as f64),
                        None => Some(f64::INFINITY),
                    }
                })
                .collect()
        })
        .collect();
    Heatmap {
        title: "Warmup stability map".to_owned(),
        x_label: "warmup steps T_w".to_owned(),
        y_label: "peak learning rate".to_owned(),
        x_ticks: warmups.iter().map(u64::to_string).collect(),
        y_ticks: rates.iter().map(|&r| fmt_num(r)).collect(),
        cells,
        value_label: "final loss".to_owned(),
        log_color: true,
    }
}

/// The terminal summary of trials, one row each in the given order: batch, rate, seed, status,
/// steps, samples, measured and exact `B_simple`, exact `B_noise`, final loss (`-` where absent).
/// A negative measured `B_simple` (the unbiased estimate of `|G|²` came out below zero) is
/// marked †, and the table's footnote says how to read it.
pub fn trials_table(records: &[TrialRecord]) -> Table {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), fmt_num);
    let measured = |v: Option<f64>| match v {
        Some(b) if b < 0.0 => NEGATIVE_B_SIMPLE.mark_cell(&fmt_num(b)),
        v => opt(v),
    };
    let status = |r: &TrialRecord| {
        serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    Table {
        header: [
            "B",
            "lr",
            "seed",
            "status",
            "steps",
            "samples",
            "B_simple",
            "B_simple exact",
            "B_noise exact",
            "final loss",
        ]
        .map(String::from)
        .to_vec(),
        rows: records
            .iter()
            .map(|r| {
                vec![
                    r.batch.to_string(),
                    fmt_num(r.lr),
                    r.seed.to_string(),
                    status(r),
                    r.steps.to_string(),
                    r.samples.to_string(),
                    measured(r.b_simple),
                    opt(r.b_simple_exact),
                    opt(r.b_noise_exact),
                    opt(r.final_loss),
                ]
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use batchlab_core::train::Status;

    use super::*;
    use crate::report::plot::tests::{
        assert_balanced, circles_filled, dashed_strokes, polylines, strokes_of_polylines_with,
        texts,
    };
    use crate::report::{Section, heatmap_svg, html_page, svg, terminal_table};

    /// A deterministic wobble in `[1 - a, 1 + a]`, standing in for measurement noise.
    fn wobble(i: f64, a: f64) -> f64 {
        1.0 + a * (i * 12.9898).sin()
    }

    fn batches() -> Vec<f64> {
        (0..=16).map(|k| 2f64.powi(k)).collect()
    }

    /// Every plot kind on synthetic data shaped like the science: `S = S_min(1 + B_crit/B)`,
    /// `ε_opt = ε_max/(1 + B_noise/B)`, sharpness rising to `2/η` during warmup.
    fn example_sections() -> Vec<Section> {
        let (s_min, b_crit) = (120.0, 512.0);
        let steps = |b: f64| s_min * (1.0 + b_crit / b);
        let dense: Vec<f64> = (0..=160)
            .map(|i| 10f64.powf(i as f64 / 10.0 * 4.816 / 16.0))
            .collect();
        let measured: Vec<(f64, f64)> = batches()
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, steps(b) * wobble(i as f64, 0.12)))
            .collect();
        let fitted: Vec<(f64, f64)> = dense.iter().map(|&b| (b, steps(b))).collect();
        let theory: Vec<(f64, f64)> = dense
            .iter()
            .map(|&b| (b, 0.9 * s_min * (1.0 + 400.0 / b)))
            .collect();
        let samples = |pts: &[(f64, f64)]| pts.iter().map(|&(b, s)| (b, b * s)).collect::<Vec<_>>();

        let eps = |b: f64| 0.8 / (1.0 + 300.0 / b);
        let rate_measured: Vec<(f64, f64)> = batches()
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, eps(b) * wobble(i as f64 + 3.0, 0.2)))
            .collect();
        let linear: Vec<(f64, f64)> = dense
            .iter()
            .map(|&b| (b, 0.8 / 300.0 * b))
            .filter(|p| p.1 < 3.0)
            .collect();
        let eps_curve: Vec<(f64, f64)> = dense.iter().map(|&b| (b, eps(b))).collect();

        let per_batch_b = |exact: bool| -> Vec<(u64, Vec<(f64, f64)>)> {
            [16u64, 256, 4096]
                .iter()
                .map(|&b| {
                    let pts = (0..400)
                        .map(|t| {
                            let t = f64::from(t) * 5.0;
                            let smooth = 40.0 * (1.0 + t / 80.0).powf(0.9);
                            let noise = if exact {
                                1.0
                            } else {
                                wobble(t + b as f64, 0.25 / (b as f64).log2().max(1.0))
                            };
                            (t, smooth * noise)
                        })
                        .collect();
                    (b, pts)
                })
                .collect()
        };
        let measured_b = per_batch_b(false);
        let exact_b = per_batch_b(true);

        let losses = |x: LossAxis| -> Vec<(u64, Vec<(f64, f64)>)> {
            [16u64, 64, 256, 1024, 4096]
                .iter()
                .map(|&b| {
                    let pts = (0..300)
                        .map(|t| {
                            let t = f64::from(t) * 10.0;
                            let speed = 1.0 / (1.0 + b_crit / b as f64);
                            let loss = 0.01
                                + 2.0 * (-t * speed / 150.0).exp()
                                + 0.02 / (b as f64).sqrt() * wobble(t, 0.5);
                            let xv = match x {
                                LossAxis::Steps => t,
                                LossAxis::Samples => (t + 1.0) * b as f64,
                            };
                            (xv, loss)
                        })
                        .collect();
                    (b, pts)
                })
                .collect()
        };

        let (warmup_steps, peak) = (200.0, 0.1);
        let eta = |t: f64| peak * ((t + 1.0) / warmup_steps).min(1.0);
        let sharp: Vec<(f64, f64)> = (0..100)
            .map(|i| {
                let t = f64::from(i) * 10.0;
                (t, (5.0 + 0.08 * t).min(2.0 / eta(t) * wobble(t, 0.03)))
            })
            .collect();
        let two_over: Vec<(f64, f64)> = (0..1000)
            .map(|t| (f64::from(t), 2.0 / eta(f64::from(t))))
            .collect();
        let two_mu: Vec<(f64, f64)> = two_over.iter().map(|&(t, v)| (t, 1.9 * v)).collect();

        let rates = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0];
        let mut trials = Vec::new();
        for &w in &[0u64, 10, 30, 100, 300, 1000] {
            for (i, &r) in rates.iter().enumerate() {
                if w == 30 && i == 2 {
                    continue; // never run: a blank cell
                }
                let limit = 0.25 * (1.0 + (1.0 + w as f64).log10());
                let loss =
                    (r < limit).then(|| 0.02 + 0.5 * (-r * 30.0).exp() + 0.01 * (w as f64 / 100.0));
                trials.push((w, r, loss));
            }
        }

        let records: Vec<TrialRecord> = batches()
            .iter()
            .take(6)
            .map(|&b| TrialRecord {
                batch: b as u64 * 64,
                lr: eps(b * 64.0),
                seed: 0,
                seeds: 1,
                status: if b < 30.0 {
                    Status::Complete
                } else {
                    Status::Infeasible
                },
                steps: steps(b * 64.0) as u64,
                samples: (b * 64.0 * steps(b * 64.0)) as u64,
                b_simple: Some(480.0 + b),
                b_simple_se: None,
                b_simple_ema: None,
                b_simple_nested: None,
                b_simple_nested_se: None,
                b_simple_exact: None,
                b_noise_exact: Some(300.0),
                final_loss: (b < 30.0).then_some(0.0099),
                held_out: false,
                selection_steps: None,
                crossing: None,
                group_crossings: Vec::new(),
            })
            .collect();

        let (w, h) = (640, 420);
        vec![
            Section {
                title: "Critical batch size".into(),
                text:
                    "Steps and samples to reach the target, each batch size at its best rate.\n\n\
                       Below B_crit doubling B nearly halves S; above it the gains vanish."
                        .into(),
                figures: vec![
                    svg(
                        &steps_vs_batch(&measured, &fitted, Some(b_crit), Some(&theory)),
                        w,
                        h,
                    ),
                    svg(
                        &samples_vs_batch(
                            &samples(&measured),
                            &samples(&fitted),
                            Some(b_crit),
                            Some(&samples(&theory)),
                        ),
                        w,
                        h,
                    ),
                    svg(
                        &best_rate_vs_batch(&rate_measured, &linear, &eps_curve),
                        w,
                        h,
                    ),
                ],
                table: Some(trials_table(&records)),
            },
            Section {
                title: "Noise scale and loss curves".into(),
                text: "Measured B_simple (ratio of EMAs) against the closed form.".into(),
                figures: vec![
                    svg(
                        &b_simple_over_training(&measured_b, Some(&exact_b), Some(b_crit)),
                        w,
                        h,
                    ),
                    svg(
                        &loss_curves(&losses(LossAxis::Steps), LossAxis::Steps),
                        w,
                        h,
                    ),
                    svg(
                        &loss_curves(&losses(LossAxis::Samples), LossAxis::Samples),
                        w,
                        h,
                    ),
                ],
                table: None,
            },
            Section {
                title: "Stability and warmup".into(),
                text: "Sharpness rises to 2/η as warmup ends (edge of stability).".into(),
                figures: vec![
                    svg(
                        &sharpness_vs_two_over_lr(&sharp, &two_over, Some(&two_mu)),
                        w,
                        h,
                    ),
                    heatmap_svg(&warmup_map(&trials), w, h),
                    svg(
                        &Plot {
                            title: "An empty plot".into(),
                            ..Plot::default()
                        },
                        w,
                        h,
                    ),
                ],
                table: None,
            },
        ]
    }

    #[test]
    fn example_page_renders_every_plot_kind() {
        let sections = example_sections();
        let page = html_page(
            "batchlab report (example)",
            "Synthetic data shaped like a batch-size study.",
            &sections,
        );
        for figure in sections.iter().flat_map(|s| &s.figures) {
            assert!(figure.starts_with("<svg") && !figure.contains("plot failed"));
            assert!(page.contains(figure.trim()));
        }
        let path = std::env::temp_dir().join("report-example.html");
        std::fs::write(&path, &page).expect("write the example page");
        assert!(
            terminal_table(sections[0].table.as_ref().expect("a table")).contains("INFEASIBLE")
        );
    }

    #[test]
    fn steps_plot_is_log_log_with_b_crit_and_theory() {
        let plot = steps_vs_batch(
            &[(1.0, 100.0)],
            &[(1.0, 90.0), (2.0, 60.0)],
            Some(512.0),
            Some(&[(1.0, 80.0)]),
        );
        assert!(plot.log_x && plot.log_y);
        assert_eq!(plot.lines.len(), 2);
        assert_eq!(plot.scatter[0].points, [(1.0, 100.0)]);
        assert_eq!(plot.vlines, [(512.0, "B_crit = 512".to_owned())]);
        let without = samples_vs_batch(&[], &[], None, None);
        assert!(without.vlines.is_empty() && without.lines.len() == 1);
    }

    #[test]
    fn b_simple_pairs_each_batch_with_its_exact_curve() {
        let measured = vec![(16, vec![(0.0, 1.0)]), (64, vec![(0.0, 2.0)])];
        let exact = vec![(64, vec![(0.0, 2.5)]), (256, vec![(0.0, 3.0)])];
        let plot = b_simple_over_training(&measured, Some(&exact), None);
        let labels: Vec<&str> = plot.lines.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["B=16", "B=64", "B=64 exact", "B=256 exact"]);
    }

    #[test]
    fn warmup_map_lays_trials_on_a_grid() {
        let trials = [
            (100, 0.1, Some(0.5)),
            (100, 0.1, Some(0.3)),
            (0, 0.1, Some(0.2)),
            (0, 1.0, None),
            (100, 1.0, Some(0.4)),
            (100, 1.0, Some(f64::NAN)),
        ];
        let map = warmup_map(&trials);
        assert_eq!(map.x_ticks, ["0", "100"]);
        assert_eq!(map.y_ticks, ["0.1", "1"]);
        assert_eq!(map.cells[0], [Some(0.2), Some(0.4)], "replicates average");
        assert!(
            map.cells[1].iter().all(|c| c.is_some_and(f64::is_infinite)),
            "any diverged replicate"
        );
        let sparse = warmup_map(&[(0, 0.1, Some(1.0)), (10, 0.3, Some(1.0))]);
        assert_eq!(sparse.cells, [vec![Some(1.0), None], vec![None, Some(1.0)]]);
    }

    #[test]
    fn loss_curves_draw_one_line_per_batch() {
        let per_batch: Vec<(u64, Vec<(f64, f64)>)> = [8u64, 32, 128]
            .iter()
            .map(|&b| {
                (
                    b,
                    (1..=20)
                        .map(|t| (f64::from(t), 1.0 / f64::from(t)))
                        .collect(),
                )
            })
            .collect();
        let plot = loss_curves(&per_batch, LossAxis::Samples);
        assert!(plot.log_x && plot.log_y && plot.x_label == "samples");
        let out = svg(&plot, 500, 300);
        assert_eq!(polylines(&out).iter().filter(|l| l.len() == 20).count(), 3);
    }

    #[test]
    fn loss_vs_rate_is_log_log_with_its_marks() {
        let curve = vec![(1e-3, 2.0), (1e-2, 1.0), (1e-1, 0.5), (1.0, 40.0)];
        let p = loss_vs_rate(
            &[("loss".to_owned(), curve.clone())],
            &[(0.1, "α* = 0.1".to_owned()), (0.2, "2/λ_max".to_owned())],
        );
        assert!(p.log_x && p.log_y);
        assert_eq!(p.lines, [Series::new("loss", curve)]);
        assert_eq!(p.vlines.len(), 2);
        let svg = svg(&p, 640, 400);
        assert!(
            svg.contains("α* = 0.1") && svg.contains("2/λ_max"),
            "legend"
        );
    }

    /// An INCOMPLETE trial of batch `batch` that measured `b_simple`.
    fn record(batch: u64, b_simple: Option<f64>) -> TrialRecord {
        TrialRecord {
            batch,
            lr: 0.05,
            seed: 3,
            seeds: 1,
            status: Status::Incomplete,
            steps: 1000,
            samples: batch * 1000,
            b_simple,
            b_simple_se: None,
            b_simple_ema: None,
            b_simple_nested: None,
            b_simple_nested_se: None,
            b_simple_exact: None,
            b_noise_exact: Some(98.0),
            final_loss: None,
            held_out: false,
            selection_steps: None,
            crossing: None,
            group_crossings: Vec::new(),
        }
    }

    #[test]
    fn trials_table_names_statuses_as_the_records_do() {
        let table = trials_table(&[record(256, Some(123.456))]);
        assert_eq!(
            table.rows[0],
            [
                "256",
                "0.05",
                "3",
                "INCOMPLETE",
                "1000",
                "256000",
                "123.5",
                "-",
                "98",
                "-"
            ]
        );
    }

    #[test]
    fn negative_b_simple_is_marked_and_explained() {
        let records = [
            record(2, Some(-58.82)),
            record(4, Some(310.0)),
            record(8, None),
        ];
        let table = trials_table(&records);
        let column = table
            .header
            .iter()
            .position(|h| h == "B_simple")
            .expect("column");
        let cell = &table.rows[0][column];
        assert!(cell.starts_with("-58.82") && cell != "-58.82", "{cell}");
        assert_eq!(table.rows[1][column], "310", "positive values unmarked");
        assert_eq!(table.rows[2][column], "-", "absent values unmarked");

        let page = html_page(
            "t",
            "",
            &[Section {
                title: "Every trial".into(),
                table: Some(table.clone()),
                ..Section::default()
            }],
        );
        // The explanation is in the table, once, and says how to read the value.
        let table_html = &page[page.find("<table>").expect("a table")..];
        let explanation = "read it as very large";
        assert_eq!(
            table_html.matches(explanation).count(),
            1 + 1,
            "footnote, title"
        );
        let footnote = &table_html[table_html.find("<tfoot>").expect("a footnote")..];
        assert!(footnote.contains("below zero") && footnote.contains(explanation));
        assert!(footnote.contains("colspan=\"10\""));
        assert!(table_html.contains(&format!("\">{}</td>", escape_mark(cell))));

        let text = terminal_table(&table);
        let last = text.lines().last().expect("lines");
        assert!(last.contains(explanation), "{text}");
        // The marked value still lines up with the numbers above and below it.
        let row = text.lines().nth(2).expect("first row");
        let next = text.lines().nth(3).expect("second row");
        let end = |line: &str, value: &str| {
            line.find(value)
                .map(|i| line[..i].chars().count() + value.chars().count())
        };
        assert_eq!(end(row, cell), end(next, "310"), "{text}");

        // Without a negative value: no note.
        let plain = trials_table(&records[1..]);
        let page = html_page(
            "t",
            "",
            &[Section {
                table: Some(plain.clone()),
                ..Section::default()
            }],
        );
        assert!(!page.contains(explanation) && !page.contains("<tfoot>"));
        assert!(!terminal_table(&plain).contains(explanation));
    }

    /// `cell` as the page writes it.
    fn escape_mark(cell: &str) -> String {
        crate::report::html::escape(cell)
    }

    /// `(B, [(x, loss)])` curves, 20 points each, for the batch sizes given.
    fn curves(batches: &[u64]) -> Vec<(u64, Vec<(f64, f64)>)> {
        batches
            .iter()
            .map(|&b| {
                let pts = (1..=20)
                    .map(|t| (f64::from(t), 1.0 / f64::from(t) + 1.0 / b as f64))
                    .collect();
                (b, pts)
            })
            .collect()
    }

    #[test]
    fn eleven_batch_sizes_get_eleven_ordered_colours() {
        // The sweep's batch sizes 1 … 1024, given out of order.
        let mut batches: Vec<u64> = (0..=10).map(|k| 1u64 << k).collect();
        batches.reverse();
        batches.swap(3, 7);
        for axis in [LossAxis::Steps, LossAxis::Samples] {
            let plot = loss_curves(&curves(&batches), axis);
            let labels: Vec<&str> = plot.lines.iter().map(|s| s.label.as_str()).collect();
            assert_eq!(labels[0], "B=1");
            assert_eq!(labels[10], "B=1024");
            let out = svg(&plot, 720, 440);
            let strokes = strokes_of_polylines_with(&out, 20);
            assert_eq!(strokes.len(), 11);
            let mut distinct = strokes.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 11, "{strokes:?}");
            assert_ne!(strokes[0], strokes[10], "B = 1 and B = 1024");
            // Ordered: each colour lighter than the one before (viridis rises in lightness).
            let lightness = |c: &str| {
                let v = |i: usize| u32::from_str_radix(&c[i..i + 2], 16).expect("hex");
                v(1) * 299 + v(3) * 587 + v(5) * 114
            };
            assert!(
                strokes
                    .windows(2)
                    .all(|w| lightness(&w[0]) < lightness(&w[1])),
                "{strokes:?}"
            );
        }
    }

    #[test]
    fn loss_curves_say_which_loss_they_show() {
        let plot = loss_curves(&curves(&[8]), LossAxis::Steps);
        let axis = plot.y_label.to_lowercase();
        assert!(
            axis.contains("eval") && axis.contains("minibatch"),
            "{axis}"
        );
        assert!(!plot.title.to_lowercase().contains("training loss"));
    }

    #[test]
    fn nested_prefix_dots_and_their_fit_share_a_colour() {
        // Three probes with different numbers of prefix sizes, so each fit line is known by
        // its length.
        let probe = |batch: u64, sizes: u32, g2: f64, trace: f64| -> NestedCurve {
            let pts = (0..sizes)
                .map(|k| {
                    let b = f64::from(1u32 << k);
                    (b, (g2 + trace / b) * wobble(b, 0.05))
                })
                .collect();
            (batch, pts, g2, trace)
        };
        let trials = [
            probe(1024, 6, 0.01, 8.0),
            probe(1, 4, 0.02, 5.0),
            probe(32, 5, 0.015, 7.0),
        ];
        let plot = nested_noise(&trials);
        let out = svg(&plot, 720, 440);
        assert_balanced(&out);
        let mut colours = Vec::new();
        for n in [4, 5, 6] {
            let fit = strokes_of_polylines_with(&out, n);
            assert_eq!(fit.len(), 1, "one fit line of {n} points");
            assert_eq!(
                circles_filled(&out, &fit[0]),
                n + 1,
                "the {n} dots and the legend marker in the fit's colour {}",
                fit[0]
            );
            colours.push(fit[0].clone());
        }
        colours.dedup();
        assert_eq!(colours.len(), 3, "each probe its own colour");
        // The legend keeps each probe's dots and fit together, smallest B first.
        let legend: Vec<String> = texts(&out)
            .into_iter()
            .filter(|t| t.starts_with("B="))
            .collect();
        let batches: Vec<&str> = legend
            .iter()
            .map(|t| t.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(batches, ["B=1", "B=1", "B=32", "B=32", "B=1024", "B=1024"]);
    }

    #[test]
    fn exact_b_simple_is_dashed_in_its_batch_colour() {
        let steps = |f: f64| -> Vec<(f64, f64)> {
            (0..50)
                .map(|t| (f64::from(t), f * (1.0 + f64::from(t) / 10.0)))
                .collect()
        };
        // B = 1 measured nothing (the two-batch estimate needs two microbatches).
        let measured = vec![(1, vec![]), (16, steps(100.0)), (256, steps(40.0))];
        let exact = vec![(256, steps(45.0)), (1, steps(300.0)), (16, steps(110.0))];
        let plot = b_simple_over_training(&measured, Some(&exact), Some(500.0));
        let out = svg(&plot, 720, 440);
        let texts = texts(&out);
        assert!(
            !texts.iter().any(|t| t == "B=1"),
            "nothing measured at B = 1"
        );
        assert!(texts.iter().any(|t| t == "B=1 exact"));
        let solid = strokes_of_polylines_with(&out, 50);
        assert_eq!(
            solid.len(),
            2,
            "the measured lines; the exact ones are dashed"
        );
        let dashed = dashed_strokes(&out);
        assert_eq!(
            dashed.len(),
            3 + 1,
            "three exact curves and B_crit: {dashed:?}"
        );
        for colour in &solid {
            assert!(
                dashed.contains(colour),
                "{colour}: the exact curve in the measured one's colour"
            );
        }
        assert_ne!(solid[0], solid[1]);
    }
}
