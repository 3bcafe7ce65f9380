//! Time and cost to a target loss on `N` workers (docs/science.md#planning): the steps a batch
//! size needs, `S(B) = S_min(1 + B_crit/B)` from a sweep's fit, times the step time of `B`
//! samples on `N` workers, modelled as the compute of `B/N` samples per worker plus the
//! all-reduce of the gradient under the α-β model (docs/science.md#alpha-beta-model). A model,
//! not a simulation: a grid of thousands of `(B, N)` points takes microseconds.

use batchlab_collective::Algorithm;
use batchlab_collective::alpha_beta_time;
use serde::{Deserialize, Serialize};

use crate::fit::CriticalFit;

/// What a worker's computation costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    /// Seconds of forward and backward pass per sample.
    pub per_sample_s: f64,
    /// Seconds of one parameter update (the optimizer's step), whatever the batch.
    pub per_update_s: f64,
}

/// One link class of the α-β model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Per-message latency, seconds.
    pub alpha_s: f64,
    /// Bandwidth, bytes per second.
    pub beta_bytes_per_s: f64,
}

/// How the workers are connected.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Topology {
    /// Every pair of workers over the same kind of link.
    Flat {
        /// The link.
        link: Link,
    },
    /// Nodes of `per_node` devices: a fast link inside a node, a slower one between nodes.
    Hierarchical {
        /// Devices per node.
        per_node: usize,
        /// The link between devices of one node.
        intra: Link,
        /// The link between nodes.
        inter: Link,
    },
}

/// The system side of a plan: compute, network, gradient size, overlap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct System {
    /// What computation costs.
    pub compute: Compute,
    /// The all-reduce algorithm (between nodes, for a hierarchical topology).
    pub algorithm: Algorithm,
    /// How the workers are connected.
    pub topology: Topology,
    /// Bytes of the gradient each worker all-reduces per step.
    pub grad_bytes: f64,
    /// Whether the all-reduce overlaps the backward pass.
    pub overlap: bool,
}

/// One step's modelled time on `N` workers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    /// Forward and backward of one worker's share, seconds.
    pub compute_s: f64,
    /// The gradient's all-reduce, seconds.
    pub comm_s: f64,
    /// The whole step: `compute + comm + update`, or with overlap `max(compute, comm) + update`.
    pub total_s: f64,
}

impl System {
    /// Seconds of one all-reduce of the gradient over `workers` (docs/science.md#planning).
    ///
    /// Flat: [`alpha_beta_time`] of the algorithm. Hierarchical, on more workers than one node
    /// holds: a ring reduce-scatter inside each node (`(d−1)(α_i + S/(d·β_i))` for `d` devices
    /// of a node), the algorithm's all-reduce of each device's `S/d` slice between the
    /// `⌈N/d⌉` nodes, and a ring all-gather inside each node (as long as the reduce-scatter).
    /// On one node it is the algorithm over the intra-node link.
    pub fn allreduce_s(&self, workers: usize) -> f64 {
        let s = self.grad_bytes;
        match self.topology {
            Topology::Flat { link } => alpha_beta_time(
                self.algorithm,
                s,
                workers,
                link.alpha_s,
                link.beta_bytes_per_s,
            ),
            Topology::Hierarchical {
                per_node,
                intra,
                inter,
            } => {
                let d = per_node.max(1);
                if workers <= d {
                    return alpha_beta_time(
                        self.algorithm,
                        s,
                        workers,
                        intra.alpha_s,
                        intra.beta_bytes_per_s,
                    );
                }
                let nodes = workers.div_ceil(d);
                let df = d as f64;
                let inside = (df - 1.0) * (intra.alpha_s + s / df / intra.beta_bytes_per_s);
                let between = alpha_beta_time(
                    self.algorithm,
                    s / df,
                    nodes,
                    inter.alpha_s,
                    inter.beta_bytes_per_s,
                );
                2.0 * inside + between
            }
        }
    }

    /// One step of `batch` samples on `workers` workers: each computes `⌈B/N⌉` samples.
    pub fn step(&self, batch: f64, workers: usize) -> StepTime {
        let compute_s = self.compute.per_sample_s * (batch / workers as f64).ceil();
        let comm_s = self.allreduce_s(workers);
        let busy = if self.overlap {
            compute_s.max(comm_s)
        } else {
            compute_s + comm_s
        };
        StepTime {
            compute_s,
            comm_s,
            total_s: busy + self.compute.per_update_s,
        }
    }
}

/// One `(B, N)` point of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanPoint {
    /// Workers.
    pub workers: usize,
    /// Global batch size.
    pub batch: f64,
    /// The step's modelled time.
    pub step: StepTime,
    /// Steps to target, `S(B)`.
    pub steps: f64,
    /// Seconds to target, `S(B) · t_step`.
    pub time_s: f64,
    /// Worker-hours to target, `N · time / 3600`.
    pub worker_hours: f64,
    /// Pollux's goodput, throughput × statistical efficiency:
    /// `B/t_step · E_min/E(B)`, which equals `E_min / time` (samples of the small-batch limit
    /// per second).
    pub goodput: f64,
    /// `B` outside the batch sizes the fit was measured on: `S(B)` is extrapolated.
    pub extrapolated: bool,
}

/// The statistics side of a plan: the fitted curve and the batch sizes it was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    /// `S = S_min(1 + B_crit/B)`.
    pub fit: CriticalFit,
    /// The smallest and largest batch sizes measured.
    pub measured: (f64, f64),
}

impl Statistics {
    /// The point `(batch, workers)` of a plan on `system`.
    pub fn point(&self, system: &System, batch: f64, workers: usize) -> PlanPoint {
        let step = system.step(batch, workers);
        let steps = self.fit.steps(batch);
        let time_s = steps * step.total_s;
        PlanPoint {
            workers,
            batch,
            step,
            steps,
            time_s,
            worker_hours: workers as f64 * time_s / 3600.0,
            goodput: batch / step.total_s * self.fit.e_min / self.fit.samples(batch),
            extrapolated: batch < self.measured.0 || batch > self.measured.1,
        }
    }

    /// Every point of `batches × workers` with at least one sample per worker (`B ≥ N`), by
    /// workers then batch.
    pub fn grid(&self, system: &System, batches: &[f64], workers: &[usize]) -> Vec<PlanPoint> {
        workers
            .iter()
            .flat_map(|&n| {
                batches
                    .iter()
                    .filter(move |&&b| b >= n as f64)
                    .map(move |&b| self.point(system, b, n))
            })
            .collect()
    }
}

/// What a plan's choice minimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Objective {
    /// The shortest time to target.
    Fastest,
    /// The fewest worker-hours among points within `seconds` to target.
    Deadline {
        /// The deadline, seconds.
        seconds: f64,
    },
    /// The shortest time among points within `worker_hours`.
    Budget {
        /// The budget, worker-hours.
        worker_hours: f64,
    },
}

/// The best point of `points` for `objective`; among points within a relative `1e-9` of the
/// best (equal but for rounding), the fewest workers, then the smallest batch. `None` when no
/// point meets the deadline or budget.
pub fn best(points: &[PlanPoint], objective: Objective) -> Option<&PlanPoint> {
    let key = |p: &PlanPoint| match objective {
        Objective::Fastest | Objective::Budget { .. } => p.time_s,
        Objective::Deadline { .. } => p.worker_hours,
    };
    let eligible: Vec<&PlanPoint> = points
        .iter()
        .filter(|p| match objective {
            Objective::Fastest => true,
            Objective::Deadline { seconds } => p.time_s <= seconds,
            Objective::Budget { worker_hours } => p.worker_hours <= worker_hours,
        })
        .filter(|p| key(p).is_finite())
        .collect();
    let least = eligible.iter().map(|p| key(p)).min_by(f64::total_cmp)?;
    eligible
        .into_iter()
        .filter(|p| key(p) <= least * (1.0 + 1e-9))
        .min_by(|a, b| a.workers.cmp(&b.workers).then(a.batch.total_cmp(&b.batch)))
}

/// The fastest point for each worker count of `points`, in the order they first appear.
pub fn fastest_per_workers(points: &[PlanPoint]) -> Vec<PlanPoint> {
    let mut out: Vec<PlanPoint> = Vec::new();
    for p in points {
        match out.iter_mut().find(|q| q.workers == p.workers) {
            Some(q) if p.time_s < q.time_s => *q = *p,
            Some(_) => {}
            None => out.push(*p),
        }
    }
    out
}

/// `1, 2, 4, …` up to and including `max` (and `max` itself when it is no power of two).
pub fn powers_of_two(max: u64) -> Vec<u64> {
    let mut v: Vec<u64> = std::iter::successors(Some(1u64), |&x| x.checked_mul(2))
        .take_while(|&x| x <= max)
        .collect();
    if v.last().is_some_and(|&l| l < max) {
        v.push(max);
    }
    v
}

/// A run whose batch changed step by step (a batch-size schedule), priced on `workers`: the
/// sum of each step's modelled time. Its steps and samples are the run's own (measured, not
/// the fit's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SchedulePoint {
    /// Workers.
    pub workers: usize,
    /// Steps the run took.
    pub steps: u64,
    /// Samples it consumed.
    pub samples: u64,
    /// The smallest and largest batch of its steps.
    pub batches: (u64, u64),
    /// Seconds, `Σ_t t_step(B_t, N)`.
    pub time_s: f64,
    /// Worker-hours, `N · time / 3600`.
    pub worker_hours: f64,
}

/// The time of the steps of `batches` (one entry per step) on `workers`.
pub fn schedule_point(system: &System, batches: &[u64], workers: usize) -> SchedulePoint {
    let time_s = batches
        .iter()
        .map(|&b| system.step(b as f64, workers).total_s)
        .sum::<f64>();
    SchedulePoint {
        workers,
        steps: batches.len() as u64,
        samples: batches.iter().sum(),
        batches: (
            batches.iter().copied().min().unwrap_or(0),
            batches.iter().copied().max().unwrap_or(0),
        ),
        time_s,
        worker_hours: workers as f64 * time_s / 3600.0,
    }
}

/// A quantity of every `(B, N)` point as a heatmap: columns the batch sizes, rows the worker
/// counts (fewest at the bottom); a batch smaller than the workers stays blank.
pub fn heatmap(
    points: &[PlanPoint],
    value: fn(&PlanPoint) -> f64,
    title: &str,
    value_label: &str,
) -> crate::report::Heatmap {
    let mut batches: Vec<f64> = points.iter().map(|p| p.batch).collect();
    batches.sort_by(f64::total_cmp);
    batches.dedup();
    let mut workers: Vec<usize> = points.iter().map(|p| p.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    let cells = workers
        .iter()
        .map(|&n| {
            batches
                .iter()
                .map(|&b| {
                    points
                        .iter()
                        .find(|p| p.workers == n && p.batch == b)
                        .map(value)
                })
                .collect()
        })
        .collect();
    crate::report::Heatmap {
        title: title.to_owned(),
        x_label: "global batch size B".to_owned(),
        y_label: "workers N".to_owned(),
        x_ticks: batches.iter().map(|b| format!("{b}")).collect(),
        y_ticks: workers.iter().map(usize::to_string).collect(),
        cells,
        value_label: value_label.to_owned(),
        log_color: true,
    }
}

/// The plan's report page: what it assumed, the fastest batch per worker count as a table, and
/// heatmaps of time and worker-hours to target over every `(B, N)`. `choices` are the
/// objectives' picks in words.
/// How a plan moves as the target loss falls (one row per target), for the report.
#[derive(Debug, Clone)]
pub struct FallingTable {
    /// Column names.
    pub header: Vec<String>,
    /// One row per target, the target falling.
    pub rows: Vec<Vec<String>>,
}

/// The plan's report page: the fastest batch per worker count, heatmaps of time and
/// worker-hours over every (B, N), and, where several targets were planned, how the plan
/// moves as the target falls.
pub fn page(
    assumptions: &str,
    points: &[PlanPoint],
    fastest: &[PlanPoint],
    choices: &[String],
    falling: Option<&FallingTable>,
) -> String {
    use crate::report::{Section, Table, heatmap_svg, html_page};
    let table = Table {
        header: [
            "workers",
            "best B",
            "step s",
            "compute s",
            "all-reduce s",
            "steps",
            "time s",
            "worker-hours",
            "goodput /s",
            "S(B) extrapolated",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows: fastest
            .iter()
            .map(|p| {
                vec![
                    p.workers.to_string(),
                    format!("{}", p.batch),
                    format!("{:.4e}", p.step.total_s),
                    format!("{:.4e}", p.step.compute_s),
                    format!("{:.4e}", p.step.comm_s),
                    format!("{:.0}", p.steps.ceil()),
                    format!("{:.4e}", p.time_s),
                    format!("{:.4e}", p.worker_hours),
                    format!("{:.4e}", p.goodput),
                    if p.extrapolated { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect(),
    };
    let time = heatmap(points, |p| p.time_s, "Time to target", "seconds");
    let cost = heatmap(
        points,
        |p| p.worker_hours,
        "Worker-hours to target",
        "worker-hours",
    );
    let mut sections = vec![
        Section {
            title: "The fastest batch size per worker count".to_owned(),
            text: choices.join("\n\n"),
            figures: Vec::new(),
            table: Some(table),
        },
        Section {
            title: "Every batch size and worker count".to_owned(),
            text: "Time to target S(B)·t_step(B, N) and worker-hours N·T over the grid (log \
                   colour; blank: fewer samples than workers). Beyond the sweep's measured batch \
                   sizes S(B) is extrapolated from the fit."
                .to_owned(),
            figures: vec![heatmap_svg(&time, 720, 420), heatmap_svg(&cost, 720, 420)],
            table: None,
        },
    ];
    if let Some(f) = falling {
        sections.insert(
            1,
            Section {
                title: "As the target loss falls".to_owned(),
                text: "One sweep per target: the fit S(B) = S_min(1 + B_crit/B) at each, the \
                       fastest (B, N), and the best batch on the fewest and the most workers. The \
                       tables above and the heatmaps are of the lowest target."
                    .to_owned(),
                figures: Vec::new(),
                table: Some(Table {
                    header: f.header.clone(),
                    rows: f.rows.clone(),
                }),
            },
        );
    }
    html_page("batchlab plan", assumptions, &sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(s_min: f64, b_crit: f64) -> Statistics {
        Statistics {
            fit: CriticalFit {
                s_min,
                e_min: s_min * b_crit,
                b_crit,
                rms_log_residual: 0.0,
                n: 8,
            },
            measured: (1.0, 4096.0),
        }
    }

    fn flat(per_sample_s: f64, alpha_s: f64, beta: f64, overlap: bool) -> System {
        System {
            compute: Compute {
                per_sample_s,
                per_update_s: 0.0,
            },
            algorithm: Algorithm::Ring,
            topology: Topology::Flat {
                link: Link {
                    alpha_s,
                    beta_bytes_per_s: beta,
                },
            },
            grad_bytes: 4e6,
            overlap,
        }
    }

    #[test]
    fn with_a_fixed_all_reduce_cost_the_best_batch_is_the_closed_form_optimum() {
        // t(B) = S_min(1 + Bc/B)(p·B/N + c) is least at B* = sqrt(c·Bc·N/p).
        let stats = fit(100.0, 1000.0);
        let sys = flat(1e-4, 1e-3, 1e9, false);
        for n in [2usize, 8, 64] {
            let c = sys.allreduce_s(n);
            let want = (c * 1000.0 * n as f64 / 1e-4).sqrt();
            // Batches that are multiples of N, so ⌈B/N⌉ = B/N exactly.
            let batches: Vec<f64> = (1..=200_000).map(|k| (k * n) as f64).collect();
            let got = best(&stats.grid(&sys, &batches, &[n]), Objective::Fastest)
                .unwrap()
                .batch;
            assert!((got - want).abs() <= n as f64, "N={n}: {got} vs {want}");
        }
    }

    #[test]
    fn goodput_times_time_to_target_is_the_small_batch_samples() {
        let stats = fit(50.0, 300.0);
        let sys = flat(2e-4, 5e-5, 1e10, true);
        for p in stats.grid(&sys, &[16.0, 256.0, 4096.0], &[1, 4, 16]) {
            let e_min = stats.fit.e_min;
            assert!((p.goodput * p.time_s / e_min - 1.0).abs() < 1e-12, "{p:?}");
            assert!((p.worker_hours * 3600.0 / p.workers as f64 / p.time_s - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn without_communication_more_workers_cost_nothing_and_the_smallest_batch_is_cheapest() {
        // Free links: time = S(B)·p·B/N, worker-hours = p·S_min(B + Bc)/3600 whatever N.
        let stats = fit(10.0, 64.0);
        let sys = flat(1e-3, 0.0, f64::INFINITY, false);
        let pts = stats.grid(&sys, &[64.0, 128.0, 256.0], &[1, 2, 4, 8]);
        for p in &pts {
            let want = 1e-3 * 10.0 * (p.batch + 64.0) / 3600.0;
            assert!((p.worker_hours / want - 1.0).abs() < 1e-12, "{p:?}");
        }
        // A deadline of 4 s: S(64)·p·64/N = 1.28/N s fits any N; among equal worker-hours the
        // fewest workers win.
        let b = best(&pts, Objective::Deadline { seconds: 4.0 }).unwrap();
        assert_eq!((b.batch, b.workers), (64.0, 1));
        // The fastest: the most workers at the batch that minimises S(B)·B/N at N = 8.
        let f = best(&pts, Objective::Fastest).unwrap();
        assert_eq!((f.batch, f.workers), (64.0, 8));
        // A budget too small for any point.
        assert!(best(&pts, Objective::Budget { worker_hours: 1e-9 }).is_none());
    }

    #[test]
    fn overlap_hides_the_shorter_of_compute_and_communication() {
        let with = flat(1e-3, 1e-3, 1e9, true);
        let without = flat(1e-3, 1e-3, 1e9, false);
        let (a, b) = (with.step(64.0, 4), without.step(64.0, 4));
        assert_eq!(a.total_s, a.compute_s.max(a.comm_s));
        assert_eq!(b.total_s, b.compute_s + b.comm_s);
        assert_eq!(a.compute_s, 16.0 * 1e-3);
    }

    #[test]
    fn a_hierarchy_of_one_device_per_node_or_one_node_is_the_flat_all_reduce() {
        let link = |a: f64, b: f64| Link {
            alpha_s: a,
            beta_bytes_per_s: b,
        };
        let (intra, inter) = (link(1e-6, 1e11), link(2e-5, 1e9));
        let mut h = flat(0.0, 0.0, 1.0, false);
        let mut f = h;
        for alg in [Algorithm::Ring, Algorithm::Tree, Algorithm::Rhd] {
            h.algorithm = alg;
            f.algorithm = alg;
            h.topology = Topology::Hierarchical {
                per_node: 1,
                intra,
                inter,
            };
            f.topology = Topology::Flat { link: inter };
            for n in [2, 3, 8, 64] {
                assert!((h.allreduce_s(n) / f.allreduce_s(n) - 1.0).abs() < 1e-12);
            }
            h.topology = Topology::Hierarchical {
                per_node: 8,
                intra,
                inter,
            };
            f.topology = Topology::Flat { link: intra };
            for n in [2, 5, 8] {
                assert!((h.allreduce_s(n) / f.allreduce_s(n) - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn a_ring_hierarchy_on_full_nodes_moves_the_expected_bytes() {
        // 8 nodes × 8 devices, S = 64 MB, free latency: inside 2·7·S/8/β_i, between
        // 2·7/8·(S/8)/β_e.
        let s = 64e6;
        let sys = System {
            compute: Compute {
                per_sample_s: 0.0,
                per_update_s: 0.0,
            },
            algorithm: Algorithm::Ring,
            topology: Topology::Hierarchical {
                per_node: 8,
                intra: Link {
                    alpha_s: 0.0,
                    beta_bytes_per_s: 1e11,
                },
                inter: Link {
                    alpha_s: 0.0,
                    beta_bytes_per_s: 1e10,
                },
            },
            grad_bytes: s,
            overlap: false,
        };
        let want = 2.0 * 7.0 * s / 8.0 / 1e11 + 2.0 * 7.0 / 8.0 * (s / 8.0) / 1e10;
        assert!((sys.allreduce_s(64) / want - 1.0).abs() < 1e-12);
    }

    #[test]
    fn points_outside_the_measured_batches_are_marked_extrapolated() {
        let mut stats = fit(10.0, 64.0);
        stats.measured = (8.0, 512.0);
        let sys = flat(1e-3, 0.0, f64::INFINITY, false);
        let pts = stats.grid(&sys, &[4.0, 8.0, 512.0, 1024.0], &[1]);
        let flags: Vec<bool> = pts.iter().map(|p| p.extrapolated).collect();
        assert_eq!(flags, [true, false, false, true]);
    }

    #[test]
    fn worker_counts_are_powers_of_two_up_to_the_maximum() {
        assert_eq!(powers_of_two(1), [1]);
        assert_eq!(powers_of_two(8), [1, 2, 4, 8]);
        assert_eq!(powers_of_two(12), [1, 2, 4, 8, 12]);
    }

    #[test]
    fn the_heatmap_puts_each_point_in_its_cell_and_leaves_too_small_batches_blank() {
        let stats = fit(100.0, 50.0);
        let sys = flat(1e-3, 1e-5, 1e9, false);
        let points = stats.grid(&sys, &[1.0, 4.0, 16.0], &[1, 2, 8]);
        let h = heatmap(&points, |p| p.time_s, "t", "s");
        assert_eq!(h.x_ticks, ["1", "4", "16"]);
        assert_eq!(h.y_ticks, ["1", "2", "8"]);
        // Row N = 8: B = 1 and 4 hold fewer samples than workers.
        assert_eq!(h.cells[2][0], None);
        assert_eq!(h.cells[2][1], None);
        for p in &points {
            let row = [1, 2, 8].iter().position(|&n| n == p.workers).unwrap();
            let col = [1.0, 4.0, 16.0].iter().position(|&b| b == p.batch).unwrap();
            assert_eq!(h.cells[row][col], Some(p.time_s));
        }
        let html = page(
            "assumed",
            &points,
            &fastest_per_workers(&points),
            &["pick".into()],
            None,
        );
        assert!(
            html.contains("Time to target") && html.contains("<svg"),
            "{html}"
        );
    }

    #[test]
    fn a_schedule_costs_the_sum_of_its_steps() {
        let sys = flat(1e-3, 1e-4, 1e9, false);
        // 10 steps of 64 then 5 of 256 on 4 workers: 10·t(64, 4) + 5·t(256, 4).
        let batches: Vec<u64> = [vec![64; 10], vec![256; 5]].concat();
        let p = schedule_point(&sys, &batches, 4);
        let ring = 2.0 * 3.0 * 1e-4 + 2.0 * 3.0 / 4.0 * 4e6 / 1e9;
        let want = 10.0 * (16.0 * 1e-3 + ring) + 5.0 * (64.0 * 1e-3 + ring);
        assert!(
            (p.time_s - want).abs() < 1e-12 * want,
            "{} vs {want}",
            p.time_s
        );
        assert_eq!(
            (p.steps, p.samples, p.batches),
            (15, 10 * 64 + 5 * 256, (64, 256))
        );
        // A constant schedule is the constant batch's step time times its steps.
        let c = schedule_point(&sys, &[128; 7], 2);
        assert!((c.time_s - 7.0 * sys.step(128.0, 2).total_s).abs() < 1e-15);
    }
}
