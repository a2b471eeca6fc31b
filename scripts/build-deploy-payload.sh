#!/usr/bin/env bash
# Assembles the payload `isola deploy install --payload DIR` installs (what the isola-deploy
# image carries under /payload): the layout `make install` gives a PREFIX, from this tree's
# build outputs.
#
#   scripts/build-deploy-payload.sh build/deploy-payload      # make deploy-payload
#
#   DIR/bin/isola                          target/release/isola
#   DIR/bin/containerd-shim-isola-v2       target/release/containerd-shim-isola-v2
#   DIR/share/isola/vmlinux, initrd.img    build/guest (make guest): the tailored kernel
#   DIR/share/isola/debian/{vmlinux,initrd.img}   Debian's kernel, when built
#   DIR/share/isola/configuration.toml     config/configuration.toml as it is: its
#                                          /usr/local/share/isola/... paths are rewritten by
#                                          `isola deploy install` to the installed version's own
#                                          directory
#
# HELPERS="virtiofsd vhost-device-vsock" also copies those binaries from PATH into DIR/bin; the
# installed configuration then points at them (`virtiofsd_path`, `vhost_user_vsock_path`)
# instead of the node's /usr/local/bin. QEMU stays the node's (a Debian package with its
# libraries and firmware).
#
# The directory is built next to DIR and renamed into place. Its content alone decides the
# version id `isola deploy install` gives it (a hash of the files), so rebuilding from the same
# outputs installs nothing new.
set -euo pipefail

out=${1:?usage: build-deploy-payload.sh <out-dir>}
root=$(cd "$(dirname "$0")/.." && pwd)
release=${ISOLA_RELEASE_DIR:-$root/target/release}
guest=${ISOLA_GUEST_DIR:-$root/build/guest}

need() {
  [ -f "$1" ] || { echo "build-deploy-payload: missing $1; $2" >&2; exit 1; }
}
need "$release/isola" "build it with: make build"
need "$release/containerd-shim-isola-v2" "build it with: make build"
need "$guest/vmlinux" "build the guest image with: make guest"
need "$guest/initrd.img" "build the guest image with: make guest"

tmp="$out.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
install -D -m 0755 "$release/isola" "$tmp/bin/isola"
install -D -m 0755 "$release/containerd-shim-isola-v2" "$tmp/bin/containerd-shim-isola-v2"
install -D -m 0644 "$guest/vmlinux" "$tmp/share/isola/vmlinux"
install -D -m 0644 "$guest/initrd.img" "$tmp/share/isola/initrd.img"
if [ -f "$guest/debian/vmlinux" ] && [ -f "$guest/debian/initrd.img" ]; then
  install -D -m 0644 "$guest/debian/vmlinux" "$tmp/share/isola/debian/vmlinux"
  install -D -m 0644 "$guest/debian/initrd.img" "$tmp/share/isola/debian/initrd.img"
fi
install -D -m 0644 "$root/config/configuration.toml" "$tmp/share/isola/configuration.toml"
for h in ${HELPERS:-}; do
  p=$(command -v "$h") || { echo "build-deploy-payload: HELPERS names $h, not on PATH" >&2; exit 1; }
  install -D -m 0755 "$p" "$tmp/bin/$h"
done

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "payload: $out"
(cd "$out" && find . -type f | sort | sed 's/^\.\//  /')
