#!/usr/bin/env python3
"""batchlab's all-reduce against its peers, side by side, in one run on this machine.

For each world size n and buffer size S it measures, one after another on the same machine:

  batchlab   `batchlab bench allreduce --workers n` (ring by default, int64), twice: on TCP
             (`--transport tcp`, as the peers here) and on Unix sockets (its default between
             workers on one host)
  gloo       torch.distributed's Gloo backend, all_reduce(SUM) of an int64 tensor
  mpi        OpenMPI through mpi4py, Allreduce(SUM) of int64, forced onto TCP (btl tcp,self)
  raw tcp    the exchange limit: n processes in a ring, each sending S·2(n-1)/n bytes to the next
             while receiving as many from the previous, from preallocated buffers

Like batchlab's, the peers' iterations are timed on every rank without a barrier before each
(refilling the buffer is the only work between them), and averaged over ranks and iterations.

It prints bus bandwidth (busbw = S/t · 2(n-1)/n, as nccl-tests), every ratio, the 1 KiB
latency (p50 over all ranks' iterations) and whether each goal of the benchmark holds:
busbw ≥ 1.2× Gloo and ≥ 1.0× MPI at 16–256 MiB, no cliff (busbw at 256 MiB ≥ 0.9× at
16 MiB), and 1 KiB p50 ≤ 2× Gloo's.

It installs what it needs and says so: a virtual environment in bench/peers/.venv with torch,
mpi4py and numpy (pip), and OpenMPI (apt-get) when mpirun is missing. It is a benchmark, not a
test: figures depend on the machine and what else runs on it.

    python3 bench/peers/allreduce_peers.py [--worlds 2,4] [--sizes 16M,64M,256M] [--iters 10]

The last line is machine-readable JSON (prefix `peers_json=`).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = HERE / ".venv"


def size_bytes(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(s[:-1] if s[-1:] in "KMG" else s) * mult


def ensure_env() -> str:
    """A Python with torch, mpi4py and numpy, and mpirun on PATH; installs what is missing."""
    if shutil.which("mpirun") is None:
        print("# installing OpenMPI with apt-get (openmpi-bin libopenmpi-dev)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "openmpi-bin", "libopenmpi-dev"], check=True,
                       stdout=subprocess.DEVNULL)
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import torch, mpi4py, numpy"]
    if not py.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        print(f"# installing torch, mpi4py and numpy with pip into {VENV} (a few GB, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch", "mpi4py", "numpy"], check=True)
    return str(py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busbw(size: int, n: int, t: float) -> float:
    return size / t * 2 * (n - 1) / n / 1e9


def percentile(xs, q):
    xs = sorted(xs)
    k = max(1, min(len(xs), int(-(-q * len(xs) // 1))))
    return xs[k - 1]


# ---------------------------------------------------------------- the peers' worker programs

GLOO_WORKER = r"""
import json, os, sys, time
import torch, torch.distributed as dist
sizes, iters, warmup, lat_iters = json.loads(sys.argv[1])
torch.set_num_threads(1)
dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
out = {}
for size in sizes + [1024]:
    n_iter = lat_iters if size == 1024 else iters
    x = torch.ones(size // 8, dtype=torch.int64)
    times = []
    for i in range(warmup + n_iter):
        x.fill_(1)
        t0 = time.perf_counter()
        dist.all_reduce(x)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
    assert int(x[0]) == dist.get_world_size(), "wrong sum"
    out[str(size)] = times
if dist.get_rank() == 0:
    gathered = [None] * dist.get_world_size()
else:
    gathered = None
dist.gather_object(out, gathered, dst=0)
if dist.get_rank() == 0:
    print("RESULT " + json.dumps(gathered))
dist.destroy_process_group()
"""

MPI_WORKER = r"""
import json, sys, time
import numpy as np
from mpi4py import MPI
sizes, iters, warmup, lat_iters = json.loads(sys.argv[1])
comm = MPI.COMM_WORLD
out = {}
for size in sizes + [1024]:
    n_iter = lat_iters if size == 1024 else iters
    x = np.ones(size // 8, dtype=np.int64)
    times = []
    for i in range(warmup + n_iter):
        x.fill(1)
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
    assert int(x[0]) == comm.Get_size(), "wrong sum"
    out[str(size)] = times
gathered = comm.gather(out, root=0)
if comm.Get_rank() == 0:
    print("RESULT " + json.dumps(gathered))
"""

RAW_WORKER = r"""
import json, os, socket, sys, threading, time
sizes, iters, warmup, base_port = json.loads(sys.argv[1])
rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", base_port + rank)); srv.listen(1)
deadline = time.time() + 30
while True:
    try:
        right = socket.create_connection(("127.0.0.1", base_port + (rank + 1) % n)); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.05)
left, _ = srv.accept()
for s in (left, right):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def exchange(nbytes, sendbuf, recvbuf):
    view = memoryview(recvbuf)
    def rx():
        got = 0
        while got < nbytes:
            got += left.recv_into(view[got:nbytes])
    t = threading.Thread(target=rx); t.start()
    right.sendall(memoryview(sendbuf)[:nbytes])
    t.join()
out = {}
for size in sizes:
    nbytes = size * 2 * (n - 1) // n
    sendbuf, recvbuf = bytearray(nbytes), bytearray(nbytes)
    times = []
    for i in range(warmup + iters):
        exchange(1, sendbuf, recvbuf)  # a token around the ring as the barrier
        t0 = time.perf_counter()
        exchange(nbytes, sendbuf, recvbuf)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
    out[str(size)] = times
print("RESULT " + json.dumps(out), flush=True)
"""


def spawn_ranks(py: str, program: str, arg, n: int, extra_env=None, timeout=1200):
    env_base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                    WORLD_SIZE=str(n), OMP_NUM_THREADS="1")
    env_base.update(extra_env or {})
    procs = [subprocess.Popen([py, "-c", program, json.dumps(arg)], env=dict(env_base, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(n)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (o, e) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"peer rank failed ({p.returncode}): {e[-2000:]}")
    return [json.loads(o.split("RESULT ", 1)[1]) for o, _ in outs if "RESULT " in o]


def gloo(py, sizes, n, iters, warmup, lat_iters):
    res = spawn_ranks(py, GLOO_WORKER, [sizes, iters, warmup, lat_iters], n)[0]
    return merge(res)


def mpi(py, sizes, n, iters, warmup, lat_iters):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(MPI_WORKER)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(n),
           "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo", "--mca", "pml", "ob1",
           py, f.name, json.dumps([sizes, iters, warmup, lat_iters])]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    os.unlink(f.name)
    if p.returncode != 0 or "RESULT " not in p.stdout:
        raise RuntimeError(f"mpirun failed ({p.returncode}): {p.stderr[-2000:]}")
    return merge(json.loads(p.stdout.split("RESULT ", 1)[1]))


def raw_tcp(py, sizes, n, iters, warmup):
    return merge(spawn_ranks(py, RAW_WORKER, [sizes, iters, warmup, free_port()], n))


def merge(per_rank):
    merged = {}
    for r in per_rank:
        for k, v in r.items():
            merged.setdefault(k, []).extend(v)
    return merged


def batchlab(binary, sizes, n, iters, warmup, lat_iters, algorithm, transport):
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for size in sizes + [1024]:
            n_iter = lat_iters if size == 1024 else iters
            cmd = [binary, "bench", "allreduce", "--workers", str(n), "-b", str(size), "-e", str(size),
                   "-n", str(n_iter), "-w", str(warmup), "-a", algorithm, "--transport", transport,
                   "--out", d]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            if p.returncode != 0:
                raise RuntimeError(f"batchlab failed: {p.stdout[-1000:]}{p.stderr[-2000:]}")
            row = json.load(open(os.path.join(d, "allreduce.json")))["rows"][0]
            out[str(size)] = {"time_s": row["time_us"] * 1e-6, "p50_s": row["p50_us"] * 1e-6}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--sizes", default="16M,64M,256M")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--latency-iters", type=int, default=300)
    ap.add_argument("--algorithm", default="ring", help="batchlab's algorithm")
    ap.add_argument("--batchlab", default=str(ROOT / "target" / "release" / "batchlab"))
    args = ap.parse_args()
    if not Path(args.batchlab).exists():
        print("# building batchlab (cargo build --release)", flush=True)
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    py = ensure_env()
    sizes = [size_bytes(s) for s in args.sizes.split(",")]
    worlds = [int(w) for w in args.worlds.split(",")]
    print(f"# {os.cpu_count()} cores; int64 elements; iterations {args.iters} (1 KiB: {args.latency_iters}); "
          f"batchlab {args.algorithm}; MPI on btl tcp,self (loopback)", flush=True)
    results = []
    for n in worlds:
        print(f"# n = {n}: batchlab (TCP, then Unix sockets) ...", flush=True)
        ours = batchlab(args.batchlab, sizes, n, args.iters, args.warmup, args.latency_iters, args.algorithm, "tcp")
        ours_unix = batchlab(args.batchlab, sizes, n, args.iters, args.warmup, args.latency_iters, args.algorithm,
                             "auto")
        print(f"# n = {n}: gloo ...", flush=True)
        g = gloo(py, sizes, n, args.iters, args.warmup, args.latency_iters)
        print(f"# n = {n}: mpi ...", flush=True)
        m = mpi(py, sizes, n, args.iters, args.warmup, args.latency_iters)
        print(f"# n = {n}: raw tcp ...", flush=True)
        raw = raw_tcp(py, sizes, n, args.iters, args.warmup)
        for size in sizes:
            k = str(size)
            mean = lambda xs: sum(xs) / len(xs)
            row = {
                "n": n, "bytes": size,
                "batchlab": busbw(size, n, ours[k]["time_s"]),
                "batchlab_unix": busbw(size, n, ours_unix[k]["time_s"]),
                "gloo": busbw(size, n, mean(g[k])),
                "mpi": busbw(size, n, mean(m[k])),
                # The ring exchange moves S·2(n-1)/n per link: its busbw is bytes per second per link.
                "raw_tcp": size * 2 * (n - 1) / n / mean(raw[k]) / 1e9,
            }
            results.append(row)
        lat = {"n": n, "bytes": 1024, "batchlab_p50_us": ours["1024"]["p50_s"] * 1e6,
               "batchlab_unix_p50_us": ours_unix["1024"]["p50_s"] * 1e6,
               "gloo_p50_us": percentile(g["1024"], 0.5) * 1e6, "mpi_p50_us": percentile(m["1024"], 0.5) * 1e6}
        results.append(lat)

    print()
    print("busbw GB/s; batchlab on TCP (as Gloo and MPI here) and on Unix sockets (its default between"
          " workers on one host)")
    print(f"{'n':>2} {'size':>10} {'tcp':>7} {'unix':>7} {'gloo':>7} {'mpi':>7} {'raw tcp':>8}   "
          f"{'tcp÷gloo':>8} {'tcp÷mpi':>7} {'unix÷gloo':>9} {'unix÷mpi':>8}")
    for r in results:
        if "batchlab" in r:
            print(f"{r['n']:>2} {r['bytes']:>10} {r['batchlab']:>7.3f} {r['batchlab_unix']:>7.3f} {r['gloo']:>7.3f} "
                  f"{r['mpi']:>7.3f} {r['raw_tcp']:>8.3f}   {r['batchlab'] / r['gloo']:>8.2f} "
                  f"{r['batchlab'] / r['mpi']:>7.2f} {r['batchlab_unix'] / r['gloo']:>9.2f} "
                  f"{r['batchlab_unix'] / r['mpi']:>8.2f}")
    print()
    print(f"{'n':>2} {'1 KiB p50 us':>13} {'tcp':>7} {'unix':>7} {'gloo':>7} {'mpi':>7}   {'tcp÷gloo':>8}")
    for r in results:
        if "gloo_p50_us" in r:
            print(f"{r['n']:>2} {'':>13} {r['batchlab_p50_us']:>7.1f} {r['batchlab_unix_p50_us']:>7.1f} "
                  f"{r['gloo_p50_us']:>7.1f} {r['mpi_p50_us']:>7.1f}   {r['batchlab_p50_us'] / r['gloo_p50_us']:>8.2f}")
    print()
    goals = []
    for n in worlds:
        bw = [r for r in results if r["n"] == n and "batchlab" in r]
        for key, name in [("batchlab", "tcp"), ("batchlab_unix", "unix")]:
            goals.append((f"n={n} {name}: busbw ≥ 1.2× Gloo at every size",
                          all(r[key] >= 1.2 * r["gloo"] for r in bw)))
            goals.append((f"n={n} {name}: busbw ≥ 1.0× MPI at every size", all(r[key] >= r["mpi"] for r in bw)))
            if len(bw) >= 2:
                goals.append((f"n={n} {name}: no cliff (busbw at {bw[-1]['bytes']} ≥ 0.9× at {bw[0]['bytes']})",
                              bw[-1][key] >= 0.9 * bw[0][key]))
        lat = next(r for r in results if r["n"] == n and "gloo_p50_us" in r)
        goals.append((f"n={n}: 1 KiB p50 ≤ 2× Gloo's", lat["batchlab_p50_us"] <= 2 * lat["gloo_p50_us"]))
    for g, ok in goals:
        print(f"{'MET ' if ok else 'MISS'}  {g}")
    print("peers_json=" + json.dumps({"results": results, "goals": {g: ok for g, ok in goals}}))


if __name__ == "__main__":
    main()
