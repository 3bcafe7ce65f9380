#!/usr/bin/env bash
# The compose cluster against a local run. Builds the image from the given binary, brings up a
# coordinator and WORKERS workers (default 3) on a private Docker network, runs a short sweep
# across the containers, checks that every number it wrote (metrics.jsonl, trials.json,
# analysis.json, probe.json) equals, byte for byte, those of the same sweep run in one local
# process, and that each worker joined from its own address. Then a fault: the coordinator's
# container is killed (SIGKILL) in the middle of a second sweep and started again; the workers
# must join it by themselves and the resumed sweep must write the same numbers. Tears
# everything down, also on failure. Run by .ci/run wherever a Docker engine answers.
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
  for p in "$project" "${project}k"; do
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
  done < <(find "$tmp/local" -type f \( -name metrics.jsonl -o -name trials.json -o -name analysis.json -o -name probe.json \) -print0)
  if [[ $compared -lt 8 ]]; then
    echo "only $compared result files to compare; expected every trial's (at least 8)" >&2
    exit 1
  fi
  # And nothing the cluster wrote is missing from the local run.
  extra=$(comm -13 <(cd "$tmp/local" && find . -type f \( -name metrics.jsonl -o -name trials.json -o -name analysis.json -o -name probe.json \) | sort) \
                   <(cd "$dir" && find . -type f \( -name metrics.jsonl -o -name trials.json -o -name analysis.json -o -name probe.json \) | sort))
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
