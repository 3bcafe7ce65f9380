#!/usr/bin/env python3
"""PyTorch peer of `cargo bench -p batchlab-core --bench mlp_step`.

One forward + backward step (zero_grad, cross-entropy loss with reduction="sum", backward; no
optimizer) of a 784-256-256-10 ReLU MLP at batch 256, float32, on ONE CPU thread: the same shapes
and work as batchlab's `Mlp::loss_grad`. Prints the step time; the last line is machine-readable:

    torch_mlp_step median_ms=<m> p10_ms=<a> p90_ms=<b>
"""

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="784,256,256,10", help="layer widths, input first")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200, help="timed steps after warmup")
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    widths = [int(w) for w in args.widths.split(",")]
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i + 2 < len(widths):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    x = torch.randn(args.batch, widths[0])
    y = torch.randint(0, widths[-1], (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    def step() -> None:
        model.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    med = statistics.median(times)
    p10 = times[len(times) // 10]
    p90 = times[(9 * len(times)) // 10]
    flops = 2 * args.batch * sum(a * b for a, b in zip(widths[:-1], widths[1:]))  # forward
    flops += flops + 2 * args.batch * sum(a * b for a, b in zip(widths[1:-1], widths[2:]))  # backward
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, batch {args.batch}, widths {widths}")
    print(f"torch_mlp_step median_ms={med:.4f} p10_ms={p10:.4f} p90_ms={p90:.4f} gflops={flops / med / 1e6:.1f}")


if __name__ == "__main__":
    main()
