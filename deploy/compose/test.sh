#!/usr/bin/env bash
# The compose cluster against a local run. Builds the image from the given binary, brings up a
# coordinator and WORKERS workers (default 3) on a private Docker network, runs a short sweep
# across the containers, checks that every number it wrote (metrics.csv, trials.json,
# analysis.json, probe.json) equals, byte for byte, those of the same sweep run in one local
# process, and that each worker joined from its own address. Then a fault: the coordinator's
# container is killed (SIGKILL) in the middle of a second sweep and started again; the workers
# must join it by themselves and the resumed sweep must write the same numbers. Then elastic
# membership: one run on three workers with --min-workers 2; one worker's container is killed
# (SIGKILL) mid-run, then another is cut off the network (docker network disconnect) and
# restored; the run pauses below its minimum, takes the restored worker back, and its rows and
# summary must equal `batchlab train`'s. Tears everything down, also on failure. Run by .ci/run
# wherever a Docker engine answers.
#
#   deploy/compose/test.sh [BINARY]      # default target/release/batchlab
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=$(realpath "${1:-$root/target/release/batchlab}")
workers=${WORKERS:-3}
project="batchlabtest$$"
proj="$project"
image="batchlab:compose-test-$$"
tmp=$(mktemp -d)
if command -v docker-compose >/dev/null; then dc=(docker-compose); else dc=(docker compose); fi
compose() { "${dc[@]}" -p "$proj" -f "$here/docker-compose.yml" "$@"; }

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "== compose test failed ($rc); the containers' logs:" >&2
    compose logs --no-color 2>&1 | tail -n 60 >&2 || true
  fi
  for p in "$project" "${project}k" "${project}e"; do
    proj=$p compose down -v --remove-orphans -t 2 >/dev/null 2>&1 || true
  done
  docker image rm -f "$image" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT INT TERM

"$root/deploy/build-image.sh" --tag "$image" --binary "$binary"

args="--set task.dim=12 --batches 2,32 --seeds 2 --lr-grid 0.3:1.2:3 --target-fraction 0.05 --steps 400 --probe-samples 2048"
echo "== local run"
# shellcheck disable=SC2086
"$binary" sweep --out "$tmp/local" $args >"$tmp/local.log" 2>&1 || { cat "$tmp/local.log" >&2; exit 1; }

echo "== compose run: a coordinator and $workers workers"
mkdir -p "$tmp/results"
export BATCHLAB_IMAGE="$image" BATCHLAB_RESULTS="$tmp/results" BATCHLAB_WORKERS="$workers" \
  BATCHLAB_RUN=study BATCHLAB_ARGS="$args" BATCHLAB_UID="$(id -u)" BATCHLAB_GID="$(id -g)" \
  BATCHLAB_CONNECT_TIMEOUT=60 RUST_LOG=info \
  BATCHLAB_TOKEN="$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
compose up -d --scale worker="$workers" >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; exit 1; }
# The coordinator's exit status is the experiment's; the workers leave when it releases them.
coordinator=$(compose ps -q coordinator)
status=$(timeout 600 docker wait "$coordinator") || { echo "the coordinator did not finish in 600 s" >&2; exit 1; }
compose logs --no-color >"$tmp/compose.log" 2>&1
if [[ "$status" != 0 ]]; then
  echo "the coordinator exited with $status:" >&2
  tail -n 80 "$tmp/compose.log" >&2
  exit 1
fi

echo "== checks"
# Every worker left cleanly once released.
for w in $(compose ps -q worker); do
  ws=$(timeout 30 docker wait "$w") || { echo "worker $w still running 30 s after the run" >&2; exit 1; }
  [[ "$ws" == 0 ]] || { echo "worker $w exited with $ws" >&2; exit 1; }
done
# Each worker joined from a container of its own: as many distinct addresses as workers.
joined=$(grep -o 'worker joined addr="\?[^ "]*' "$tmp/compose.log" | sed 's/.*addr="\?//; s/:[0-9]*$//' | sort -u | wc -l)
if [[ "$joined" -ne "$workers" ]]; then
  echo "expected $workers workers joining from distinct hosts, saw $joined:" >&2
  grep 'worker joined' "$tmp/compose.log" >&2 || true
  exit 1
fi
# Compares every number of the study in $1 with the local run's; sets `compared`.
same_numbers() {
  local dir=$1
  compared=0
  while IFS= read -r -d '' f; do
    rel=${f#"$tmp/local/"}
    other="$dir/$rel"
    if ! cmp -s "$f" "$other"; then
      echo "differs between the local run and the compose cluster: $rel" >&2
      diff <(head -c 2000 "$f") <(head -c 2000 "$other" 2>/dev/null) >&2 || true
      exit 1
    fi
    compared=$((compared + 1))
  done < <(find "$tmp/local" -type f \( -name metrics.csv -o -name trials.json -o -name analysis.json -o -name probe.json \) -print0)
  if [[ $compared -lt 8 ]]; then
    echo "only $compared result files to compare; expected every trial's (at least 8)" >&2
    exit 1
  fi
  # And nothing the cluster wrote is missing from the local run.
  extra=$(comm -13 <(cd "$tmp/local" && find . -type f \( -name metrics.csv -o -name trials.json -o -name analysis.json -o -name probe.json \) | sort) \
                   <(cd "$dir" && find . -type f \( -name metrics.csv -o -name trials.json -o -name analysis.json -o -name probe.json \) | sort))
  if [[ -n "$extra" ]]; then
    echo "the compose cluster wrote result files the local run did not: $extra" >&2
    exit 1
  fi
}
same_numbers "$tmp/results/study"
echo "compose test passed: $workers workers on distinct hosts, $compared result files identical to the local run"

echo "== fault: the coordinator's container killed mid-sweep and started again"
proj="${project}k"
mkdir -p "$tmp/results2"
# Workers slowed by 2 ms a step so that the kill lands between the first and the last trial.
export BATCHLAB_RESULTS="$tmp/results2" BATCHLAB_WORKER_ARGS="--inject-delay 2"
compose up -d --scale worker="$workers" >"$tmp/up2.log" 2>&1 || { cat "$tmp/up2.log" >&2; exit 1; }
coordinator=$(compose ps -q coordinator)
waited=0
until [[ -n "$(find "$tmp/results2" -name summary.json 2>/dev/null | head -n 1)" ]]; do
  sleep 0.05
  waited=$((waited + 1))
  [[ $waited -lt 2400 ]] || { echo "no trial finished in 120 s" >&2; exit 1; }
done
killed_at=$(date +%s.%N)
compose kill coordinator >/dev/null 2>&1
first=$(timeout 30 docker wait "$coordinator")
[[ "$first" != 0 ]] || { echo "the sweep finished before the kill" >&2; exit 1; }
sleep 1
restarted_at=$(date +%s.%N)
compose up -d --no-deps coordinator >>"$tmp/up2.log" 2>&1 || { cat "$tmp/up2.log" >&2; exit 1; }
coordinator=$(compose ps -q coordinator)
status=$(timeout 600 docker wait "$coordinator") || { echo "the restarted coordinator did not finish" >&2; exit 1; }
compose logs --no-color -t >"$tmp/compose2.log" 2>&1
[[ "$status" == 0 ]] || { echo "the restarted coordinator exited with $status" >&2; tail -n 80 "$tmp/compose2.log" >&2; exit 1; }
for w in $(compose ps -q worker); do
  ws=$(timeout 30 docker wait "$w") || { echo "worker $w still running 30 s after the run" >&2; exit 1; }
  [[ "$ws" == 0 ]] || { echo "worker $w exited with $ws" >&2; exit 1; }
done
rejoined=$(grep -c "joining again" "$tmp/compose2.log" || true)
if [[ "$rejoined" -lt "$workers" ]]; then
  echo "expected all $workers workers to join again, saw $rejoined:" >&2
  tail -n 60 "$tmp/compose2.log" >&2
  exit 1
fi
same_numbers "$tmp/results2/study"
# When the workers noticed, and when they were back (the log's own timestamps).
stamp() { date -d "$1" +%s.%N; }
noticed=$(grep "joining again" "$tmp/compose2.log" | head -n 1 | grep -o '20[0-9-]*T[0-9:.]*Z' | head -n 1)
back=$(grep "joined rank" "$tmp/compose2.log" | grep -o '20[0-9-]*T[0-9:.]*Z' | sort | tail -n 1)
if [[ -n "$noticed" && -n "$back" ]]; then
  awk -v k="$killed_at" -v n="$(stamp "$noticed")" -v r="$restarted_at" -v b="$(stamp "$back")" \
    'BEGIN { printf "a worker noticed the loss %.3f s after the kill; all were back %.3f s after the restart\n", n - k, b - r }'
fi
echo "fault test passed: $rejoined workers joined the restarted coordinator, $compared result files identical to the local run"

echo "== elastic: a worker killed, another cut off the network and restored, mid-run"
proj="${project}e"
mkdir -p "$tmp/results3"
run="--task mlp --set task.hidden=[16] --set task.data.input_dim=24 --set task.data.classes=4 --set task.data.train_size=1024 --set task.data.eval_size=256 --set optimizer.kind=\"momentum\" --set optimizer.momentum=0.9 --batch 48 --micro 8 --lr 0.05 --steps 1000 --set eval_every=25"
# shellcheck disable=SC2086
"$binary" train --out "$tmp/alone" $run >"$tmp/alone.log" 2>&1 || { cat "$tmp/alone.log" >&2; exit 1; }
export BATCHLAB_RESULTS="$tmp/results3" BATCHLAB_EXPERIMENT=coordinator BATCHLAB_RUN=run \
  BATCHLAB_ARGS="$run --min-workers 2 --heartbeat-timeout-ms 1500" \
  BATCHLAB_WORKER_ARGS="--inject-delay 4"
compose up -d --scale worker="$workers" >"$tmp/up3.log" 2>&1 || { cat "$tmp/up3.log" >&2; exit 1; }
coordinator=$(compose ps -q coordinator)
mapfile -t ws < <(compose ps -q worker)
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "${ws[0]}")
rows() { wc -l <"$tmp/results3/run/metrics.csv" 2>/dev/null || echo 0; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 50 ms
  local limit=$1 what=$2 n=0
  shift 2
  until "$@"; do
    sleep 0.05
    n=$((n + 1))
    [[ $n -lt $((limit * 20)) ]] || { echo "$what did not happen in $limit s" >&2; exit 1; }
  done
}
# Conditions for wait_for, evaluated afresh at each poll.
rows_above() { [[ $(rows) -gt $1 ]]; }
logged() { docker logs "$coordinator" 2>&1 | grep -q "$1"; }
wait_for 120 "100 rows" rows_above 99
killed_at=$(date +%s.%N); rows_at_kill=$(rows)
docker kill -s KILL "${ws[1]}" >/dev/null
wait_for 60 "generation 2" logged "generation 2 formed"
formed2_at=$(date +%s.%N)
wait_for 60 "rows after the regroup" rows_above "$((rows_at_kill + 20))"
cut_at=$(date +%s.%N)
docker network disconnect "$network" "${ws[2]}"
wait_for 60 "the pause" logged "paused: 1 workers left"
paused_at=$(date +%s.%N)
docker network connect "$network" "${ws[2]}"
wait_for 60 "generation 3" logged "generation 3 formed with 2 workers"
formed3_at=$(date +%s.%N)
status=$(timeout 600 docker wait "$coordinator") || { echo "the elastic run did not finish" >&2; exit 1; }
compose logs --no-color -t >"$tmp/compose3.log" 2>&1
[[ "$status" == 0 ]] || { echo "the elastic run's coordinator exited with $status" >&2; tail -n 80 "$tmp/compose3.log" >&2; exit 1; }
cmp -s "$tmp/alone/metrics.csv" "$tmp/results3/run/metrics.csv" || { echo "the elastic run's rows differ from train's" >&2; exit 1; }
want=$(grep -o '"params_digest": *"[^"]*"' "$tmp/alone/summary.json")
got=$(grep -o '"params_digest": *"[^"]*"' "$tmp/results3/run/summary.json")
[[ -n "$want" && "$want" == "$got" ]] || { echo "final parameters differ: train $want, elastic $got" >&2; exit 1; }
grep -q "took the run's state from rank" "$tmp/compose3.log" || { echo "no worker took the state from a peer" >&2; exit 1; }
awk -v k="$killed_at" -v f2="$formed2_at" -v c="$cut_at" -v p="$paused_at" -v f3="$formed3_at" \
  'BEGIN { printf "killed worker: generation 2 formed %.2f s after the kill (heartbeat timeout 1.5 s); cut-off worker: paused %.2f s after the cut, generation 3 formed %.2f s after the network came back\n", f2 - k, p - c, f3 - p }'
# What each worker did: regroups and state handed over (steps redone are the applies behind).
grep -h -e "regrouped into" -e "took the run's state" -e "resuming at step" "$tmp/compose3.log" | sed 's/^/  /' || true
echo "elastic test passed: $(rows) rows and the final parameters equal train's after a kill -9 and a network cut"
