#!/usr/bin/env bash
# Builds the batchlab container image from nothing: no base image and no registry. The root
# file system holds the binary, the shared libraries it links (as `ldd` lists them, at the
# same paths), an empty /tmp (the workers' Unix sockets) and /results (where the experiment
# commands write when run in a container); the image starts `batchlab`.
#
#   deploy/build-image.sh                 # release build, image batchlab:latest
#   deploy/build-image.sh --tag batchlab:ci --binary target/debug/batchlab
#
# Needs cargo (unless --binary is given), ldd and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="batchlab:latest"
binary=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument '$1' (expected --tag NAME, --binary PATH)" >&2; exit 2 ;;
  esac
done

if [[ -z "$binary" ]]; then
  echo "== cargo build --release"
  cargo build --release --locked -p batchlab-cli
  binary=target/release/batchlab
fi
[[ -x "$binary" ]] || { echo "build-image.sh: no executable at $binary" >&2; exit 2; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/root"
mkdir -p "$root/tmp" "$root/results" "$root/etc"
chmod 1777 "$root/tmp" "$root/results"
# Symbols off: a third of the size; panic messages still name the source line.
strip -o "$root/batchlab" "$binary" 2>/dev/null || cp "$binary" "$root/batchlab"
# Every library the binary needs, with the dynamic loader, where the binary looks for them.
while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done < <(ldd "$binary" | grep -o '/[^ ]*' | sort -u)
# Name lookups: service names from Docker's or the cluster's DNS, then /etc/hosts.
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
printf 'root:x:0:0::/:/batchlab\nnobody:x:65534:65534::/:/batchlab\n' > "$root/etc/passwd"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
WORKDIR /results
ENTRYPOINT ["/batchlab"]
CMD ["--help"]
DOCKERFILE
echo "== docker build -t $tag ($(du -sh "$root" | cut -f1) root file system)"
docker build -q -t "$tag" "$ctx"
echo "built $tag"
