#!/usr/bin/env bash
# The demo (make demo, after everything is built): a private containerd with the isola shim,
# the locally built busybox image, and one container run in its own VM with
#   ctr run --rm --runtime io.containerd.isola.v2 localhost/isola/busybox:latest demo ...
# printing the guest's kernel next to the host's. containerd is stopped again at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export ISOLA_SHIM_DIR=${ISOLA_SHIM_DIR:-$root/target/release}
export ISOLA_CONFIG=${ISOLA_CONFIG:-$root/build/isola-dev.toml}
image_tar=${IMAGE_TAR:-$root/build/images/busybox.tar}
image=localhost/isola/busybox:latest
dev=scripts/containerd-dev.sh

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

[ -x "$ISOLA_SHIM_DIR/containerd-shim-isola-v2" ] ||
  { echo "no $ISOLA_SHIM_DIR/containerd-shim-isola-v2: run make build" >&2; exit 1; }
[ -f "$image_tar" ] || { echo "no $image_tar: run make images" >&2; exit 1; }
[ -f "$ISOLA_CONFIG" ] || scripts/dev-config.sh "$root" >"$ISOLA_CONFIG"

say "host checks (isola check --no-boot)"
"$root/target/release/isola" check --no-boot

$dev start
trap '$dev stop' EXIT
$dev ctr images import "$image_tar" >/dev/null
say "imported $image"
# A container left by an interrupted demo would block the name.
$dev ctr tasks rm -f demo >/dev/null 2>&1 || true
$dev ctr containers rm demo >/dev/null 2>&1 || true

say "ctr run --rm --runtime io.containerd.isola.v2 $image demo sh -c '...'"
echo "host kernel:  $(uname -r)"
start=$(date +%s.%N)
set +e
# shellcheck disable=SC2016 # expanded in the container
$dev ctr run --rm --runtime io.containerd.isola.v2 --fifo-dir "$root/build/containerd/fifo" \
  "$image" demo sh -c '
    echo "guest kernel: $(uname -r)"
    echo "guest cpus:   $(nproc), memory: $(awk "/MemTotal/ {print int(\$2/1024)}" /proc/meminfo) MiB"
    echo "container:    pid $$ in its PID namespace, $(busybox | head -n 1 | cut -d" " -f1-2)"'
status=$?
set -e
end=$(date +%s.%N)
if [ $status -ne 0 ]; then
  say "ctr run failed (exit $status); containerd's log: build/containerd/containerd.log"
  exit $status
fi
say "done in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') s (VM boot, container, VM stop)"
