#!/usr/bin/env bash
# Builds isola's test image locally (there is no registry here): a busybox image named
# localhost/isola/busybox:latest, from Debian's busybox-static, packed with umoci and written as
# an OCI image-layout tarball that `ctr images import` takes as is.
#
#   scripts/build-test-image.sh build/images/busybox.tar
#   ctr -n <ns> images import build/images/busybox.tar      # -> localhost/isola/busybox:latest
#
# Cached: rebuilt only when this script or /bin/busybox changes (a hash of both is kept next to
# the tarball in <out>.inputs). Set IMAGE_NAME to name the image differently.
#
# IMAGE_KIND=pause makes the pod sandbox ("pause") image the CRI tests configure as containerd's
# sandbox_image instead: the same files, entrypoint `/bin/sh -c` with a loop that sleeps and exits
# 0 on SIGTERM or SIGINT as the real pause does (CRI-O stops a VM runtime's sandbox with SIGTERM and
# waits), absolute paths only and no `Env` at all, like sandbox images built FROM scratch (the
# runtime must start it without PATH).
# IMAGE_KIND=noenv is the busybox image without `Env` (an app image without PATH).
# IMAGE_KIND=tools adds, to the busybox tree, the workload tools the guest-kernel tests use:
# Debian's iproute2 `ip`, iptables (legacy and nft back ends, with their extensions), `nft`
# and `bindfs` (a FUSE file system), with the shared libraries `ldd` names for them.
#
#   IMAGE_KIND=pause scripts/build-test-image.sh build/images/pause.tar  # localhost/isola/pause:latest
#   IMAGE_KIND=noenv scripts/build-test-image.sh build/images/busybox-noenv.tar
#   IMAGE_KIND=tools scripts/build-test-image.sh build/images/tools.tar    # localhost/isola/tools:latest
set -euo pipefail

out=${1:?usage: build-test-image.sh <out.tar>}
kind=${IMAGE_KIND:-busybox}
path_env=(--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
case "$kind" in
  busybox) name=${IMAGE_NAME:-localhost/isola/busybox:latest}
           config=(--config.cmd sh --config.label org.opencontainers.image.title=isola-test-busybox
                   "${path_env[@]}") ;;
  noenv)   name=${IMAGE_NAME:-localhost/isola/busybox-noenv:latest}
           config=(--config.cmd sh --config.label org.opencontainers.image.title=isola-test-noenv) ;;
  tools)   name=${IMAGE_NAME:-localhost/isola/tools:latest}
           config=(--config.cmd sh --config.label org.opencontainers.image.title=isola-test-tools
                   "${path_env[@]}") ;;
  pause)   name=${IMAGE_NAME:-localhost/isola/pause:latest}
           config=(--config.entrypoint /bin/sh --config.cmd=-c
                   "--config.cmd=trap 'exit 0' TERM INT; while :; do /bin/sleep 2147483647 & wait; done"
                   --config.label org.opencontainers.image.title=isola-test-pause) ;;
  *) echo "IMAGE_KIND must be busybox, noenv, tools or pause, not $kind" >&2; exit 1 ;;
esac
busybox=${BUSYBOX:-/bin/busybox}
# The tools image's programs (Debian packages iproute2, iptables, nftables, bindfs) and the
# names they answer to.
tool_bins=(/usr/sbin/ip /usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi
           /usr/sbin/nft /usr/bin/bindfs)
xtables_links=(iptables-legacy iptables-legacy-save iptables-legacy-restore
               ip6tables-legacy iptables-nft iptables-nft-save iptables-nft-restore ip6tables-nft)
xtables_dir=/usr/lib/x86_64-linux-gnu/xtables

log() { printf '\033[1m[image]\033[0m %s\n' "$*"; }

for tool in umoci skopeo; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run make setup" >&2; exit 1; }
done
[ -x "$busybox" ] || { echo "$busybox is missing: run make setup (busybox-static)" >&2; exit 1; }
if ! file_type=$(od -An -c -N4 "$busybox" | tr -d ' ') || [ "$file_type" != '177ELF' ]; then
  echo "$busybox is not an ELF binary" >&2
  exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
  echo "$busybox is dynamically linked: the image needs busybox-static's binary" >&2
  exit 1
fi

extra_inputs=()
if [ "$kind" = tools ]; then
  for b in "${tool_bins[@]}"; do
    [ -x "$b" ] || { echo "$b is missing: run make setup (iproute2 iptables nftables bindfs)" >&2; exit 1; }
  done
  extra_inputs=("${tool_bins[@]}")
fi
inputs=$( { sha256sum "$0" "$busybox" "${extra_inputs[@]}" | cut -d' ' -f1; echo "$name $kind"; } | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$inputs" ]; then
  log "$out is up to date ($name)"
  exit 0
fi

mkdir -p "$(dirname "$out")"
work=$(mktemp -d /tmp/isola-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
layout=$work/oci
bundle=$work/bundle

log "building $name from $busybox"
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$bundle" >/dev/null
rootfs=$bundle/rootfs

install -d -m 0755 "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,dev,proc,sys,run,var}
install -d -m 1777 "$rootfs/tmp"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
# Every applet as a symlink to /bin/busybox, where busybox itself would install it.
while read -r applet; do
  if [ -z "$applet" ] || [ "$applet" = bin/busybox ]; then continue; fi
  mkdir -p "$rootfs/$(dirname "$applet")"
  ln -sf /bin/busybox "$rootfs/$applet"
done < <("$busybox" --list-full)
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
nogroup:x:65534:
EOF
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"

# Copies a file into the rootfs at the same path, and each shared library ldd names for it.
copy_with_libs() {
  install -D -m 0755 "$1" "$rootfs$1"
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}
if [ "$kind" = tools ]; then
  for b in "${tool_bins[@]}"; do copy_with_libs "$b"; done
  # Debian's binaries, not busybox's applets of the same name.
  ln -sf /usr/sbin/ip "$rootfs/sbin/ip"
  ln -sf /usr/sbin/ip "$rootfs/bin/ip"
  for l in "${xtables_links[@]}"; do
    case "$l" in *legacy*) target=xtables-legacy-multi ;; *) target=xtables-nft-multi ;; esac
    ln -sf "$target" "$rootfs/usr/sbin/$l"
  done
  # iptables loads its matches and targets at run time.
  for ext in "$xtables_dir"/*.so; do copy_with_libs "$ext"; done
  cp -a /etc/iproute2 "$rootfs/etc/" 2>/dev/null || true
fi

# Fixed timestamps so that the same inputs give the same layer and image digests.
created=2024-01-01T00:00:00Z
find "$rootfs" -exec touch -h -d "$created" {} +

umoci repack --image "$layout:latest" --history.created "$created" \
  --history.created_by "scripts/build-test-image.sh" "$bundle"
umoci config --image "$layout:latest" --created "$created" --history.created "$created" \
  --os linux --architecture amd64 \
  "${config[@]}" \
  --config.workingdir /
umoci gc --layout "$layout"

# An OCI layout archive whose index names the image in full
# (org.opencontainers.image.ref.name = $name), which ctr images import uses as the image name.
rm -f "$out.tmp"
skopeo --insecure-policy copy --quiet "oci:$layout:latest" "oci-archive:$out.tmp:$name"
mv "$out.tmp" "$out"
echo "$inputs" >"$out.inputs"
log "wrote $out ($(du -h "$out" | cut -f1), $name)"
