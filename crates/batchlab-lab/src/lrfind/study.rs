//! An lr-find study as data, and its report: `lr_find.json` is an [`LrFindDoc`], `lr_find.csv`
//! rows of [`CsvRow`]; [`summary_lines`], [`seed_table`] and [`page`] turn them into the
//! terminal's summary and `report.html` (the binary reads and writes the files).

use batchlab_core::train::{Status, TrainConfig};
use serde::{Deserialize, Serialize};

use super::{Cause, LossSource};
use crate::report::{self, Section, Table};

/// One seed's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    /// The ramp's sampler seed.
    pub seed: u64,
    /// The rate of the step before the blow-up.
    pub alpha_star: Option<f64>,
    /// `α*/10`.
    pub suggestion: Option<f64>,
    /// The step whose loss (after it) first counted as blown up.
    pub blowup_step: Option<u64>,
    /// What counted as the blow-up.
    pub cause: Option<Cause>,
    /// The rate of the smallest smoothed loss before the blow-up.
    pub min_loss_lr: Option<f64>,
    /// The last sharpness measured during the ramp (`sharpness_every > 0`) at or before the
    /// step of `α*`.
    pub sharpness_near_alpha: Option<SharpnessAt>,
    /// How the ramp's run ended.
    pub status: Status,
    /// Why, in words.
    pub message: String,
}

/// A sharpness measured during the ramp.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SharpnessAt {
    /// The step measured.
    pub step: u64,
    /// Its rate.
    pub lr: f64,
    /// The sharpness.
    pub lambda_max: f64,
}

/// `lr_find.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LrFindDoc {
    /// The task's name.
    pub task: String,
    /// The optimizer's name.
    pub optimizer: String,
    /// Median of the seeds' `α*` (log space).
    pub alpha_star: Option<f64>,
    /// `α*/10`.
    pub suggestion: Option<f64>,
    /// `2/α*`.
    pub two_over_alpha_star: Option<f64>,
    /// The optimizer's stability edge solved for `λ_max` (`2/α*` for SGD).
    pub edge_formula: String,
    /// That formula at `α*`.
    pub edge_lambda_max: Option<f64>,
    /// `λ_max` at `θ₀`, the largest algebraic Hessian eigenvalue, by the Lanczos method (the
    /// key keeps its name from when power iteration measured it).
    pub lambda_max_power: Option<f64>,
    /// `λ_min` at `θ₀`, the most negative Hessian eigenvalue, by the same Lanczos run.
    #[serde(default)]
    pub lambda_min: Option<f64>,
    /// The rate at which the optimizer's edge lies for `lambda_max_power`.
    pub edge_rate_power: Option<f64>,
    /// `edge_lambda_max / lambda_max_power`.
    pub ratio: Option<f64>,
    /// `α*·λ/2` expected on a quadratic from the ramp's lag (closed form for GD, `δ = ½`).
    pub quadratic_lag: f64,
    /// Which loss the rule read.
    pub loss_source: LossSource,
    /// Each seed's result.
    pub seeds: Vec<SeedResult>,
    /// The finder's settings.
    pub settings: Settings,
    /// The first seed's run configuration.
    pub config: TrainConfig,
}

/// The finder's settings, as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// First rate of the ramp.
    pub lr_min: f64,
    /// Last rate of the ramp.
    pub lr_max: f64,
    /// Steps of the ramp.
    pub ramp_steps: u64,
    /// The factor between consecutive rates.
    pub ratio: f64,
    /// The blow-up rule: `k`, `span`, the median's half width.
    pub factor: f64,
    /// The rates below the current one the rule compares with (a factor).
    pub span: f64,
    /// The running median's half width, in steps.
    pub half_width: usize,
    /// The seeds, one ramp each.
    pub seeds: Vec<u64>,
}

/// A row of `lr_find.csv`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CsvRow {
    /// The ramp's seed.
    pub seed: u64,
    /// The step.
    pub step: u64,
    /// Its rate.
    pub lr: f64,
    /// The loss after the step.
    pub loss: f64,
    /// The running median of the loss.
    pub smoothed_loss: f64,
}

/// A number for the terminal and the report: 4 decimals in [0.01, 10⁴), else scientific.
pub fn num(x: f64) -> String {
    if (0.01..1e4).contains(&x.abs()) {
        format!("{x:.4}")
    } else {
        format!("{x:.4e}")
    }
}

/// [`num`], or a dash for none.
pub fn opt_num(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_string(), num)
}

/// The per-seed table.
pub fn seed_table(doc: &LrFindDoc) -> Table {
    Table {
        header: [
            "seed",
            "α*",
            "2/α*",
            "blow-up step",
            "cause",
            "min-loss rate",
            "run",
        ]
        .map(String::from)
        .to_vec(),
        rows: doc
            .seeds
            .iter()
            .map(|r| {
                vec![
                    r.seed.to_string(),
                    opt_num(r.alpha_star),
                    opt_num(r.alpha_star.map(|a| 2.0 / a)),
                    r.blowup_step.map_or_else(|| "—".into(), |s| s.to_string()),
                    r.cause
                        .map_or("none", |c| match c {
                            Cause::Rise => "4× rise",
                            Cause::NonFinite => "non-finite",
                            Cause::RunDiverged => "run's bound",
                        })
                        .to_string(),
                    opt_num(r.min_loss_lr),
                    serde_json::to_value(r.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                ]
            })
            .collect(),
    }
}

/// What the finder found, in a few lines (the terminal and the report's text).
pub fn summary_lines(doc: &LrFindDoc) -> Vec<String> {
    let s = &doc.settings;
    let mut lines = vec![format!(
        "{} with {}, B = {}: {} steps from {} to {} (×{:.5} per step), {} seed{}, {} loss",
        doc.task,
        doc.optimizer,
        doc.config.batch,
        s.ramp_steps,
        num(s.lr_min),
        num(s.lr_max),
        s.ratio,
        s.seeds.len(),
        if s.seeds.len() == 1 { "" } else { "s" },
        match doc.loss_source {
            LossSource::Eval => "held-out",
            LossSource::Train => "training",
        }
    )];
    let Some(alpha) = doc.alpha_star else {
        let blew_at_once = doc
            .seeds
            .iter()
            .any(|r| r.cause.is_some() && r.alpha_star.is_none());
        lines.push(if blew_at_once {
            format!(
                "α*: none, the loss blew up at the first step: lower --lr-min (now {})",
                num(s.lr_min)
            )
        } else {
            format!(
                "α*: none, the loss did not blow up below --lr-max {}: raise it",
                num(s.lr_max)
            )
        });
        if let Some(p) = doc.lambda_max_power {
            lines.push(format!(
                "Lanczos at θ₀: λ_max = {}, λ_min = {}",
                num(p),
                opt_num(doc.lambda_min)
            ));
        }
        return lines;
    };
    lines.push(format!(
        "α* = {} (median over {} seed{}), suggested rate α*/10 = {}",
        num(alpha),
        doc.seeds.iter().filter(|r| r.alpha_star.is_some()).count(),
        if s.seeds.len() == 1 { "" } else { "s" },
        opt_num(doc.suggestion)
    ));
    let mut est = format!("λ_max estimates: 2/α* = {}", num(2.0 / alpha));
    if doc.edge_formula != "2/α*" {
        est += &format!(", {} = {}", doc.edge_formula, opt_num(doc.edge_lambda_max));
    }
    est += &format!(
        "; Lanczos at θ₀: λ_max = {} (λ_min = {})",
        opt_num(doc.lambda_max_power),
        opt_num(doc.lambda_min)
    );
    if let Some(r) = doc.ratio {
        est += &format!("; ratio {} / Lanczos = {r:.3}", doc.edge_formula);
    }
    lines.push(est);
    if let Some(first) = doc.seeds.iter().find_map(|r| r.sharpness_near_alpha) {
        lines.push(format!(
            "Lanczos during the ramp (sharpness_every), seed {}: λ_max = {} at step {} \
             (η = {}, 2/η = {}), the last measurement up to α*",
            doc.seeds
                .iter()
                .find(|r| r.sharpness_near_alpha.is_some())
                .map_or(0, |r| r.seed),
            num(first.lambda_max),
            first.step,
            num(first.lr),
            num(2.0 / first.lr)
        ));
    }
    if doc.optimizer == "sgd" {
        lines.push(format!(
            "(on a quadratic this ramp overshoots the edge by ×{:.3} before the loss has grown \
             {}-fold: closed form for GD)",
            doc.quadratic_lag, s.factor
        ));
    }
    lines
}

/// The study's `report.html`: the loss against the rate with `α*`, the edge of the Lanczos
/// `λ_max` and the suggestion, the summary and the per-seed table.
pub fn page(doc: &LrFindDoc, rows: &[CsvRow]) -> String {
    let mut curves = Vec::new();
    for &seed in &doc.settings.seeds {
        let of = |f: fn(&CsvRow) -> f64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.seed == seed)
                .map(|r| (r.lr, f(r)))
                .collect()
        };
        curves.push((format!("loss, seed {seed}"), of(|r| r.loss)));
        curves.push((format!("smoothed, seed {seed}"), of(|r| r.smoothed_loss)));
    }
    let mut marks = Vec::new();
    if let Some(a) = doc.alpha_star {
        marks.push((a, format!("α* = {}", num(a))));
    }
    if let Some(rate) = doc.edge_rate_power {
        // λ_p: the Lanczos λ_max at θ₀ (legend entries are short).
        // The edge's rate for λ_p: with coupled weight decay the optimizer sees λ_p + wd.
        let formula = match doc.edge_formula.strip_suffix(" − wd") {
            Some(f) => f.replace("α*", "(λ_p + wd)"),
            None => doc.edge_formula.replace("α*", "λ_p"),
        };
        marks.push((rate, format!("{formula} = {}", num(rate))));
    }
    if let Some(s) = doc.suggestion {
        marks.push((s, format!("suggested α*/10 = {}", num(s))));
    }
    let plot = report::loss_vs_rate(&curves, &marks);
    let text = summary_lines(doc).join("\n\n")
        + "\n\nThe loss after each step is plotted against that step's rate; λ_p is the Lanczos \
           λ_max at θ₀, and the line it marks is where the edge would lie if the \
           sharpness stayed λ_p (on a quadratic α* lies one ramp lag above it). Blow-up: the \
           running median of the loss exceeds 4× its smallest value at rates at least half the \
           current one (or a loss is not finite, or the run stopped on its own divergence \
           bound); α* is the rate of the step before.";
    let sections = vec![
        Section {
            title: "Loss against the learning rate".into(),
            text,
            figures: vec![report::svg(&plot, 760, 460)],
            table: None,
        },
        Section {
            title: "Per seed".into(),
            text: String::new(),
            figures: vec![],
            table: Some(seed_table(doc)),
        },
    ];
    report::html_page(
        "batchlab lr-find",
        "Learning-rate finder: the rate rises exponentially every step; α* is the largest rate \
         before the loss blows up, and the stability edge of the optimizer (2/λ_max for SGD) \
         turns it into an estimate of the sharpness.",
        &sections,
    )
}
