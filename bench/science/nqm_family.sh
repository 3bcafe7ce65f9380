#!/usr/bin/env bash
# The default sweep's critical batch size against the closed-form optimum over a family of
# noisy quadratic models (docs/science.md#coverage): dimension d, curvature exponent p
# (h_i = 1/i^p), noise exponent q (c_i = 1/i^q; q = p is C = H), and target (a fraction of
# the initial loss). For each case it runs `batchlab sweep` with its defaults and prints the
# measured B_crit with its 95 % interval, the closed form's, their ratio, and whether the
# interval covers the closed form.
#
#   bench/science/nqm_family.sh [BATCHLAB] [OUT]      (defaults: target/release/batchlab, runs/nqm-family)
#
# The whole family takes about half an hour on 2 cores (d = 1000 dominates); set CASES to a
# subset, e.g. CASES="20:1:1:0.01 100:1:1:0.01". Every trial keeps every step's metrics of
# every seed, so the slow cases write several GB each (d = 100, p = 2: over 4 GB): give OUT a
# disk with room, and delete it after.
set -euo pipefail
bin=${1:-target/release/batchlab}
out=${2:-runs/nqm-family}
cases=${CASES:-"20:1:1:0.01 50:1:1:0.01 100:1:1:0.01 300:1:1:0.01 1000:1:1:0.01
100:0.5:0.5:0.01 100:2:2:0.01 100:1:0:0.01 100:1:0.5:0.01 100:1:2:0.01 100:1:1:0.05
100:1:1:0.002"}
mkdir -p "$out"
printf '%6s %5s %5s %7s %10s %17s %10s %7s %7s %7s\n' d p q target 'B_crit' '95% interval' 'closed' ratio covers seconds
for c in $cases; do
  IFS=: read -r d p q frac <<<"$c"
  dir="$out/d$d-p$p-q$q-t$frac"
  start=$(date +%s)
  "$bin" sweep --out "$dir" --set "task.dim=$d" --set "task.power=$p" --set "task.noise_power=$q" \
    --target-fraction "$frac" --max-batch 4096 --steps 100000 >"$dir.log" 2>&1 || {
      echo "d=$d p=$p q=$q target=$frac: the sweep failed, see $dir.log"; continue; }
  secs=$(( $(date +%s) - start ))
  python3 - "$dir/analysis.json" "$d" "$p" "$q" "$frac" "$secs" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
d, p, q, frac, secs = sys.argv[2:7]
fit, truth, iv = a.get("fit"), a.get("theory_fit"), a.get("interval")
b = fit["b_crit"] if fit else float("nan")
t = truth["b_crit"] if truth else float("nan")
if iv:
    lo, hi = iv["b_crit"]["lo"], iv["b_crit"]["hi"]
    interval, covers = f"{lo:.0f}-{hi:.0f}", "yes" if lo <= t <= hi else "NO"
else:
    interval, covers = "none", "-"
    if not a.get("in_range", True):
        interval = "out of range"
print(f"{d:>6} {p:>5} {q:>5} {frac:>7} {b:>10.0f} {interval:>17} {t:>10.0f} {b / t:>7.2f} {covers:>7} {secs:>7}")
PY
done
