#!/usr/bin/env bash
# Builds the isola guest image: kernel + agent initrd + "bare floor" initrd, for two kernels.
#
#   guest/build.sh --agent <static isola-agent> --floor-init <static floor-init> --out build/guest
#                  [--compress auto|lz4|zstd|gzip|none] [--keep-module-signatures] [--force]
#                  [--kernel tailored|debian] [--kernel-out build/kernel]
#
# Outputs (in --out):
#   vmlinux            THE DEFAULT KERNEL: the tailored kernel (guest/build-kernel.sh, built from
#                      Debian's linux-source with guest/kernel/isola.config, everything built in),
#                      or with --kernel debian, or when the source package cannot be had (a
#                      warning says so), a copy of debian/vmlinux. ELF with a PVH entry note:
#                      QEMU boots it directly with -kernel.
#   initrd.img         its initrd: /init = agent; for the tailored kernel no modules at all, for
#                      the Debian one the same as debian/initrd.img
#   kernel.version     the default kernel's release (`uname -r` in the guest), one line
#   kernel.kind        `tailored` or `debian`
#   floor-initrd.img   /init = floor-init only (measures a kernel's own boot time; any kernel)
#   debian/vmlinuz     the pinned Debian kernel (guest/kernel.env), bzImage as packaged
#   debian/vmlinux     the same kernel uncompressed (ELF with a PVH entry note)
#   debian/initrd.img  /init = agent, /lib/modules/isola/*.ko, /etc/isola/modules (load order)
#   debian/kernel.version, debian/modules.order (copy of the initrd's /etc/isola/modules)
#   manifest.txt       what went in: packages, versions, compression, sizes, sha256s
#   cache/             downloaded kernel .deb (kept across builds)
#
# Work is skipped ("guest image up to date") when a hash over kernel.env, modules.txt, this script,
# both binaries, the tailored vmlinux and the options matches the stamp of the last build.
# See guest/README.md for the contract with the agent and how to bump the kernel.
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$GUEST_DIR/$(basename "${BASH_SOURCE[0]}")"

# Initrd compression, most preferred first, used by `--compress auto`. Chosen by measured boot
# time (guest/README.md, "Initrd compression"); each is used only if the kernel config has the
# matching CONFIG_RD_* and the host has the tool.
AUTO_COMPRESSION_ORDER=(lz4 zstd gzip)

# Every file in the cpio archives gets this mtime (reproducible output).
EPOCH=${SOURCE_DATE_EPOCH:-0}

log() { printf 'guest/build.sh: %s\n' "$*" >&2; }
die() { printf 'guest/build.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,8p' "$SELF" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

AGENT="" FLOOR_INIT="" OUT="" COMPRESS=auto FORCE=0 KEEP_SIGS=0 KERNEL=tailored KERNEL_OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --agent) AGENT=${2:?--agent needs a path}; shift 2 ;;
        --floor-init) FLOOR_INIT=${2:?--floor-init needs a path}; shift 2 ;;
        --out) OUT=${2:?--out needs a path}; shift 2 ;;
        --compress) COMPRESS=${2:?--compress needs a value}; shift 2 ;;
        --keep-module-signatures) KEEP_SIGS=1; shift ;;
        --kernel) KERNEL=${2:?--kernel needs a value}; shift 2 ;;
        --kernel-out) KERNEL_OUT=${2:?--kernel-out needs a path}; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ -n "$AGENT" && -n "$FLOOR_INIT" && -n "$OUT" ]] || usage
case "$COMPRESS" in auto|lz4|zstd|gzip|none) ;; *) die "--compress must be auto, lz4, zstd, gzip or none" ;; esac
case "$KERNEL" in tailored|debian) ;; *) die "--kernel must be tailored or debian" ;; esac

for tool in apt-get apt-cache dpkg-deb modinfo cpio sha256sum flock readelf; do
    command -v "$tool" >/dev/null || die "'$tool' not found (Debian packages: apt, dpkg, kmod, cpio, coreutils, util-linux, binutils)"
done

# --- inputs -------------------------------------------------------------------------------------

check_static() { # <what> <path>
    [[ -f "$2" ]] || die "$1 binary not found: $2"
    [[ -x "$2" ]] || die "$1 binary is not executable: $2"
    readelf -h "$2" >/dev/null 2>&1 || die "$1 binary is not an ELF file: $2"
    if readelf -lW "$2" | grep 'Requesting program interpreter' >/dev/null; then
        die "$1 binary is dynamically linked: $2 (the initrd has no libc; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" and --target x86_64-unknown-linux-gnu)"
    fi
}
check_static agent "$AGENT"
check_static floor-init "$FLOOR_INIT"
AGENT=$(realpath "$AGENT")
FLOOR_INIT=$(realpath "$FLOOR_INIT")

KERNEL_ENV="$GUEST_DIR/kernel.env"
MODULES_TXT="$GUEST_DIR/modules.txt"
[[ -f "$KERNEL_ENV" ]] || die "missing $KERNEL_ENV"
[[ -f "$MODULES_TXT" ]] || die "missing $MODULES_TXT"

DEBIAN_KERNEL_ABI="" DEBIAN_KERNEL_FLAVOUR="" DEBIAN_KERNEL_VERSION=""
# shellcheck source=/dev/null
source "$KERNEL_ENV"
[[ "$DEBIAN_KERNEL_ABI" =~ ^[0-9][0-9a-z.+-]*$ ]] || die "DEBIAN_KERNEL_ABI missing or malformed in $KERNEL_ENV"
[[ "$DEBIAN_KERNEL_FLAVOUR" =~ ^[a-z0-9-]+$ ]] || die "DEBIAN_KERNEL_FLAVOUR missing or malformed in $KERNEL_ENV"
KREL="$DEBIAN_KERNEL_ABI-$DEBIAN_KERNEL_FLAVOUR"
PKG="linux-image-$KREL"

mkdir -p "$OUT"
OUT=$(realpath "$OUT")
CACHE="$OUT/cache"
mkdir -p "$CACHE"

# One build per output directory at a time (parallel make, two terminals...).
exec 9>"$OUT/.lock"
flock 9

# --- 0. the tailored kernel (its own cache: seconds when up to date) -----------------------------

TAILORED_DIR=""
if [[ "$KERNEL" == tailored ]]; then
    KERNEL_OUT=${KERNEL_OUT:-$(dirname "$OUT")/kernel}
    status=0
    "$GUEST_DIR/build-kernel.sh" --out "$KERNEL_OUT" || status=$?
    case $status in
        0) TAILORED_DIR=$(realpath "$KERNEL_OUT") ;;
        3)
            KERNEL=debian
            {
                echo "guest/build.sh: WARNING: the tailored kernel's source package cannot be had (see above)."
                echo "guest/build.sh: WARNING: falling back to the Debian cloud kernel as the DEFAULT guest kernel:"
                echo "guest/build.sh: WARNING: it boots ~2x slower (guest/README.md, \"The guest kernel\")."
            } >&2
            ;;
        *) die "building the tailored kernel failed (guest/build-kernel.sh, status $status)" ;;
    esac
fi

# --- up-to-date check ---------------------------------------------------------------------------

OUTPUTS=(vmlinux initrd.img kernel.version kernel.kind floor-initrd.img
    debian/vmlinuz debian/vmlinux debian/initrd.img debian/kernel.version debian/modules.order
    manifest.txt)
STAMP="$OUT/.stamp"
INPUT_HASH=$(
    for f in "$KERNEL_ENV" "$MODULES_TXT" "$SELF" "$AGENT" "$FLOOR_INIT" ${TAILORED_DIR:+"$TAILORED_DIR/vmlinux"}; do
        sha256sum <"$f"
    done
    echo "compress=$COMPRESS epoch=$EPOCH keep_sigs=$KEEP_SIGS kernel=$KERNEL"
)
INPUT_HASH=$(sha256sum <<<"$INPUT_HASH" | cut -d' ' -f1)

outputs_present() {
    local f
    for f in "${OUTPUTS[@]}"; do [[ -s "$OUT/$f" ]] || return 1; done
}
if [[ $FORCE -eq 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$INPUT_HASH" ]] && outputs_present; then
    echo "guest image up to date ($OUT)"
    exit 0
fi

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- 1. fetch the kernel package ----------------------------------------------------------------

APT_OPTS=()
# As root, apt-get download otherwise warns that the _apt sandbox user cannot write the target dir.
[[ $EUID -eq 0 ]] && APT_OPTS+=(-o APT::Sandbox::User=root)

# Versions of $PKG apt can download right now (one per line, possibly none).
apt_versions() {
    apt-cache madison "$PKG" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | sort -u
}
apt_has_wanted() {
    local versions
    versions=$(apt_versions)
    if [[ -n "$DEBIAN_KERNEL_VERSION" ]]; then
        grep -qxF -- "$DEBIAN_KERNEL_VERSION" <<<"$versions"
    else
        [[ -n "$versions" ]]
    fi
}
cached_deb() {
    local d
    if [[ -n "$DEBIAN_KERNEL_VERSION" ]]; then
        d="$CACHE/${PKG}_${DEBIAN_KERNEL_VERSION}_amd64.deb"
        [[ -f "$d" ]] && echo "$d"
    else
        # Newest cached version of the ABI.
        find "$CACHE" -maxdepth 1 -name "${PKG}_*_amd64.deb" | sort -V | tail -n1
    fi
    return 0
}

DEB=$(cached_deb)
if [[ -z "$DEB" ]]; then
    WANT="$PKG${DEBIAN_KERNEL_VERSION:+ (version $DEBIAN_KERNEL_VERSION)}"
    if ! apt_has_wanted; then
        if [[ $EUID -eq 0 ]]; then
            log "$WANT unknown to apt; running apt-get update once"
            apt-get update -qq || log "apt-get update failed (continuing to report what apt knows)"
        else
            log "$WANT unknown to apt and not root: cannot run apt-get update"
        fi
    fi
    if ! apt_has_wanted; then
        {
            echo "guest/build.sh: error: the Debian archive does not serve $WANT."
            others=$(apt_versions)
            [[ -n "$others" ]] && echo "  apt offers $PKG in version(s): $(tr '\n' ' ' <<<"$others")"
            echo "  Update DEBIAN_KERNEL_ABI (and DEBIAN_KERNEL_VERSION) in $KERNEL_ENV."
            echo "  Cloud kernels apt offers now (package: version):"
            apt-cache search --names-only "^linux-image-[0-9].*-$DEBIAN_KERNEL_FLAVOUR\$" 2>/dev/null |
                grep -v 'meta-package' | cut -d' ' -f1 | sort -V | while read -r p; do
                    printf '    %s: %s\n' "$p" \
                        "$(apt-cache madison "$p" | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | sort -uV | tr '\n' ' ')"
                done
            echo "  (see guest/README.md, \"Bumping the kernel\")"
        } >&2
        exit 1
    fi
    log "downloading $WANT"
    mkdir -p "$WORK/dl"
    (cd "$WORK/dl" && apt-get "${APT_OPTS[@]}" -q download "$PKG${DEBIAN_KERNEL_VERSION:+=$DEBIAN_KERNEL_VERSION}") >&2 ||
        die "apt-get download $PKG failed"
    dl=("$WORK"/dl/"${PKG}"_*.deb)
    [[ -f "${dl[0]}" ]] || die "apt-get download produced no .deb for $PKG"
    DEB="$CACHE/$(basename "${dl[0]}")"
    mv "${dl[0]}" "$DEB"
else
    log "using cached $(basename "$DEB")"
fi

[[ "$(dpkg-deb -f "$DEB" Package)" == "$PKG" ]] || die "$DEB is not a $PKG package (delete it and rerun)"
PKG_VERSION=$(dpkg-deb -f "$DEB" Version)
if [[ -n "$DEBIAN_KERNEL_VERSION" && "$PKG_VERSION" != "$DEBIAN_KERNEL_VERSION" ]]; then
    die "$DEB has version $PKG_VERSION, kernel.env pins $DEBIAN_KERNEL_VERSION (delete it and rerun)"
fi

# --- 2. extract kernel and modules --------------------------------------------------------------

ROOT="$WORK/deb"
dpkg-deb -x "$DEB" "$ROOT" || die "dpkg-deb -x $DEB failed (corrupt download? delete it and rerun)"
VMLINUZ="$ROOT/boot/vmlinuz-$KREL"
KCONFIG="$ROOT/boot/config-$KREL"
[[ -f "$VMLINUZ" ]] || die "$PKG has no /boot/vmlinuz-$KREL"
[[ -f "$KCONFIG" ]] || die "$PKG has no /boot/config-$KREL"
MODDIR=""
for d in "$ROOT/lib/modules/$KREL" "$ROOT/usr/lib/modules/$KREL"; do
    [[ -d "$d" ]] && MODDIR=$d && break
done
[[ -n "$MODDIR" ]] || die "$PKG has no lib/modules/$KREL"

norm() { echo "${1//-/_}"; }

# Module name -> path of its (possibly compressed) .ko inside the package.
declare -A KO_PATH=()
while IFS= read -r -d '' f; do
    b=$(basename "$f")
    b=${b%.xz}; b=${b%.zst}; b=${b%.gz}; b=${b%.ko}
    KO_PATH[$(norm "$b")]=$f
done < <(find "$MODDIR" -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
[[ ${#KO_PATH[@]} -gt 0 ]] || die "no kernel modules found in $PKG"

# Built-in "modules" (=y in the config) are listed in modules.builtin.
declare -A BUILTIN=()
if [[ -f "$MODDIR/modules.builtin" ]]; then
    while IFS= read -r line; do
        b=$(basename "$line"); b=${b%.ko}
        BUILTIN[$(norm "$b")]=1
    done <"$MODDIR/modules.builtin"
fi

NOTES=()
STAGE="$WORK/initrd"
KO_DIR="$STAGE/lib/modules/isola"
mkdir -p "$KO_DIR"

# Decompresses (or copies) a module into the initrd as <name>.ko: finit_module(2) is handed plain
# .ko files (no reliance on the kernel's MODULE_INIT_COMPRESSED_FILE support).
stage_module() { # <name> <src>
    local dst="$KO_DIR/$1.ko"
    case "$2" in
        *.ko.xz) command -v xz >/dev/null || die "xz needed to decompress $2 (apt-get install xz-utils)"
                 xz -dc "$2" >"$dst" ;;
        *.ko.zst) command -v zstd >/dev/null || die "zstd needed to decompress $2 (apt-get install zstd)"
                  zstd -qdc "$2" >"$dst" ;;
        *.ko.gz) gzip -dc "$2" >"$dst" ;;
        *.ko) cp "$2" "$dst" ;;
        *) die "unexpected module file $2" ;;
    esac
    chmod 0644 "$dst"
}

# Module signatures: verifying them is emulated RSA under TCG (~110 ms of the agent's start for
# this set), and buys nothing here: whoever can alter these files can alter /init. So they
# are stripped unless the kernel refuses unsigned modules (CONFIG_MODULE_SIG_FORCE=y) or
# --keep-module-signatures is given. Loading an unsigned module taints the kernel ('E' flag,
# "module verification failed" notice); see guest/README.md.
SIG_MAGIC="~Module signature appended~"
STRIP_SIGS=1
if [[ $KEEP_SIGS -eq 1 ]]; then
    STRIP_SIGS=0
elif grep -qx 'CONFIG_MODULE_SIG_FORCE=y' "$KCONFIG"; then
    STRIP_SIGS=0
    NOTES+=("module signatures kept: $KREL has CONFIG_MODULE_SIG_FORCE=y")
    log "note: $KREL enforces module signatures; keeping them"
fi

# Removes the appended PKCS#7 signature: [module][signature][struct module_signature, 12 bytes,
# sig_len = big-endian u32 in its last 4][magic, 28 bytes incl. newline]. Unsigned: unchanged.
strip_signature() { # <file.ko>
    local f=$1 size sig_len
    size=$(stat -c %s "$f")
    [[ $size -gt 40 && "$(tail -c 28 "$f" | head -c 27)" == "$SIG_MAGIC" ]] || return 0
    sig_len=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{ print (($1 * 256 + $2) * 256 + $3) * 256 + $4 }')
    [[ $sig_len -gt 0 && $((sig_len + 40)) -lt $size ]] || die "$f: malformed module signature"
    truncate -s $((size - 40 - sig_len)) "$f"
}

# Depth-first topological sort: a module is appended after all of its dependencies.
declare -A STATE=()   # name -> visiting | done
ORDER=()
resolve() { # <name> <required-by>
    local name dep deps vermagic
    name=$(norm "$1")
    case "${STATE[$name]:-}" in
        done) return 0 ;;
        visiting) die "module dependency cycle through $name" ;;
    esac
    if [[ -z "${KO_PATH[$name]:-}" ]]; then
        if [[ -n "${BUILTIN[$name]:-}" ]]; then
            NOTES+=("$name is built into $KREL (=y), not packed")
            log "note: $name is built into $KREL (=y); skipping"
            STATE[$name]="done"
            return 0
        fi
        die "module '$name' ($2) is neither a module nor built into $KREL; fix $MODULES_TXT"
    fi
    STATE[$name]=visiting
    stage_module "$name" "${KO_PATH[$name]}"
    vermagic=$(modinfo -F vermagic "$KO_DIR/$name.ko") || die "modinfo failed on $name.ko"
    [[ "${vermagic%% *}" == "$KREL" ]] || die "$name.ko has vermagic '$vermagic', expected $KREL"
    deps=$(modinfo -F depends "$KO_DIR/$name.ko") || die "modinfo failed on $name.ko"
    [[ $STRIP_SIGS -eq 1 ]] && strip_signature "$KO_DIR/$name.ko"
    # Sorted so the order never depends on how modinfo lists them.
    for dep in $(tr ',' '\n' <<<"$deps" | LC_ALL=C sort); do
        [[ -n "$dep" ]] && resolve "$dep" "dependency of $name"
    done
    STATE[$name]="done"
    ORDER+=("$name")
}

LISTED=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line=${line%%#*}
    read -r name extra <<<"$line" || true
    [[ -z "${name:-}" ]] && continue
    [[ -z "${extra:-}" ]] || die "$MODULES_TXT: one module per line, got '$line'"
    LISTED=$((LISTED + 1))
    resolve "$name" "listed in modules.txt"
done <"$MODULES_TXT"
[[ $LISTED -gt 0 ]] || die "$MODULES_TXT lists no modules"

# --- 3. initrd.img ------------------------------------------------------------------------------

mkdir -p "$STAGE"/{proc,sys,dev,run,tmp,mnt,etc/isola}
cp "$AGENT" "$STAGE/init"
chmod 0755 "$STAGE/init"
printf '%s.ko\n' "${ORDER[@]}" >"$STAGE/etc/isola/modules"
chmod 0644 "$STAGE/etc/isola/modules"
find "$STAGE" -type d -exec chmod 0755 {} +
chmod 1777 "$STAGE/tmp"

# The tailored kernel's initrd: the agent and the empty mount points, no module directory and no
# module list (everything is built in; the agent then loads nothing).
TAILORED_STAGE="$WORK/tailored-initrd"
mkdir -p "$TAILORED_STAGE"/{proc,sys,dev,run,tmp,mnt}
cp "$AGENT" "$TAILORED_STAGE/init"
chmod 0755 "$TAILORED_STAGE/init"
find "$TAILORED_STAGE" -type d -exec chmod 0755 {} +
chmod 1777 "$TAILORED_STAGE/tmp"

FLOOR_STAGE="$WORK/floor"
mkdir -p "$FLOOR_STAGE"
cp "$FLOOR_INIT" "$FLOOR_STAGE/init"
chmod 0755 "$FLOOR_STAGE/init"

# newc cpio of a staging dir: sorted names (parents before children), root-owned, fixed mtimes,
# renumbered inodes (--reproducible), so identical inputs give identical bytes.
make_cpio() { # <dir> <out>
    find "$1" -exec touch -h -d "@$EPOCH" {} +
    (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
        cpio -o -H newc --reproducible -R 0:0 --quiet) >"$2"
}

# Compression: explicit choice, or the first of AUTO_COMPRESSION_ORDER both kernels and the host
# support (the floor initrd is shared by both kernels).
kernel_supports() { # <CONFIG_RD_x>
    grep -qx "$1=y" "$KCONFIG" && { [[ -z "$TAILORED_DIR" ]] || grep -qx "$1=y" "$TAILORED_DIR/config"; }
}
compression_usable() { # <name> -> 0 if the kernel can unpack it and the tool exists
    case "$1" in
        lz4) kernel_supports CONFIG_RD_LZ4 && command -v lz4 >/dev/null ;;
        zstd) kernel_supports CONFIG_RD_ZSTD && command -v zstd >/dev/null ;;
        gzip) kernel_supports CONFIG_RD_GZIP && command -v gzip >/dev/null ;;
        none) return 0 ;;
    esac
}
if [[ "$COMPRESS" == auto ]]; then
    CHOSEN=""
    for c in "${AUTO_COMPRESSION_ORDER[@]}"; do
        if compression_usable "$c"; then CHOSEN=$c; break; fi
        log "note: $c compression unavailable (kernel CONFIG_RD_* or host tool missing)"
    done
    [[ -n "$CHOSEN" ]] || die "no usable initrd compression among ${AUTO_COMPRESSION_ORDER[*]}"
else
    compression_usable "$COMPRESS" ||
        die "--compress $COMPRESS: kernel lacks CONFIG_RD_${COMPRESS^^}=y or the '$COMPRESS' tool is missing"
    CHOSEN=$COMPRESS
fi

compress() { # <in> <out>
    case "$CHOSEN" in
        # -l: the legacy frame format, the only one the kernel's unlz4 understands.
        lz4) lz4 -q -l -9 -c "$1" >"$2" ;;
        zstd) zstd -q -19 -c "$1" >"$2" ;;
        # -n: no name/timestamp in the header (reproducible).
        gzip) gzip -n -9 -c "$1" >"$2" ;;
        none) cp "$1" "$2" ;;
    esac
}

RESULT="$WORK/out"
mkdir -p "$RESULT/debian"
make_cpio "$STAGE" "$WORK/initrd.cpio"
compress "$WORK/initrd.cpio" "$RESULT/debian/initrd.img"
if [[ -n "$TAILORED_DIR" ]]; then
    make_cpio "$TAILORED_STAGE" "$WORK/tailored-initrd.cpio"
    compress "$WORK/tailored-initrd.cpio" "$RESULT/initrd.img"
fi
make_cpio "$FLOOR_STAGE" "$WORK/floor.cpio"
compress "$WORK/floor.cpio" "$RESULT/floor-initrd.img"

# --- 4b. uncompressed PVH kernel -----------------------------------------------------------------

# Reads a little-endian unsigned integer of <size> bytes at <offset> of <file>.
le_uint() { # <file> <offset> <size>
    od -An -tu"$3" -j "$(($2))" -N "$3" "$1" | tr -d ' '
}

# bzImage -> vmlinux: the compressed payload is located with the boot protocol header
# (Documentation/x86/boot.rst: setup_sects @0x1f1, payload_offset @0x248, payload_length @0x24c);
# the build appends the uncompressed size as 4 LE bytes, which also verifies the result.
extract_vmlinux() { # <bzImage> <out>
    local img=$1 out=$2 setup_sects version off len want magic dec
    [[ "$(dd if="$img" bs=1 skip=$((0x202)) count=4 status=none)" == HdrS ]] || die "$img is not a bzImage"
    version=$(le_uint "$img" 0x206 2)
    [[ $version -ge $((0x208)) ]] || die "$img: boot protocol $version too old for payload fields"
    setup_sects=$(le_uint "$img" 0x1f1 1)
    [[ $setup_sects -eq 0 ]] && setup_sects=4
    off=$(( (setup_sects + 1) * 512 + $(le_uint "$img" 0x248 4) ))
    len=$(le_uint "$img" 0x24c 4)
    want=$(le_uint "$img" $((off + len - 4)) 4)
    magic=$(od -An -tx1 -j "$off" -N 6 "$img" | tr -d ' \n')
    case "$magic" in
        02214c18*) dec=(lz4 -dc) ;;
        1f8b*) dec=(gzip -dc) ;;
        fd377a585a00) dec=(xz -dc) ;;
        28b52ffd*) dec=(zstd -qdc) ;;
        *) die "$img: unsupported kernel payload compression (magic $magic)" ;;
    esac
    command -v "${dec[0]}" >/dev/null || die "'${dec[0]}' needed to unpack the kernel payload"
    dd if="$img" iflag=skip_bytes,count_bytes skip="$off" count=$((len - 4)) bs=1M status=none |
        "${dec[@]}" >"$out" ||
        die "decompressing the kernel payload of $img failed"
    [[ "$(stat -c %s "$out")" -eq "$want" ]] || die "$img: unpacked vmlinux size mismatch"
    # PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12): what lets QEMU boot the ELF directly.
    # (grep without -q: an early exit would SIGPIPE readelf and fail the pipeline.)
    readelf -nW "$out" 2>/dev/null |
        grep -E 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+(Unknown note type: \(0x00000012\)|XEN_ELFNOTE_PHYS32_ENTRY)' >/dev/null ||
        die "$img: unpacked vmlinux has no PVH entry note (kernel built without CONFIG_PVH=y?)"
}

# --- 5. kernel + metadata -----------------------------------------------------------------------

cp "$VMLINUZ" "$RESULT/debian/vmlinuz"
extract_vmlinux "$VMLINUZ" "$RESULT/debian/vmlinux"
echo "$KREL" >"$RESULT/debian/kernel.version"
cp "$STAGE/etc/isola/modules" "$RESULT/debian/modules.order"

# The default kernel: tailored, or the Debian one (by choice or as the fallback).
if [[ -n "$TAILORED_DIR" ]]; then
    cp "$TAILORED_DIR/vmlinux" "$RESULT/vmlinux"
    cp "$TAILORED_DIR/kernel.release" "$RESULT/kernel.version"
    echo tailored >"$RESULT/kernel.kind"
else
    cp "$RESULT/debian/vmlinux" "$RESULT/vmlinux"
    cp "$RESULT/debian/initrd.img" "$RESULT/initrd.img"
    cp "$RESULT/debian/kernel.version" "$RESULT/kernel.version"
    echo debian >"$RESULT/kernel.kind"
fi
{
    echo "# isola guest image, built by guest/build.sh"
    echo "default_kernel=$(cat "$RESULT/kernel.kind") $(cat "$RESULT/kernel.version")"
    [[ -n "$TAILORED_DIR" ]] && echo "tailored_kernel_key=$(cat "$TAILORED_DIR/.key")"
    echo "debian_kernel_release=$KREL"
    echo "debian_kernel_package=$PKG"
    echo "debian_kernel_package_version=$PKG_VERSION"
    echo "initrd_compression=$CHOSEN"
    echo "module_signatures=$([[ $STRIP_SIGS -eq 1 ]] && echo stripped || echo kept)"
    echo "module_load_order=${ORDER[*]}"
    for n in "${NOTES[@]}"; do echo "note=$n"; done
    for f in vmlinux initrd.img floor-initrd.img debian/vmlinuz debian/vmlinux debian/initrd.img; do
        echo "$f size=$(stat -c %s "$RESULT/$f") sha256=$(sha256sum <"$RESULT/$f" | cut -d' ' -f1)"
    done
    echo "debian_initrd_uncompressed_size=$(stat -c %s "$WORK/initrd.cpio")"
    echo "agent_sha256=$(sha256sum <"$AGENT" | cut -d' ' -f1)"
    echo "floor_init_sha256=$(sha256sum <"$FLOOR_INIT" | cut -d' ' -f1)"
} >"$RESULT/manifest.txt"

# Publish: each output replaced atomically, stamp written last.
rm -f "$STAMP" "$OUT/vmlinuz" "$OUT/modules.order"   # (the layout before debian/)
mkdir -p "$OUT/debian"
for f in "${OUTPUTS[@]}"; do
    mv -f "$RESULT/$f" "$OUT/$f"
done
echo "$INPUT_HASH" >"$STAMP"

log "default kernel: $(cat "$OUT/kernel.kind") $(cat "$OUT/kernel.version"); Debian kernel $KREL ($PKG_VERSION) in debian/, initrds $CHOSEN-compressed, its modules: ${ORDER[*]}"
echo "guest image built in $OUT"
