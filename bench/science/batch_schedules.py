#!/usr/bin/env python3
"""A batch that follows the noise scale against every constant batch: steps and samples to a target.

For each task, every candidate (a constant batch B, or the `noise` batch schedule) gets its
rate tuned on selection seeds (the rate of fewest median steps to the target over a log grid),
then is measured again on fresh held-out seeds with that rate: the selection's best is biased
low (docs/science.md#selection-bias), the held-out figures are not. Each seed's run stops at the
target (its eval loss, evaluated every step or every few); steps and samples are its own.

Printed per task: each candidate's held-out median steps and samples to the target (and how
many held-out seeds reached it), the constant batch of fewest samples and of fewest steps, and
where the noise schedule stands against the constant batches: the samples a constant batch
needs for the noise schedule's steps (log-log interpolation between the neighbouring measured
batches), and whether any constant batch needs neither more steps nor more samples.

    bench/science/batch_schedules.py [--bin target/release/batchlab] [--out runs/batch-schedules]
                                     [--tasks nqm,mlp] [--jobs 2]

About 5 minutes per task on 2 cores with the defaults (a test-profile or release build).
"""

import argparse
import concurrent.futures as cf
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

SELECT_SEEDS = list(range(0, 4))
HELD_OUT_SEEDS = list(range(1000, 1016))
LR_GRID = [0.02 * (8.0 / 0.02) ** (k / 14) for k in range(15)]  # 0.02 … 8, log-spaced
BATCHES = [8, 16, 32, 64, 128, 256, 512, 1024]

TASKS = {
    # The noisy quadratic model, 100 dimensions, h_i = c_i = 1/i: the target is 1 % of the
    # initial loss.
    "nqm": {
        "args": ["--task", "nqm", "--set", "task.dim=100"],
        "target": lambda initial: 0.01 * initial,
        "steps": 20000,
        "eval_every": 1,
    },
    # A 16-32-4 MLP on teacher data (8192 training samples, 1024 held out): the target is 30 %
    # of the initial held-out loss, evaluated every 5 steps.
    "mlp": {
        "args": ["--task", "mlp", "--set", "task.hidden=[32]", "--set", "task.data.input_dim=16",
                 "--set", "task.data.classes=4", "--set", "task.data.train_size=8192",
                 "--set", "task.data.eval_size=1024"],
        "target": lambda initial: 0.3 * initial,
        "steps": 8000,
        "eval_every": 5,
    },
}

NOISE = {"min": 8, "max": 4096, "every": 10, "first": 8, "micro": 4}


def run(bin_, out, args):
    os.makedirs(out, exist_ok=True)
    cmd = [bin_, "train", "--out", out, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "error"})
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)["summary"]
    return s


def initial_loss(bin_, out, task):
    run(bin_, out, [*task["args"], "--steps", "1", "--set", "eval_every=1"])
    with open(os.path.join(out, "metrics.csv")) as f:
        return float(next(csv.DictReader(f))["eval_loss"])


def candidate_args(name):
    if name == "noise":
        n = NOISE
        return [
            "--batch", str(n["first"]), "--micro", str(n["micro"]),
            "--set", 'batch_schedule.kind="noise"',
            "--set", f"batch_schedule.min={n['min']}",
            "--set", f"batch_schedule.max={n['max']}",
            "--set", f"batch_schedule.every={n['every']}",
        ]
    b = int(name)
    return ["--batch", str(b), "--micro", str(max(1, b // 8))]


def trial(bin_, root, task, target, name, lr, seed):
    out = os.path.join(root, f"{name}-lr{lr:.4g}-s{seed}")
    args = [
        *task["args"], *candidate_args(name), "--lr", f"{lr}", "--seed", str(seed),
        "--steps", str(task["steps"]), "--target-loss", f"{target}",
        "--set", f"eval_every={task['eval_every']}",
    ]
    s = run(bin_, out, args)
    shutil.rmtree(out)  # every step's rows of hundreds of runs: only the summary is kept
    done = s["status"] == "COMPLETE"
    return (s["steps"] if done else math.inf, s["samples"] if done else math.inf)


def median(xs):
    return statistics.median(sorted(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/batchlab")
    ap.add_argument("--out", default="runs/batch-schedules")
    ap.add_argument("--tasks", default="nqm,mlp")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    pool = cf.ThreadPoolExecutor(a.jobs)
    report = {}
    for tname in a.tasks.split(","):
        task = TASKS[tname]
        root = os.path.join(a.out, tname)
        init = initial_loss(a.bin, os.path.join(root, "initial"), task)
        target = task["target"](init)
        names = [str(b) for b in BATCHES] + ["noise"]
        # Selection: every rate of the grid on the selection seeds.
        jobs = {
            (n, lr, s): pool.submit(trial, a.bin, root, task, target, n, lr, s)
            for n in names for lr in LR_GRID for s in SELECT_SEEDS
        }
        chosen = {}
        for n in names:
            best = min(LR_GRID, key=lambda lr: median([jobs[(n, lr, s)].result()[0] for s in SELECT_SEEDS]))
            chosen[n] = best
        # Held-out measurement of each candidate's chosen rate.
        held = {
            (n, s): pool.submit(trial, a.bin, root, task, target, n, chosen[n], s)
            for n in names for s in HELD_OUT_SEEDS
        }
        rows = {}
        for n in names:
            r = [held[(n, s)].result() for s in HELD_OUT_SEEDS]
            rows[n] = {
                "lr": chosen[n],
                "steps": median([x[0] for x in r]),
                "samples": median([x[1] for x in r]),
                "reached": sum(math.isfinite(x[0]) for x in r),
            }
        # The schedule's steps and samples at every rate (selection seeds): its trade-off
        # between the two, which the choice by fewest steps alone does not show.
        noise_rates = []
        for lr in LR_GRID:
            r = [jobs[("noise", lr, s)].result() for s in SELECT_SEEDS]
            noise_rates.append((lr, median([x[0] for x in r]), median([x[1] for x in r])))
        report[tname] = {"initial_loss": init, "target": target, "rows": rows,
                         "noise_by_rate_selection_seeds": noise_rates}
        print(f"\n{tname}: initial loss {init:.4g}, target {target:.4g}; rate tuned on seeds "
              f"{SELECT_SEEDS[0]}..{SELECT_SEEDS[-1]}, figures from held-out seeds "
              f"{HELD_OUT_SEEDS[0]}..{HELD_OUT_SEEDS[-1]} (medians)")
        print(f"{'batch':>8} {'lr':>8} {'steps':>9} {'samples':>11} {'reached':>8}")
        for n in names:
            r = rows[n]
            label = n if n != "noise" else f"noise {NOISE['min']}-{NOISE['max']}"
            print(f"{label:>8} {r['lr']:8.4g} {r['steps']:9.0f} {r['samples']:11.0f} {r['reached']:>5}/{len(HELD_OUT_SEEDS)}")
        print("noise schedule at every rate (selection seeds, medians; not held out): "
              + ", ".join(f"{lr:.3g}: {st:.0f} steps / {sa:.0f} samples"
                          for lr, st, sa in noise_rates if math.isfinite(st)))
        const = [(int(n), rows[n]) for n in names if n != "noise" and math.isfinite(rows[n]["steps"])]
        nz = rows["noise"]
        fewest_samples = min(const, key=lambda c: c[1]["samples"])
        fewest_steps = min(const, key=lambda c: c[1]["steps"])
        print(f"constant batch of fewest samples: B = {fewest_samples[0]} ({fewest_samples[1]['steps']:.0f} steps, "
              f"{fewest_samples[1]['samples']:.0f} samples); of fewest steps: B = {fewest_steps[0]} "
              f"({fewest_steps[1]['steps']:.0f} steps, {fewest_steps[1]['samples']:.0f} samples)")
        dominated = [b for b, r in const if r["steps"] <= nz["steps"] and r["samples"] <= nz["samples"]]
        # The constant batches' samples at the noise schedule's steps: log-log interpolation
        # between the two measured batches whose steps bracket it.
        pts = sorted((r["steps"], r["samples"], b) for b, r in const)
        at = None
        for (s1, e1, b1), (s2, e2, b2) in zip(pts, pts[1:]):
            if s1 <= nz["steps"] <= s2 and s1 < s2:
                u = (math.log(nz["steps"]) - math.log(s1)) / (math.log(s2) - math.log(s1))
                at = (math.exp(math.log(e1) + u * (math.log(e2) - math.log(e1))), b1, b2)
        if at:
            print(f"noise schedule: {nz['steps']:.0f} steps, {nz['samples']:.0f} samples; a constant batch "
                  f"taking as many steps (between B = {at[2]} and {at[1]}) needs {at[0]:.0f} samples "
                  f"(the noise schedule uses {nz['samples'] / at[0]:.2f}× theirs)")
        else:
            print(f"noise schedule: {nz['steps']:.0f} steps, {nz['samples']:.0f} samples; outside the "
                  "constant batches' measured steps: no interpolation")
        print("constant batches needing neither more steps nor more samples: "
              + (", ".join(map(str, dominated)) if dominated else "none"))
        report[tname]["interpolated_constant_samples"] = at[0] if at else None
        report[tname]["dominated_by"] = dominated
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
