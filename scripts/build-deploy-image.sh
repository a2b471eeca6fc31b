#!/usr/bin/env bash
# Builds the isola-deploy image (what deploy/isola-deploy.yaml runs on each node) locally, as
# scripts/build-test-image.sh builds the test images: no registry, no docker; a rootfs packed
# with umoci and written as an OCI image-layout tarball named localhost/isola/isola-deploy:latest,
# which `ctr images import` and CRI-O's storage (skopeo copy oci-archive:...) take as is.
#
#   scripts/build-deploy-image.sh build/deploy-payload build/images/isola-deploy.tar
#   ctr -n k8s.io images import build/images/isola-deploy.tar    # on each node (containerd)
#
# The image holds:
#   /payload/...                         the payload dir (scripts/build-deploy-payload.sh)
#   /usr/local/bin/isola-deploy-entrypoint   deploy/isola-deploy-entrypoint.sh, the entrypoint
#   /bin/busybox and its applets         Debian's busybox-static: sh, sleep, kill, cat...
#   /usr/bin/nsenter                     util-linux's (the runtime's restart and `isola check`
#                                        run in the node's namespaces), not busybox's applet
#   the shared libraries and the dynamic loader that ldd names for /payload/bin/isola and
#   nsenter (glibc, libgcc_s, libm; libselinux, libpcre2): isola runs inside the image, the
#   version it installs runs on the node with the node's own libraries
#
# Cached: rebuilt only when an input changes (this script, the entrypoint, busybox, nsenter,
# the libraries, every payload file and its mode; a hash of them is kept in <out>.inputs). Set
# IMAGE_NAME to name the image differently.
set -euo pipefail

payload=${1:?usage: build-deploy-image.sh <payload dir> <out.tar>}
out=${2:?usage: build-deploy-image.sh <payload dir> <out.tar>}
name=${IMAGE_NAME:-localhost/isola/isola-deploy:latest}
root=$(cd "$(dirname "$0")/.." && pwd)
entrypoint=$root/deploy/isola-deploy-entrypoint.sh
busybox=${BUSYBOX:-/bin/busybox}
nsenter=${NSENTER:-/usr/bin/nsenter}

log() { printf '\033[1m[image]\033[0m %s\n' "$*"; }
die() { echo "build-deploy-image: $*" >&2; exit 1; }

for tool in umoci skopeo ldd; do
  command -v "$tool" >/dev/null || die "$tool is missing: run make setup"
done
[ -x "$payload/bin/isola" ] || die "$payload/bin/isola is missing: make deploy-payload"
[ -x "$busybox" ] || die "$busybox is missing: run make setup (busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked: the image needs busybox-static's binary"
fi
[ -x "$nsenter" ] || die "$nsenter is missing: apt-get install util-linux"

# The shared libraries (and the loader) a binary needs, as ldd resolves them here.
libs_of() {
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true
}
libs=$( { libs_of "$payload/bin/isola"; libs_of "$nsenter"; } | sort -u)

inputs=$( {
  sha256sum "$0" "$entrypoint" "$busybox" "$nsenter"
  for l in $libs; do sha256sum "$(readlink -f "$l")"; done
  (cd "$payload" && find . -type f -printf '%p %m\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum)
  echo "$name"
} | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$inputs" ]; then
  log "$out is up to date ($name)"
  exit 0
fi

mkdir -p "$(dirname "$out")"
work=$(mktemp -d /tmp/isola-deploy-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
layout=$work/oci
bundle=$work/bundle

log "building $name from $payload"
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$bundle" >/dev/null
rootfs=$bundle/rootfs

install -d -m 0755 "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,root,dev,proc,sys,run,var,host}
install -d -m 1777 "$rootfs/tmp"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
while read -r applet; do
  if [ -z "$applet" ] || [ "$applet" = bin/busybox ]; then continue; fi
  mkdir -p "$rootfs/$(dirname "$applet")"
  ln -sf /bin/busybox "$rootfs/$applet"
done < <("$busybox" --list-full)
# util-linux's nsenter in place of the applet.
rm -f "$rootfs/usr/bin/nsenter"
install -m 0755 "$nsenter" "$rootfs/usr/bin/nsenter"
for l in $libs; do
  install -D -m 0755 "$(readlink -f "$l")" "$rootfs$l"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
cp -a "$payload" "$rootfs/payload"
install -m 0755 "$entrypoint" "$rootfs/usr/local/bin/isola-deploy-entrypoint"

# Fixed timestamps so that the same inputs give the same layer and image digests.
created=2024-01-01T00:00:00Z
find "$rootfs" -exec touch -h -d "$created" {} +

umoci repack --image "$layout:latest" --history.created "$created" \
  --history.created_by "scripts/build-deploy-image.sh" "$bundle"
umoci config --image "$layout:latest" --created "$created" --history.created "$created" \
  --os linux --architecture amd64 \
  --config.entrypoint /usr/local/bin/isola-deploy-entrypoint \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.label org.opencontainers.image.title=isola-deploy \
  --config.workingdir /
umoci gc --layout "$layout"

rm -f "$out.tmp"
skopeo --insecure-policy copy --quiet "oci:$layout:latest" "oci-archive:$out.tmp:$name"
mv "$out.tmp" "$out"
echo "$inputs" >"$out.inputs"
log "wrote $out ($(du -h "$out" | cut -f1), $name)"
