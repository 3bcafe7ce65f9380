//! `batchlab reproduce`: published claims about batch size, each with the experiment that
//! tests it and a rule, written before any run, that turns the measured figures into a
//! verdict (docs/science.md#reproduce). The rules are plain functions of the figures, so a
//! test can drive each to every verdict; the binary runs the experiments and hands the
//! figures here.

use serde::{Deserialize, Serialize};

use crate::report::{Plot, Section, Series, Table, html_page, svg};

/// What a rule concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The measured figure lies within the rule's tolerance of the claim.
    Holds,
    /// The measured figure lies outside it, measured where the rule can judge.
    DoesNotHold,
    /// The run cannot decide (a fit outside its measured range, an interval that straddles
    /// the tolerance, a figure that could not be measured).
    Inconclusive,
}

impl Verdict {
    /// The verdict as the table prints it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Holds => "holds",
            Self::DoesNotHold => "does not hold",
            Self::Inconclusive => "inconclusive",
        }
    }
}

/// One row of a verdict table: a claim, what was published, what was measured, the rule's
/// tolerance, the verdict and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The claim, in a line.
    pub claim: String,
    /// The published figure or statement.
    pub published: String,
    /// The measured figure.
    pub measured: String,
    /// Its interval, from a procedure whose coverage was measured, or why there is none.
    pub interval: String,
    /// The rule's tolerance.
    pub tolerance: String,
    /// What the rule concluded.
    pub verdict: Verdict,
    /// Why, in a line.
    pub why: String,
}

/// An entry of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its name on the command line.
    pub name: &'static str,
    /// The claim, in a line.
    pub claim: &'static str,
    /// Where it was published.
    pub source: &'static str,
    /// The rule that decides the verdict, fixed before the run.
    pub rule: &'static str,
    /// What the default form runs, and its wall time on 2 cores.
    pub default_form: &'static str,
    /// What `--quick` runs (and what it cuts), and its wall time on 2 cores.
    pub quick_form: &'static str,
}

/// The factor within which `B_crit` must meet the noise scale for `mccandlish` (an order of
/// magnitude either way; docs/science.md#reproduce).
pub const NOISE_FACTOR: f64 = 10.0;

/// The catalog, in the order `--list` prints it.
pub const CATALOG: &[Entry] = &[
    Entry {
        name: "mccandlish",
        claim: "The critical batch size B_crit is predicted by the gradient noise scale (B_crit ≈ \
            B_noise, estimated by B_simple), and grows as the target loss falls",
        source: "McCandlish, Kaplan, Amodei et al. 2018, An Empirical Model of Large-Batch \
             Training, arXiv:1812.06162 (§2.2–2.3, §3)",
        rule: "Per task, B_crit/B_simple (B_simple measured near the target) within a factor of 10: \
           holds when every task is, does not hold when a task whose fit lies inside its \
           measured batch sizes is outside, inconclusive otherwise. Growth: B_crit over three \
           falling targets; holds when each step up is beyond both 95 % intervals, does not \
           hold when one step down is, inconclusive otherwise or when a fit lies outside its \
           measured batch sizes.",
        default_form: "sweeps (tuned rate, 4 selection + 16 held-out seeds) of the NQM at 10 %, 3 % \
                   and 1 % of the initial loss, and at one target each of linear regression \
                   (d = 20), logistic regression, an MLP 32-32-4 on teacher data and an MLP \
                   64-32-10 on the digits data (12-rate grids); about 2 min",
        quick_form: "the NQM alone (no cross-task check) at 30 %, 10 % and 3 % of the initial loss, \
                 batch sizes 4 to 1024 (the long small-batch runs cut); about 20 s",
    },
    Entry {
        name: "smith-batch-for-decay",
        claim: "Increasing the batch by a factor instead of decaying the rate by it reaches the same \
            loss against samples, in fewer parameter updates",
        source: "Smith, Kindermans, Ying & Le 2018, Don't Decay the Learning Rate, Increase the \
             Batch Size, ICLR (§5.1: the rate decayed, or the batch grown, by a factor of 5 at \
             the same epochs)",
        rule: "Runs per seed: the rate decayed ×1/5 at two sample milestones (decay), the batch \
           grown ×5 at the same milestones with the rate constant (grow), and neither \
           (control), all over the same samples. Same loss: the median over seeds of the paired \
           ratio of final eval losses grow/decay within [0.9, 1.1] holds, outside does not \
           hold; inconclusive when a run did not finish or when the decay does not matter \
           (median control/decay below 1.1: then no schedule can be told apart). Fewer \
           updates: grow's steps below decay's, equal to the schedule's count.",
        default_form: "an MLP 32-32-4 on teacher data (16 000 samples, 20 % of labels flipped: a \
                   noise floor the rate decay matters for), batch 32 → 160 → 800 or rate \
                   1.0 → 0.2 → 0.04 at 1 and 2 epochs, 3 epochs, 8 seeds (24 runs); about 3 s",
        quick_form: "4 seeds (12 runs); about 1 s",
    },
];

/// The entry called `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// The verdict of an entry from its checks: does not hold when one check does not hold,
/// inconclusive when one is inconclusive (and none fails), holds when all hold.
pub fn overall(checks: &[Check]) -> Verdict {
    if checks.iter().any(|c| c.verdict == Verdict::DoesNotHold) {
        Verdict::DoesNotHold
    } else if checks.is_empty() || checks.iter().any(|c| c.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Holds
    }
}

/// A sweep's critical batch size at its target, as `mccandlish` reads it from analysis.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriticalPoint {
    /// The task (its name, or a label such as "mlp on digits").
    pub task: String,
    /// The target loss.
    pub target: f64,
    /// The fitted `B_crit`.
    pub b_crit: f64,
    /// Its 95 % interval, where the sweep could give one (coverage measured by simulation,
    /// docs/science.md#coverage).
    pub interval: Option<(f64, f64)>,
    /// Why there is no interval.
    pub no_interval: Option<String>,
    /// The fit's knee lies inside the measured batch sizes.
    pub in_range: bool,
    /// The median `B_simple` measured at the end of the best trials (near the target).
    pub b_simple: Option<f64>,
}

impl CriticalPoint {
    fn interval_text(&self) -> String {
        match (self.interval, &self.no_interval) {
            (Some((lo, hi)), _) => format!("{lo:.0}–{hi:.0}"),
            (None, Some(why)) => format!("none: {why}"),
            (None, None) => "none".to_owned(),
        }
    }
}

/// `mccandlish`'s first rule: `B_crit / B_simple` within [`NOISE_FACTOR`] on every task.
pub fn b_crit_against_noise(points: &[CriticalPoint]) -> Check {
    let mut measured = Vec::new();
    let mut outside = Vec::new();
    let mut undecided = Vec::new();
    for p in points {
        match p.b_simple.filter(|b| b.is_finite() && *b > 0.0) {
            Some(bs) => {
                let r = p.b_crit / bs;
                measured.push(format!("{}: {:.0}/{:.0} = {:.2}", p.task, p.b_crit, bs, r));
                let within = (1.0 / NOISE_FACTOR..=NOISE_FACTOR).contains(&r);
                if !p.in_range {
                    undecided.push(format!("{}: B_crit outside its measured sizes", p.task));
                } else if !within {
                    outside.push(format!("{} ({r:.2})", p.task));
                }
            }
            None => {
                measured.push(format!("{}: B_simple not measured", p.task));
                undecided.push(format!("{}: no B_simple", p.task));
            }
        }
    }
    let (verdict, why) = if !outside.is_empty() {
        (
            Verdict::DoesNotHold,
            format!("outside the factor: {}", outside.join(", ")),
        )
    } else if !undecided.is_empty() || points.is_empty() {
        (
            Verdict::Inconclusive,
            if points.is_empty() {
                "no task was measured".to_owned()
            } else {
                undecided.join("; ")
            },
        )
    } else {
        (
            Verdict::Holds,
            format!(
                "every one of {} task{} within the factor",
                points.len(),
                if points.len() == 1 { "" } else { "s" }
            ),
        )
    };
    Check {
        claim: "B_crit ≈ B_noise, estimated by B_simple near the target".to_owned(),
        published: "B_crit ≈ B_noise (§2.3), with B_simple standing in for B_noise (§2.2)"
            .to_owned(),
        measured: measured.join("; "),
        interval: points
            .iter()
            .map(|p| format!("{}: B_crit {}", p.task, p.interval_text()))
            .collect::<Vec<_>>()
            .join("; "),
        tolerance: format!("B_crit/B_simple in [1/{NOISE_FACTOR:.0}, {NOISE_FACTOR:.0}]"),
        verdict,
        why,
    }
}

/// `mccandlish`'s second rule: on one task, `B_crit` grows at every fall of the target, each
/// step beyond both intervals.
pub fn b_crit_grows_as_target_falls(points: &[CriticalPoint]) -> Check {
    let mut p: Vec<&CriticalPoint> = points.iter().collect();
    p.sort_by(|a, b| b.target.total_cmp(&a.target));
    let measured = p
        .iter()
        .map(|q| format!("{:.3e}: {:.0}", q.target, q.b_crit))
        .collect::<Vec<_>>()
        .join(", ");
    let interval = p
        .iter()
        .map(|q| format!("{:.3e}: {}", q.target, q.interval_text()))
        .collect::<Vec<_>>()
        .join("; ");
    let mut verdict = Verdict::Holds;
    let mut why = Vec::new();
    if p.len() < 2 {
        verdict = Verdict::Inconclusive;
        why.push("fewer than two targets".to_owned());
    }
    if let Some(q) = p.iter().find(|q| !q.in_range) {
        verdict = Verdict::Inconclusive;
        why.push(format!(
            "the fit at {:.3e} lies outside its measured batch sizes",
            q.target
        ));
    }
    for w in p.windows(2) {
        let (a, b) = (w[0], w[1]);
        let step = format!("{:.3e} → {:.3e}", a.target, b.target);
        match (a.interval, b.interval) {
            (Some((_, a_hi)), Some((b_lo, _))) if b_lo > a_hi => {}
            (Some((a_lo, _)), Some((_, b_hi))) if b_hi < a_lo => {
                verdict = Verdict::DoesNotHold;
                why.push(format!("{step}: B_crit fell beyond both intervals"));
            }
            (Some(_), Some(_)) => {
                if verdict == Verdict::Holds {
                    verdict = Verdict::Inconclusive;
                }
                why.push(format!("{step}: the intervals overlap"));
            }
            _ => {
                if verdict == Verdict::Holds {
                    verdict = Verdict::Inconclusive;
                }
                why.push(format!("{step}: no interval to judge the change by"));
            }
        }
    }
    if verdict == Verdict::Holds {
        why.push(format!(
            "B_crit rose at each of {} falls of the target, beyond both intervals",
            p.len() - 1
        ));
    }
    Check {
        claim: format!(
            "B_crit grows as the target loss falls ({})",
            p.first().map_or("", |q| q.task.as_str())
        ),
        published: "the noise scale, and with it B_crit, grows as the loss falls (§3, abstract)"
            .to_owned(),
        measured,
        interval,
        tolerance: "each rise beyond both 95 % intervals".to_owned(),
        verdict,
        why: why.join("; "),
    }
}

/// One run of `smith-batch-for-decay`, as its summary reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRun {
    /// Its seed (runs of one seed see the same samples in the same order).
    pub seed: u64,
    /// The final evaluation loss (`None`: the run diverged or did not finish).
    pub final_loss: Option<f64>,
    /// Parameter updates.
    pub steps: u64,
    /// Samples consumed.
    pub samples: u64,
}

/// The median of `v` (empty: NaN).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Per seed, `a`'s final loss over `b`'s (seeds that both finished).
fn paired_ratios(a: &[ScheduleRun], b: &[ScheduleRun]) -> Option<Vec<f64>> {
    a.iter()
        .map(|x| {
            let y = b.iter().find(|y| y.seed == x.seed)?;
            Some(x.final_loss? / y.final_loss?)
        })
        .collect::<Option<Vec<f64>>>()
        .filter(|r| !r.is_empty() && r.iter().all(|v| v.is_finite()))
}

/// `smith-batch-for-decay`'s rules (see its [`Entry::rule`]): same loss, fewer updates.
/// `expected_steps` is the grow schedule's step count from its milestones.
pub fn batch_for_decay(
    decay: &[ScheduleRun],
    grow: &[ScheduleRun],
    control: &[ScheduleRun],
    expected_steps: u64,
) -> Vec<Check> {
    let no_interval = "none: no procedure of measured coverage for a median of paired ratios; the seeds' \
         range is shown instead";
    let grow_decay = paired_ratios(grow, decay);
    let control_decay = paired_ratios(control, decay);
    let range = |r: &[f64]| {
        format!(
            "{no_interval}: {:.3}–{:.3} over {} seeds",
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            r.len()
        )
    };
    let same_loss = match (&grow_decay, &control_decay) {
        (Some(g), Some(c)) => {
            let (mg, mc) = (median(g.clone()), median(c.clone()));
            let (verdict, why) = if mc < 1.1 {
                (
                    Verdict::Inconclusive,
                    format!(
                        "the decay does not matter here (control/decay {mc:.3}): the schedules \
                         cannot be told apart"
                    ),
                )
            } else if (0.9..=1.1).contains(&mg) {
                (
                    Verdict::Holds,
                    format!("grow/decay {mg:.3}, while no schedule at all ends {mc:.2}× higher"),
                )
            } else {
                (
                    Verdict::DoesNotHold,
                    format!("grow/decay {mg:.3}, outside [0.9, 1.1] (control/decay {mc:.2})"),
                )
            };
            Check {
                claim: "growing the batch ×5 ends at the loss of decaying the rate ×1/5, over \
                        the same samples"
                    .to_owned(),
                published: "equivalent test accuracy against epochs (§5.1, Fig. 2)".to_owned(),
                measured: format!(
                    "median final eval loss ratio grow/decay {mg:.3}; control/decay {mc:.3}"
                ),
                interval: range(g),
                tolerance: "grow/decay in [0.9, 1.1]".to_owned(),
                verdict,
                why,
            }
        }
        _ => Check {
            claim: "growing the batch ×5 ends at the loss of decaying the rate ×1/5, over the \
                    same samples"
                .to_owned(),
            published: "equivalent test accuracy against epochs (§5.1, Fig. 2)".to_owned(),
            measured: "a run ended without a final loss".to_owned(),
            interval: "none".to_owned(),
            tolerance: "grow/decay in [0.9, 1.1]".to_owned(),
            verdict: Verdict::Inconclusive,
            why: "a run diverged or did not finish".to_owned(),
        },
    };
    let steps = |r: &[ScheduleRun]| median(r.iter().map(|x| x.steps as f64).collect());
    let samples_equal = grow
        .iter()
        .chain(control)
        .all(|x| decay.iter().all(|y| y.samples == x.samples));
    let (sg, sd) = (steps(grow), steps(decay));
    let fewer = Check {
        claim: "in fewer parameter updates".to_owned(),
        published: "fewer updates in proportion to the batch (§5.1)".to_owned(),
        measured: format!(
            "grow {sg:.0} steps, decay {sd:.0} ({:.2}×), schedule's count {expected_steps}",
            sg / sd
        ),
        interval: "none needed: step counts are exact".to_owned(),
        tolerance: "grow < decay, grow = the schedule's count, equal samples".to_owned(),
        verdict: if sg < sd && sg == expected_steps as f64 && samples_equal {
            Verdict::Holds
        } else {
            Verdict::DoesNotHold
        },
        why: if samples_equal {
            format!("{:.0} of {sd:.0} updates", sg)
        } else {
            "the runs consumed different samples".to_owned()
        },
    };
    vec![same_loss, fewer]
}

/// Eval loss against samples for each schedule (one seed's run): the plot that shows
/// `smith-batch-for-decay`'s claim.
pub fn schedules_plot(curves: &[(String, Vec<(f64, f64)>)]) -> Plot {
    Plot {
        title: "Eval loss against samples".to_owned(),
        x_label: "samples".to_owned(),
        y_label: "eval loss".to_owned(),
        log_y: true,
        lines: curves
            .iter()
            .map(|(label, p)| Series::new(label.clone(), p.clone()))
            .collect(),
        ..Plot::default()
    }
}

/// `B_crit` against `B_simple`, log-log, with the diagonal and the factor's band: the plot
/// that shows `mccandlish`'s claim.
pub fn noise_plot(points: &[CriticalPoint]) -> Plot {
    let mut scatter: Vec<Series> = Vec::new();
    for p in points {
        let Some(bs) = p.b_simple else { continue };
        let label = p.task.clone();
        match scatter.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push((bs, p.b_crit)),
            None => scatter.push(Series::new(label, vec![(bs, p.b_crit)])),
        }
    }
    let xs: Vec<f64> = scatter
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|&(x, y)| [x, y]))
        .collect();
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min) / 3.0;
    let hi = xs.iter().copied().fold(0.0, f64::max) * 3.0;
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (1.0, 1e4)
    };
    let line = |k: f64| vec![(lo, k * lo), (hi, k * hi)];
    Plot {
        title: "Critical batch size against the noise scale".to_owned(),
        x_label: "B_simple near the target".to_owned(),
        y_label: "fitted B_crit".to_owned(),
        log_x: true,
        log_y: true,
        lines: vec![
            Series::new("B_crit = B_simple", line(1.0)),
            Series::new(
                format!("B_crit = {NOISE_FACTOR:.0}·B_simple"),
                line(NOISE_FACTOR),
            )
            .in_group("band")
            .dashed(),
            Series::new(
                format!("B_crit = B_simple/{NOISE_FACTOR:.0}"),
                line(1.0 / NOISE_FACTOR),
            )
            .in_group("band")
            .dashed(),
        ],
        scatter,
        ..Plot::default()
    }
}

/// An entry's verdict table (terminal and report).
pub fn verdict_table(checks: &[Check]) -> Table {
    Table {
        header: [
            "claim",
            "published",
            "measured",
            "interval",
            "tolerance",
            "verdict",
            "why",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows: checks
            .iter()
            .map(|c| {
                vec![
                    c.claim.clone(),
                    c.published.clone(),
                    c.measured.clone(),
                    c.interval.clone(),
                    c.tolerance.clone(),
                    c.verdict.label().to_owned(),
                    c.why.clone(),
                ]
            })
            .collect(),
    }
}

/// An entry's checks for the terminal: one block per check (the table's columns are too
/// wide for a terminal row).
pub fn verdict_text(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        s += &format!(
            "  [{}] {}
    published: {}
    measured:  {}
    interval:  {}
    tolerance: {}
    why:       {}
",
            c.verdict.label(),
            c.claim,
            c.published,
            c.measured,
            c.interval,
            c.tolerance,
            c.why
        );
    }
    s
}

/// The report of an entry: first the verdict table with the plot that shows the claim, then
/// the entry's rule and what its form ran.
pub fn page(entry: &Entry, checks: &[Check], plot: Option<&Plot>, ran: &str) -> String {
    let sections = [
        Section {
            title: format!("Verdict: {}", overall(checks).label()),
            text: format!("{}\n\n{}", entry.claim, entry.source),
            figures: plot.map(|p| svg(p, 640, 440)).into_iter().collect(),
            table: Some(verdict_table(checks)),
        },
        Section {
            title: "The rule".to_owned(),
            text: format!(
                "{}\n\nFixed before the run (docs/science.md#reproduce).",
                entry.rule
            ),
            figures: Vec::new(),
            table: None,
        },
        Section {
            title: "What ran".to_owned(),
            text: ran.to_owned(),
            figures: Vec::new(),
            table: None,
        },
    ];
    html_page(
        &format!("batchlab reproduce {}", entry.name),
        "A published claim, the experiment that tests it, and a verdict by a rule fixed \
         before the run.",
        &sections,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(
        task: &str,
        target: f64,
        b_crit: f64,
        ci: Option<(f64, f64)>,
        bs: f64,
    ) -> CriticalPoint {
        CriticalPoint {
            task: task.into(),
            target,
            b_crit,
            interval: ci,
            no_interval: None,
            in_range: true,
            b_simple: Some(bs),
        }
    }

    #[test]
    fn the_noise_rule_reaches_each_verdict_at_the_factors_edges() {
        let within = [
            point("a", 0.1, 100.0, None, 999.0),
            point("b", 0.1, 100.0, None, 10.01),
        ];
        assert_eq!(b_crit_against_noise(&within).verdict, Verdict::Holds);
        let outside = [point("a", 0.1, 100.0, None, 1001.0)];
        let c = b_crit_against_noise(&outside);
        assert_eq!(c.verdict, Verdict::DoesNotHold);
        assert!(c.why.contains("a (0.10)"), "{}", c.why);
        // Outside but extrapolated: the rule cannot judge it.
        let mut far = outside[0].clone();
        far.in_range = false;
        assert_eq!(b_crit_against_noise(&[far]).verdict, Verdict::Inconclusive);
        let mut unmeasured = within[0].clone();
        unmeasured.b_simple = None;
        assert_eq!(
            b_crit_against_noise(&[unmeasured]).verdict,
            Verdict::Inconclusive
        );
        assert_eq!(b_crit_against_noise(&[]).verdict, Verdict::Inconclusive);
    }

    #[test]
    fn growth_needs_every_rise_beyond_both_intervals() {
        let p = |t, b, lo, hi| point("nqm", t, b, Some((lo, hi)), 1.0);
        // Given in any order: sorted by falling target.
        let rising = [
            p(0.01, 200.0, 175.0, 227.0),
            p(0.1, 28.0, 25.0, 32.0),
            p(0.03, 69.0, 63.0, 75.0),
        ];
        let c = b_crit_grows_as_target_falls(&rising);
        assert_eq!(c.verdict, Verdict::Holds, "{}", c.why);
        assert!(c.measured.starts_with("1.000e-1: 28"), "{}", c.measured);
        let overlapping = [p(0.1, 28.0, 25.0, 70.0), p(0.03, 69.0, 63.0, 75.0)];
        assert_eq!(
            b_crit_grows_as_target_falls(&overlapping).verdict,
            Verdict::Inconclusive
        );
        let falling = [p(0.1, 69.0, 63.0, 75.0), p(0.03, 28.0, 25.0, 32.0)];
        assert_eq!(
            b_crit_grows_as_target_falls(&falling).verdict,
            Verdict::DoesNotHold
        );
        let mut extrapolated = rising.clone();
        extrapolated[0].in_range = false;
        assert_eq!(
            b_crit_grows_as_target_falls(&extrapolated).verdict,
            Verdict::Inconclusive
        );
        assert_eq!(
            b_crit_grows_as_target_falls(&rising[..1]).verdict,
            Verdict::Inconclusive
        );
    }

    #[test]
    fn batch_for_decay_needs_a_decay_that_matters_and_equal_losses() {
        let run = |seed, loss, steps| ScheduleRun {
            seed,
            final_loss: Some(loss),
            steps,
            samples: 1000,
        };
        let decay = [run(0, 1.0, 100), run(1, 2.0, 100)];
        let grow = [run(1, 2.1, 40), run(0, 1.05, 40)];
        let control = [run(0, 1.5, 100), run(1, 3.0, 100)];
        let c = batch_for_decay(&decay, &grow, &control, 40);
        assert_eq!(c[0].verdict, Verdict::Holds, "{}", c[0].why);
        assert_eq!(c[1].verdict, Verdict::Holds, "{}", c[1].why);
        // Paired by seed, not by order: ratios 1.05 and 1.05.
        assert!(
            c[0].measured.contains("grow/decay 1.050"),
            "{}",
            c[0].measured
        );
        let worse = [run(0, 1.5, 40), run(1, 3.0, 40)];
        assert_eq!(
            batch_for_decay(&decay, &worse, &control, 40)[0].verdict,
            Verdict::DoesNotHold
        );
        // A decay that changes nothing: no verdict on the schedules.
        assert_eq!(
            batch_for_decay(&decay, &grow, &decay, 40)[0].verdict,
            Verdict::Inconclusive
        );
        let mut diverged = grow.clone();
        diverged[0].final_loss = None;
        assert_eq!(
            batch_for_decay(&decay, &diverged, &control, 40)[0].verdict,
            Verdict::Inconclusive
        );
        // A step count off the schedule's, or different samples: does not hold.
        assert_eq!(
            batch_for_decay(&decay, &grow, &control, 41)[1].verdict,
            Verdict::DoesNotHold
        );
        let mut short = grow.clone();
        short[0].samples = 900;
        assert_eq!(
            batch_for_decay(&decay, &short, &control, 40)[1].verdict,
            Verdict::DoesNotHold
        );
    }

    #[test]
    fn an_entry_holds_only_when_every_check_does() {
        let c = |v| Check {
            claim: String::new(),
            published: String::new(),
            measured: String::new(),
            interval: String::new(),
            tolerance: String::new(),
            verdict: v,
            why: String::new(),
        };
        use Verdict::*;
        assert_eq!(overall(&[c(Holds), c(Holds)]), Holds);
        assert_eq!(overall(&[c(Holds), c(Inconclusive)]), Inconclusive);
        assert_eq!(overall(&[c(Inconclusive), c(DoesNotHold)]), DoesNotHold);
        assert_eq!(overall(&[]), Inconclusive);
    }
}
