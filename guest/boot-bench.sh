#!/usr/bin/env bash
# Times guest boots under QEMU TCG: spawn of qemu-system-x86_64 to its exit (the guest's /init
# powers off; -no-reboot makes a panic exit too). Used to produce the numbers in guest/README.md.
#
#   guest/boot-bench.sh [-n RUNS] [-k KERNEL] [-i INITRD] [-e EXPECT] [-m "MACHINE ARGS"] \
#                       [-q "EXTRA QEMU ARGS"] \
#                       'LABEL|KERNEL CMDLINE[|INITRD[|KERNEL]]' ...
#
# Defaults: -n 5, -k build/guest/vmlinux, -i build/guest/floor-initrd.img,
# -e 'isola-floor: init reached' (a run whose console log lacks it counts as failed),
# -m "-M q35 -bios /usr/share/qemu/qboot.rom". Always: TCG, 1 vCPU, 512 MiB, -no-reboot.
# Tip: -q "-icount shift=0,sleep=off" makes the guest clock count instructions, so the
# "guest" column becomes deterministic (+-0.1 ms) and immune to host load: good for ranking
# guest-side changes, while wall time includes TCG translation and QEMU start-up.
# Variants are run round-robin (run 1 of every variant, then run 2...) so that background load
# spreads evenly. Prints per variant: median/min/max wall seconds (qemu spawn to exit), median
# CPU seconds of the qemu process (user+sys; less sensitive to host load than wall), and the
# median guest clock at "reboot: Power down" (seconds since the kernel's timekeeping started).
set -euo pipefail

RUNS=5 KERNEL=build/guest/vmlinux INITRD=build/guest/floor-initrd.img
MACHINE="-M q35 -bios /usr/share/qemu/qboot.rom"
EXPECT='isola-floor: init reached' EXTRA=""
while getopts "n:k:i:e:m:q:h" opt; do
    case "$opt" in
        n) RUNS=$OPTARG ;;
        k) KERNEL=$OPTARG ;;
        i) INITRD=$OPTARG ;;
        e) EXPECT=$OPTARG ;;
        m) MACHINE=$OPTARG ;;
        q) EXTRA=$OPTARG ;;
        *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -gt 0 ]] || set -- "default|console=ttyS0 quiet panic=-1"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

boot_once() { # <append> <initrd> <log> <kernel> -> prints "wall cpu" seconds, or FAIL
    local t TIMEFORMAT='%R %U %S'
    # shellcheck disable=SC2086 # MACHINE and EXTRA are deliberately word-split
    t=$( { time timeout 30 qemu-system-x86_64 -accel tcg $MACHINE \
        -m 512M -smp 1 -kernel "$4" -initrd "$2" -append "$1" -display none \
        -serial "file:$3" -no-reboot $EXTRA </dev/null >/dev/null 2>&1; } 2>&1 ) || true
    if grep -qF -- "$EXPECT" "$3"; then
        awk '{ printf "%.3f %.3f\n", $1, $2 + $3 }' <<<"$t"
    else
        echo FAIL
    fi
}

declare -a LABELS APPENDS INITRDS KERNELS
for v in "$@"; do
    IFS='|' read -r label append initrd kernel <<<"$v"
    LABELS+=("$label"); APPENDS+=("$append"); INITRDS+=("${initrd:-$INITRD}"); KERNELS+=("${kernel:-$KERNEL}")
done

for ((r = 1; r <= RUNS; r++)); do
    for i in "${!LABELS[@]}"; do
        log="$TMP/$i.$r.log"
        res=$(boot_once "${APPENDS[$i]}" "${INITRDS[$i]}" "$log" "${KERNELS[$i]}")
        if [[ "$res" == FAIL ]]; then
            echo FAIL >>"$TMP/$i.fail"
            continue
        fi
        echo "${res% *}" >>"$TMP/$i.wall"
        echo "${res#* }" >>"$TMP/$i.cpu"
        guest=$(sed -n 's/^\[ *\([0-9.]*\)\] reboot: Power down.*/\1/p' "$log" | head -n1)
        [[ -n "$guest" ]] && echo "$guest" >>"$TMP/$i.guest"
    done
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
stat_of() { [[ -f "$1" ]] && "${@:2}" <"$1" || echo "-"; }
printf '%-26s %6s %6s %6s %7s %7s  %s\n' variant wall min max cpu guest "wall samples"
for i in "${!LABELS[@]}"; do
    fails=$(stat_of "$TMP/$i.fail" wc -l)
    printf '%-26s %6s %6s %6s %7s %7s  %s%s\n' "${LABELS[$i]}" \
        "$(stat_of "$TMP/$i.wall" median)" "$(stat_of "$TMP/$i.wall" sort -n | head -n1)" \
        "$(stat_of "$TMP/$i.wall" sort -n | tail -n1)" "$(stat_of "$TMP/$i.cpu" median)" \
        "$(stat_of "$TMP/$i.guest" median)" "$(stat_of "$TMP/$i.wall" tr '\n' ' ')" \
        "$([[ "$fails" != - ]] && echo " ($fails FAILED)")"
done
