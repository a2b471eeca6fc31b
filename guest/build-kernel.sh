#!/usr/bin/env bash
# Builds the tailored isola guest kernel from Debian's kernel source package.
#
#   guest/build-kernel.sh --out build/kernel [--jobs N] [--force] [--keep-tree]
#
# 1. `apt-get download` of LINUX_SOURCE_PACKAGE=LINUX_SOURCE_VERSION (guest/kernel.env) into
#    <out>/cache/; 2. the tarball extracted to <out>/src/ without what an x86 guest build never
#    reads (AMD GPU register headers, device trees, documentation, perf, selftests);
#    3. `make allnoconfig` with the fragment guest/kernel/isola.config merged in (scripts/kconfig/merge_config.sh -n), then
#    `make olddefconfig`; 4. every option of the fragment checked against the final .config
#    (Kconfig silently drops options whose dependencies are unmet: this fails naming them);
#    5. `make vmlinux`, stripped, its PVH entry note checked.
#
# Disk: the source tree takes ~0.8 GB and its build ~0.2 GB more. After a successful build the
# tree and the downloaded package are deleted (a CI machine's disk is not ours to fill);
# --keep-tree keeps both, so that a changed fragment rebuilds incrementally (kernel work).
#
# Outputs (in --out): vmlinux (stripped ELF with the PVH note: QEMU boots it with -kernel),
# config (the final .config), kernel.release (its `uname -r`), build.log, .key.
# Cached: when the key (a hash of the source package and version, the fragment, this script and
# the compiler) matches .key and vmlinux exists, nothing is done ("tailored kernel up to date").
# Built kernels are also kept per key in $ISOLA_CACHE_DIR/kernel/<key>/ (default
# ${XDG_CACHE_HOME:-~/.cache}/isola), so another checkout on the same machine (a fresh CI clone)
# copies the result in seconds instead of rebuilding (the three newest are kept);
# ISOLA_CACHE_DIR=none turns that off.
#
# Exit status: 0 built or up to date; 3 the source package cannot be had (not in apt, download
# failed, not cached: the caller may fall back to the Debian kernel); anything else: failure.
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$GUEST_DIR/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$GUEST_DIR/kernel/isola.config"
KERNEL_ENV="$GUEST_DIR/kernel.env"

log() { printf 'guest/build-kernel.sh: %s\n' "$*" >&2; }
die() { printf 'guest/build-kernel.sh: error: %s\n' "$*" >&2; exit 1; }
unavailable() { printf 'guest/build-kernel.sh: source unavailable: %s\n' "$*" >&2; exit 3; }

OUT="" JOBS=2 FORCE=0 KEEP_TREE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=${2:?--out needs a path}; shift 2 ;;
        --jobs) JOBS=${2:?--jobs needs a number}; shift 2 ;;
        --force) FORCE=1; shift ;;
        --keep-tree) KEEP_TREE=1; shift ;;
        -h|--help) sed -n '2,28p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ -n "$OUT" ]] || die "--out is required"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number"
[[ -f "$FRAGMENT" ]] || die "missing $FRAGMENT"

LINUX_SOURCE_PACKAGE="" LINUX_SOURCE_VERSION=""
# shellcheck source=/dev/null
source "$KERNEL_ENV"
[[ "$LINUX_SOURCE_PACKAGE" =~ ^linux-source-[0-9.]+$ ]] || die "LINUX_SOURCE_PACKAGE missing or malformed in $KERNEL_ENV"
[[ "$LINUX_SOURCE_VERSION" =~ ^[0-9][0-9a-z.+~-]*$ ]] || die "LINUX_SOURCE_VERSION missing or malformed in $KERNEL_ENV"
PKG=$LINUX_SOURCE_PACKAGE
VER=$LINUX_SOURCE_VERSION

for tool in gcc make bc bison flex dpkg-deb tar xz strip readelf sha256sum flock; do
    command -v "$tool" >/dev/null ||
        die "'$tool' not found (Debian packages: gcc make bc bison flex libelf-dev xz-utils binutils; scripts/setup.sh installs them)"
done
[[ -f /usr/include/gelf.h ]] || die "libelf headers missing (objtool needs them): apt-get install libelf-dev"

mkdir -p "$OUT"
OUT=$(realpath "$OUT")
exec 9>"$OUT/.lock"
flock 9

KEY=$(
    echo "$PKG=$VER"
    sha256sum <"$FRAGMENT"
    sha256sum <"$SELF"
    gcc --version | head -n1
)
KEY=$(sha256sum <<<"$KEY" | cut -d' ' -f1)
if [[ $FORCE -eq 0 && -s "$OUT/vmlinux" && -f "$OUT/.key" && "$(cat "$OUT/.key")" == "$KEY" ]]; then
    echo "tailored kernel up to date ($OUT/vmlinux, $(cat "$OUT/kernel.release"))"
    exit 0
fi

SHARED=""
CACHE_ROOT=${ISOLA_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/isola}
[[ "$CACHE_ROOT" == none ]] || SHARED="$CACHE_ROOT/kernel/$KEY"
if [[ $FORCE -eq 0 && -n "$SHARED" && -s "$SHARED/vmlinux" && -s "$SHARED/kernel.release" ]]; then
    rm -f "$OUT/.key"
    cp "$SHARED/config" "$OUT/config"
    cp "$SHARED/kernel.release" "$OUT/kernel.release"
    cp "$SHARED/vmlinux" "$OUT/vmlinux.new"
    mv -f "$OUT/vmlinux.new" "$OUT/vmlinux"
    echo "$KEY" >"$OUT/.key"
    echo "tailored kernel from the cache ($SHARED, $(cat "$OUT/kernel.release"))"
    exit 0
fi

# --- 1. the source package ----------------------------------------------------------------------

CACHE="$OUT/cache"
mkdir -p "$CACHE"
DEB="$CACHE/${PKG}_${VER}_all.deb"
if [[ ! -f "$DEB" ]]; then
    known() { apt-cache madison "$PKG" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | grep -qxF -- "$VER"; }
    if ! known && [[ $EUID -eq 0 ]]; then
        log "$PKG $VER unknown to apt; running apt-get update once"
        apt-get update -qq || log "apt-get update failed"
    fi
    known || unavailable "apt offers no $PKG version $VER (apt-cache policy $PKG; update LINUX_SOURCE_VERSION in $KERNEL_ENV)"
    log "downloading $PKG $VER (~140 MB)"
    dl=$(mktemp -d "$CACHE/.dl.XXXXXX")
    apt_opts=()
    [[ $EUID -eq 0 ]] && apt_opts+=(-o APT::Sandbox::User=root)
    if ! (cd "$dl" && apt-get "${apt_opts[@]}" -q download "$PKG=$VER") >&2; then
        rm -rf "$dl"
        unavailable "apt-get download $PKG=$VER failed"
    fi
    mv "$dl/${PKG}_${VER}_all.deb" "$DEB" || { rm -rf "$dl"; die "apt-get download produced no ${PKG}_${VER}_all.deb"; }
    rm -rf "$dl"
fi
[[ "$(dpkg-deb -f "$DEB" Package)" == "$PKG" && "$(dpkg-deb -f "$DEB" Version)" == "$VER" ]] ||
    die "$DEB is not $PKG $VER (delete it and rerun)"

# --- 2. the source tree (kept between builds: a changed fragment rebuilds incrementally) ---------

SRC="$OUT/src/$PKG"
if [[ "$(cat "$OUT/src/.version" 2>/dev/null)" != "$PKG=$VER" || ! -f "$SRC/Makefile" ]]; then
    log "extracting $PKG $VER"
    rm -rf "$OUT/src"
    mkdir -p "$OUT/src"
    # Not extracted, 0.47 of the 1.24 GB: nothing of an x86 vmlinux build reads them, Kconfig
    # included (which does source other architectures' Kconfig files, and Documentation/Kconfig).
    skip=(--exclude="$PKG/drivers/gpu/drm/amd/include/asic_reg" # 371 MB of AMD GPU registers
        --exclude="$PKG/arch/[!x]*/boot/dts"                     # other architectures' device trees
        --exclude="$PKG/Documentation/*/*"
        --exclude="$PKG/tools/perf" --exclude="$PKG/tools/testing")
    dpkg-deb --fsys-tarfile "$DEB" | tar -xO "./usr/src/$PKG.tar.xz" |
        tar -xJ -C "$OUT/src" "${skip[@]}" ||
        die "extracting /usr/src/$PKG.tar.xz from $DEB failed (delete it and rerun)"
    [[ -f "$SRC/Makefile" ]] || die "$DEB did not contain $PKG/Makefile"
    echo "$PKG=$VER" >"$OUT/src/.version"
fi

# --- 3. configuration ---------------------------------------------------------------------------

BUILD_LOG="$OUT/build.log"
: >"$BUILD_LOG"
KVARS=(KBUILD_BUILD_USER=isola KBUILD_BUILD_HOST=isola)
[[ -n "${SOURCE_DATE_EPOCH:-}" ]] && KVARS+=(KBUILD_BUILD_TIMESTAMP="@$SOURCE_DATE_EPOCH")
kmake() {
    make -C "$SRC" "${KVARS[@]}" "$@" >>"$BUILD_LOG" 2>&1
}
rm -f "$SRC/.config"
(cd "$SRC" && scripts/kconfig/merge_config.sh -n "$FRAGMENT") >>"$BUILD_LOG" 2>&1 ||
    die "merge_config.sh failed (see $BUILD_LOG)"
kmake olddefconfig || die "make olddefconfig failed (see $BUILD_LOG)"

# --- 4. every option of the fragment survived ----------------------------------------------------

missing=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF -- "$line" "$SRC/.config" ||
            missing+=("${BASH_REMATCH[1]} (wanted ${BASH_REMATCH[2]}, got $(grep -E "^${BASH_REMATCH[1]}=" "$SRC/.config" | cut -d= -f2- || echo 'unset'))")
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        ! grep -qE "^${BASH_REMATCH[1]}=" "$SRC/.config" ||
            missing+=("${BASH_REMATCH[1]} (wanted off, got $(grep -E "^${BASH_REMATCH[1]}=" "$SRC/.config" | cut -d= -f2-))")
    fi
done <"$FRAGMENT"
if [[ ${#missing[@]} -gt 0 ]]; then
    {
        echo "guest/build-kernel.sh: error: ${#missing[@]} option(s) of $FRAGMENT did not survive olddefconfig"
        echo "(an unmet dependency, or a select from elsewhere; see 'depends on' in $SRC, e.g. make menuconfig, '/' search):"
        printf '  %s\n' "${missing[@]}"
    } >&2
    exit 1
fi
log "configuration: $(grep -c '=y$' "$SRC/.config") options on, all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$FRAGMENT") fragment options as asked"

# --- 5. build -----------------------------------------------------------------------------------

log "building vmlinux with make -j$JOBS (a few minutes; log: $BUILD_LOG)"
started=$(date +%s)
if ! kmake -j"$JOBS" vmlinux; then
    tail -n 30 "$BUILD_LOG" >&2
    die "kernel build failed (see $BUILD_LOG)"
fi
RELEASE=$(make -s -C "$SRC" kernelrelease 2>/dev/null)
[[ -n "$RELEASE" ]] || die "make kernelrelease printed nothing"

strip -o "$OUT/vmlinux.new" "$SRC/vmlinux"
# The PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12) is what lets QEMU boot the ELF.
# (grep without -q: an early exit would SIGPIPE readelf and fail the pipeline.)
readelf -nW "$OUT/vmlinux.new" 2>/dev/null |
    grep -E 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+(Unknown note type: \(0x00000012\)|XEN_ELFNOTE_PHYS32_ENTRY)' >/dev/null ||
    die "the built vmlinux has no PVH entry note"

# Publish; the key last.
rm -f "$OUT/.key"
cp "$SRC/.config" "$OUT/config"
echo "$RELEASE" >"$OUT/kernel.release"
mv -f "$OUT/vmlinux.new" "$OUT/vmlinux"
echo "$KEY" >"$OUT/.key"
if [[ -n "$SHARED" ]] && mkdir -p "$SHARED.tmp.$$" 2>/dev/null; then
    # Best effort: a full or read-only cache only costs the next checkout a build.
    if cp "$OUT/vmlinux" "$OUT/config" "$OUT/kernel.release" "$SHARED.tmp.$$/" 2>/dev/null &&
        { [[ -d "$SHARED" ]] || mv -T "$SHARED.tmp.$$" "$SHARED" 2>/dev/null; }; then
        log "kept in the cache: $SHARED"
    fi
    rm -rf "$SHARED.tmp.$$"
    # The three newest kernels stay; older keys are not coming back.
    find "$CACHE_ROOT/kernel" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' 2>/dev/null |
        sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -rf --
fi
if [[ $KEEP_TREE -eq 0 ]]; then
    rm -rf "$OUT/src" "$CACHE"
    tree_note="source tree and package deleted (--keep-tree keeps them)"
else
    tree_note="source tree kept in $OUT/src"
fi
log "built $RELEASE in $(($(date +%s) - started)) s: $OUT/vmlinux ($(($(stat -c %s "$OUT/vmlinux") / 1024)) KiB); $tree_note"
