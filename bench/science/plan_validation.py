#!/usr/bin/env python3
"""`batchlab plan`'s predicted time to target against runs measured on this machine.

The pipeline a user follows, end to end, on a noisy quadratic model (d = 1000, target 10 % of the
initial loss):
  1. `batchlab sweep`: steps to target against batch size, and the fit S(B) = S_min(1 + B_crit/B);
  2. `batchlab bench step --workers 1` at B = 64 and 1024: the compute per sample and per step,
     and the update (step.json; `plan` fits the line through both);
  3. `batchlab bench allreduce` from 4 KB (half the gradient) to 1 MB: α and β of the ring on
     each network (allreduce.json);
  4. `batchlab plan --compute step.json --network allreduce.json`: predicted time to target;
  5. `batchlab run` / `coordinator` + `worker`: the same (B, N) trained to the target with the
     sweep's rate for B, on held-out seeds; measured: the slowest rank's training wall time
     (summary.json `timing[].wall_s`: the step loop with its evaluations, not process start-up).

Networks: loopback (local workers), and with --netns (root; iproute2): two network namespaces
joined by a veth pair whose both ends are shaped by `tc tbf` (--rate), workers on TCP across it;
and the same link with latency injected by the workers (`worker --link-latency`, where the
kernel has no netem).

    bench/science/plan_validation.py [--bin target/release/batchlab] [--out runs/plan-validation]
                                     [--netns] [--rate 20mbit] [--latency-ms 2] [--seeds 5]

Prints the table of every point: predicted and measured seconds, and their ratio; the goal is
every prediction within 20 % of the measured time. Writes OUT/validation.json. Run it on an
otherwise idle machine: the timings are the point.
"""

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time

TASK = ["--task", "nqm", "--set", "task.dim=1000"]
SWEEP_BATCHES = "16,32,64,128,256,512,1024"
MICRO = 16
SEEDS0 = 5000


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        sys.exit(f"$ {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NS = ("blv-a", "blv-b")
ADDR = ("10.78.0.1", "10.78.0.2")


def netns_up(rate):
    netns_down()
    a, b = NS
    for n in NS:
        sh(["ip", "netns", "add", n])
        sh(["ip", "-n", n, "link", "set", "lo", "up"])
    sh(["ip", "link", "add", "blv-va", "netns", a, "type", "veth", "peer", "name", "blv-vb", "netns", b])
    for n, dev, addr in [(a, "blv-va", ADDR[0]), (b, "blv-vb", ADDR[1])]:
        sh(["ip", "-n", n, "addr", "add", f"{addr}/24", "dev", dev])
        sh(["ip", "-n", n, "link", "set", dev, "up"])
        # Token bucket: `rate` sustained, at most 100 ms queued, and a burst of 5 KB (a few
        # packets): a larger bucket lets a small message that follows a pause through at line
        # speed, which no real link of that rate does, and which the α-β model cannot describe.
        sh(["ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
            "rate", rate, "burst", "5kb", "latency", "100ms"])


def netns_down():
    for n in NS:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


def in_ns(n, cmd):
    return ["ip", "netns", "exec", n, *cmd]


def on_netns(bin_, order, latency_ms):
    """Runs `order` (a coordinator-side command line) in namespace A, with one worker in each
    namespace, over TCP across the shaped veth."""
    port = free_port()
    coord = subprocess.Popen(
        in_ns(NS[0], [bin_, *order, "--listen", f"{ADDR[0]}:{port}", "--token", "v",
                      "--transport", "tcp"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RUST_LOG": "warn"})
    time.sleep(0.3)
    workers = [
        subprocess.Popen(
            in_ns(n, [bin_, "worker", "--coordinator", f"{ADDR[0]}:{port}", "--token", "v",
                      "--listen", f"{addr}:0", "--rejoin", "false",
                      "--link-latency", str(latency_ms)]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n, addr in zip(NS, ADDR)
    ]
    out, err = coord.communicate(timeout=900)
    for w in workers:
        try:
            w.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.kill()
    if coord.returncode != 0:
        sys.exit(f"{order}: {out[-2000:]}\n{err[-2000:]}")
    return out


def plan_times(bin_, sweep, step_json, net_json, out, batches, workers):
    sh([bin_, "plan", "--sweep", sweep, "--compute", ",".join(step_json), "--network", net_json,
        "--batches", ",".join(map(str, batches)), "--workers", ",".join(map(str, workers)),
        "--out", out])
    with open(os.path.join(out, "plan.csv")) as f:
        return {(int(r["batch"]), int(r["workers"])): r for r in csv.DictReader(f)}


def measured(bin_, out, b, n, lr, target, seed, network, latency_ms):
    """The slowest rank's training wall time, and the steps, of one run to the target."""
    d = os.path.join(out, f"{network}-B{b}-N{n}-s{seed}")
    shutil.rmtree(d, ignore_errors=True)
    args = [*TASK, "--batch", str(b), "--micro", str(MICRO), "--lr", f"{lr}", "--seed", str(seed),
            "--target-loss", f"{target}", "--steps", "100000", "--set", "eval_every=1",
            "--set", "target_window=0.05", "--out", d]
    if network == "loopback":
        sh([bin_, "run", "--workers", str(n), *args])
    else:
        on_netns(bin_, ["coordinator", "--workers", str(n), *args], latency_ms)
    with open(os.path.join(d, "summary.json")) as f:
        s = json.load(f)
    assert s["summary"]["status"] == "COMPLETE", s["summary"]["message"]
    return max(t["wall_s"] for t in s["timing"]), s["summary"]["steps"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/batchlab")
    ap.add_argument("--out", default="runs/plan-validation")
    ap.add_argument("--netns", action="store_true", help="also the shaped link (root)")
    ap.add_argument("--rate", default="20mbit")
    ap.add_argument("--latency-ms", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target-fraction", default="0.1")
    a = ap.parse_args()
    b = os.path.abspath(a.bin)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    sweep = os.path.join(out, "sweep")
    if not os.path.exists(os.path.join(sweep, "analysis.json")):
        print("sweep …", flush=True)
        sh([b, "sweep", *TASK, "--batches", SWEEP_BATCHES, "--micro", str(MICRO),
            "--target-fraction", a.target_fraction, "--steps", "20000", "--out", sweep])
    with open(os.path.join(sweep, "analysis.json")) as f:
        analysis = json.load(f)
    target = analysis["target"]
    lr_of = {t["batch"]: t["lr"] for t in analysis["best"]}
    fit = analysis["fit"]
    print(f"sweep: target {target:.4g}, fit {json.dumps(fit)[:200]}")

    print("bench step …", flush=True)
    step_json = []
    for bb in (64, 1024):
        step_dir = os.path.join(out, f"step-B{bb}")
        sh([b, "bench", "step", *TASK, "--batch", str(bb), "--micro", str(MICRO), "--steps",
            str(max(50, 51200 // bb)), "--workers", "1", "--out", step_dir])
        step_json.append(os.path.join(step_dir, "step.json"))

    nets = [("loopback", 0.0)]
    if a.netns:
        nets += [(f"tbf {a.rate}", 0.0), (f"tbf {a.rate} + {a.latency_ms} ms", a.latency_ms)]
    points = []
    for name, latency in nets:
        net_dir = os.path.join(out, "net-" + name.replace(" ", "_").replace("+", ""))
        print(f"bench allreduce on {name} …", flush=True)
        bench = ["bench", "allreduce", "--algorithms", "ring", "-b", "4K", "-e", "1M", "-n", "20",
                 "--out", net_dir]
        if name == "loopback":
            sh([b, *bench, "--workers", "2"])
            cases = [(64, 1), (256, 1), (1024, 1), (64, 2), (256, 2), (1024, 2)]
        else:
            netns_up(a.rate)
            on_netns(b, [*bench, "--workers", "2"], latency)
            cases = [(64, 2), (256, 2), (1024, 2)]
        pred = plan_times(b, sweep, step_json, os.path.join(net_dir, "allreduce.json"),
                          os.path.join(out, "plan-" + os.path.basename(net_dir)),
                          sorted({c[0] for c in cases}), sorted({c[1] for c in cases}))
        for bb, n in cases:
            runs = [measured(b, out, bb, n, lr_of[bb], target, SEEDS0 + s, name, latency)
                    for s in range(a.seeds)]
            secs = sum(r[0] for r in runs) / len(runs)
            steps = sum(r[1] for r in runs) / len(runs)
            p = pred[(bb, n)]
            row = {
                "network": name, "batch": bb, "workers": n,
                "predicted_s": float(p["time_s"]), "measured_s": secs,
                "predicted_steps": float(p["steps"]), "measured_steps": steps,
                "predicted_step_ms": 1e3 * float(p["step_s"]),
                "measured_step_ms": 1e3 * secs / steps,
            }
            row["ratio"] = row["predicted_s"] / row["measured_s"]
            points.append(row)
            print(f"  {name:>22} B={bb:<5} N={n}: predicted {row['predicted_s']:.3f} s "
                  f"({row['predicted_steps']:.0f} steps × {row['predicted_step_ms']:.3f} ms), "
                  f"measured {secs:.3f} s ({steps:.0f} steps × {row['measured_step_ms']:.3f} ms), "
                  f"ratio {row['ratio']:.2f}", flush=True)
        if name != "loopback":
            netns_down()
    print()
    print(f"{'network':>24} {'B':>5} {'N':>2} {'predicted s':>12} {'measured s':>11} {'ratio':>6}  "
          f"{'pred steps':>10} {'meas steps':>10} {'pred ms/step':>12} {'meas ms/step':>12}")
    for r in points:
        print(f"{r['network']:>24} {r['batch']:>5} {r['workers']:>2} {r['predicted_s']:12.3f} "
              f"{r['measured_s']:11.3f} {r['ratio']:6.2f}  {r['predicted_steps']:10.0f} "
              f"{r['measured_steps']:10.0f} {r['predicted_step_ms']:12.3f} {r['measured_step_ms']:12.3f}")
    within = sum(abs(r["ratio"] - 1) <= 0.2 for r in points)
    print(f"within 20 %: {within} of {len(points)}")
    with open(os.path.join(out, "validation.json"), "w") as f:
        json.dump({"target": target, "fit": fit, "points": points}, f, indent=1)


if __name__ == "__main__":
    main()
