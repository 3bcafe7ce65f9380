#!/usr/bin/env bash
# The compose cluster against a local run. Builds the image from the given binary, brings up a
# coordinator and WORKERS workers (default 3) on a private Docker network, runs a short sweep
# across the containers, checks that every number it wrote (metrics.jsonl, trials.json,
# analysis.json, probe.json) equals, byte for byte, those of the same sweep run in one local
# process, and that each worker joined from its own address; then tears everything down,
# also on failure. Run by .ci/run wherever a Docker engine answers.
#
#   deploy/compose/test.sh [BINARY]      # default target/release/batchlab
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=$(realpath "${1:-$root/target/release/batchlab}")
workers=${WORKERS:-3}
project="batchlabtest$$"
image="batchlab:compose-test-$$"
tmp=$(mktemp -d)
if command -v docker-compose >/dev/null; then dc=(docker-compose); else dc=(docker compose); fi
compose() { "${dc[@]}" -p "$project" -f "$here/docker-compose.yml" "$@"; }

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "== compose test failed ($rc); the containers' logs:" >&2
    compose logs --no-color 2>&1 | tail -n 60 >&2 || true
  fi
  compose down -v --remove-orphans -t 2 >/dev/null 2>&1 || true
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
compared=0
while IFS= read -r -d '' f; do
  rel=${f#"$tmp/local/"}
  other="$tmp/results/study/$rel"
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
                 <(cd "$tmp/results/study" && find . -type f \( -name metrics.jsonl -o -name trials.json -o -name analysis.json -o -name probe.json \) | sort))
if [[ -n "$extra" ]]; then
  echo "the compose cluster wrote result files the local run did not: $extra" >&2
  exit 1
fi
echo "compose test passed: $workers workers on distinct hosts, $compared result files identical to the local run"
