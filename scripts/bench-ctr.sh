#!/usr/bin/env bash
# make bench, the containerd part: `ctr run --rm <image> true` start-to-exit for isola and for
# runc side by side (alternating runs, one private containerd), next to the bare VM boot floor
# measured by `isola bench boot` in the same run (floor and agent-ready for the configured,
# default kernel and, when build/guest/debian/ has it, for the Debian kernel too, with their
# ratio), then `ctr run --rm` with that Debian kernel (runtime options' ConfigPath) in the same
# alternating loop, with the ratio of the two kernels; then the host memory of one idle pod;
# then the exec round trip (`ctr task exec <running container> true`) into that pod and into a
# runc container. `ctr run --rm` also runs with `[factory] template = true` (runtime options'
# ConfigPath) in the same alternating loop: every VM a clone of a VM template, built by the
# warm-up run and removed at the end; its ratio to the floor is the line
# `ratio template/cold-boot floor: <x>`.
#
#   scripts/bench-ctr.sh [runs]        (after make build guest images)
set -euo pipefail

runs=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export ISOLA_SHIM_DIR=${ISOLA_SHIM_DIR:-$root/target/release}
dev_config=${ISOLA_CONFIG:-$root/build/isola-dev.toml}
export CONTAINERD_DIR=$root/build/containerd-bench
export CTR_NAMESPACE=isola-bench
image=localhost/isola/busybox:latest
dev=scripts/containerd-dev.sh
[ -f "$dev_config" ] || scripts/dev-config.sh "$root" >"$dev_config"
# Cold boots by default (VM templates are on by default; they get their own runs below).
export ISOLA_CONFIG=$root/build/isola-dev-cold.toml
{ cat "$dev_config"; printf '\n[factory]\ntemplate = false\n'; } >"$ISOLA_CONFIG"

now() { date +%s.%N; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# The VM floor and isola's own boot, for both kernels.
compare=()
if [ -f build/guest/debian/vmlinux ] && [ -f build/guest/debian/initrd.img ]; then
  compare=(--compare-kernel build/guest/debian/vmlinux --compare-initrd build/guest/debian/initrd.img)
fi
boot_out=$("$root/target/release/isola" --log error bench boot --runs "$runs" \
  --floor-initrd build/guest/floor-initrd.img "${compare[@]}")
echo "$boot_out"
floor=$(echo "$boot_out" | awk '$1 == "default" && $2 == "floor" { for (i = 1; i <= NF; i++) if ($i == "median") print $(i + 1) }')

$dev start >/dev/null
trap '$dev stop >/dev/null' EXIT
$dev ctr images import build/images/busybox.tar >/dev/null

run_once() { # <runtime> <name> [ctr run options]
  local t0 t1 runtime=$1 name=$2
  shift 2
  t0=$(now)
  $dev ctr run --rm --runtime "$runtime" "$@" "$image" "$name" true >/dev/null
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
# The same runtime with the Debian kernel, through the runtime options' ConfigPath (what the CRI
# plugin's `options.ConfigPath` sets), when the guest build has it.
debian_opts=()
if [ ${#compare[@]} -gt 0 ]; then
  debian_config=$root/build/isola-dev-debian.toml
  sed -e "s|^kernel *=.*|kernel = \"$root/build/guest/debian/vmlinux\"|" \
    -e "s|^initrd *=.*|initrd = \"$root/build/guest/debian/initrd.img\"|" \
    "$ISOLA_CONFIG" >"$debian_config"
  debian_opts=(--runtime-config-path "$debian_config")
fi
# The same runtime starting every VM from a VM template.
template_config=$root/build/isola-dev-template.toml
{ cat "$dev_config"; printf '\n[factory]\ntemplate = true\n'; } >"$template_config"
template_opts=(--runtime-config-path "$template_config")
trap '$dev stop >/dev/null; "$root/target/release/isola" --config "$template_config" template rm --all >/dev/null 2>&1 || true' EXIT
# One unmeasured run of each warms caches (the template one builds the template).
run_once io.containerd.runc.v2 warm-r >/dev/null
run_once io.containerd.isola.v2 warm-i >/dev/null
run_once io.containerd.isola.v2 warm-t "${template_opts[@]}" >/dev/null
[ ${#debian_opts[@]} -eq 0 ] || run_once io.containerd.isola.v2 warm-d "${debian_opts[@]}" >/dev/null
isola_t="" runc_t="" debian_t="" template_t=""
for n in $(seq 1 "$runs"); do
  runc_t="$runc_t $(run_once io.containerd.runc.v2 bench-r-"$n")"
  isola_t="$isola_t $(run_once io.containerd.isola.v2 bench-i-"$n")"
  template_t="$template_t $(run_once io.containerd.isola.v2 bench-t-"$n" "${template_opts[@]}")"
  [ ${#debian_opts[@]} -eq 0 ] ||
    debian_t="$debian_t $(run_once io.containerd.isola.v2 bench-d-"$n" "${debian_opts[@]}")"
done
mi=$(echo "$isola_t" | median)
mr=$(echo "$runc_t" | median)
guest_kernel=$(sed -n 's/^kernel *= *"\(.*\)"/\1/p' "$ISOLA_CONFIG" | head -n 1)
echo "bench-ctr: ctr run --rm $image true, $runs runs each (alternating), guest kernel ${guest_kernel:-(configuration default)}"
printf '  runc   median %6.3f s   [%s ]\n' "$mr" "$runc_t"
printf '  isola  median %6.3f s   [%s ]\n' "$mi" "$isola_t"
printf '  ratio isola/VM floor: %s  (aim <= 1.25)   ratio isola/runc: %s\n' "$(ratio "$mi" "$floor")" "$(ratio "$mi" "$mr")"
mt=$(echo "$template_t" | median)
printf '  isola, VM template  median %6.3f s   [%s ]\n' "$mt" "$template_t"
echo "ratio template/cold-boot floor: $(ratio "$mt" "$floor")"
printf '  ratio template/cold boot: %s  ratio template/runc: %s\n' "$(ratio "$mt" "$mi")" "$(ratio "$mt" "$mr")"
if [ -n "$debian_t" ]; then
  md=$(echo "$debian_t" | median)
  printf '  isola, Debian kernel  median %6.3f s   [%s ]\n' "$md" "$debian_t"
  printf '  ratio default kernel/Debian kernel: %s  (issue 6: the order of the agent-ready ratio, <= 0.55)\n' "$(ratio "$mi" "$md")"
fi

# Host memory of one idle pod: PSS of the shim, qemu and the helper daemons.
$dev ctr run -d --runtime io.containerd.isola.v2 "$image" bench-idle sleep 3600 >/dev/null
sleep 3
shim=$(pgrep -f -- "containerd-shim-isola-v2 .*-id bench-idle" | head -n 1)
pss() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
total=0
line=""
for pid in $shim $(pgrep -P "$shim") $(for c in $(pgrep -P "$shim"); do pgrep -P "$c"; done); do
  kb=$(pss "$pid")
  total=$((total + kb))
  line="$line $(cat "/proc/$pid/comm" 2>/dev/null || echo "?")=$((kb / 1024))MiB"
done
echo "bench-mem: one idle pod (PSS):$line  total $((total / 1024)) MiB"
fixed=$(awk '$1 == "memory:" { gsub(/"/, "", $2); print $2 }' deploy/runtimeclass.yaml)
echo "  RuntimeClass overhead.podFixed.memory (deploy/runtimeclass.yaml): $fixed; keep it above the total"

# Exec round trip: `ctr task exec --exec-id e<n> <ctr> true`, start to exit, into the idle pod
# and into a running runc container (alternating; one unmeasured exec each first).
$dev ctr run -d --runtime io.containerd.runc.v2 "$image" bench-exec-r sleep 3600 >/dev/null
exec_once() { # <container> <exec id>
  local t0 t1
  t0=$(now)
  $dev ctr task exec --exec-id "$2" "$1" true >/dev/null
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
exec_once bench-exec-r ew >/dev/null
exec_once bench-idle ew >/dev/null
exec_i="" exec_r=""
for n in $(seq 1 "$runs"); do
  exec_r="$exec_r $(exec_once bench-exec-r "e$n")"
  exec_i="$exec_i $(exec_once bench-idle "e$n")"
done
mei=$(echo "$exec_i" | median)
mer=$(echo "$exec_r" | median)
echo "bench-exec: ctr task exec <running container> true, $runs runs each (alternating)"
printf '  runc   median %6.3f s   [%s ]\n' "$mer" "$exec_r"
printf '  isola  median %6.3f s   [%s ]\n' "$mei" "$exec_i"
printf '  ratio isola/runc: %s\n' "$(ratio "$mei" "$mer")"
$dev ctr tasks kill -s SIGKILL bench-exec-r >/dev/null 2>&1 || true
$dev ctr tasks kill -s SIGKILL bench-idle >/dev/null 2>&1 || true
sleep 1
$dev ctr tasks rm -f bench-idle >/dev/null 2>&1 || true
$dev ctr containers rm bench-idle >/dev/null 2>&1 || true
$dev ctr tasks rm -f bench-exec-r >/dev/null 2>&1 || true
$dev ctr containers rm bench-exec-r >/dev/null 2>&1 || true
