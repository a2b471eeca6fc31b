#!/usr/bin/env bash
# Unpacks the Kubernetes node binaries and CRI-O (not on any registry this project reaches)
# from ../shared/k8s into build/k8s/bin, checking the archive's sha256 first, and adds etcd
# from Debian's etcd-server package. Idempotent: an unpacked archive with the same checksum is
# left as it is.
#
#   scripts/unpack-k8s.sh [archive] [out-dir]
#
# Without the archive it says what is missing and exits 0: the tests that need a kubelet or
# CRI-O then fail naming it, the rest of the build goes on.
set -euo pipefail

archive=${1:-../shared/k8s/k8s-1.32.13-crio-1.32.13.tar.xz}
out=${2:-build/k8s}
sha256=03beaea7c9ad2cd7750cd4ff7fa1c0a02e09e0f2473d710d73853f976b329d60

log() { printf '\033[1m[k8s]\033[0m %s\n' "$*"; }

# etcd from Debian's etcd-server, the binary only (installing the package would start a
# system service): apt-get download + dpkg -x.
fetch_etcd() {
  [ -x "$out/bin/etcd" ] && return 0
  local tmp
  tmp=$(mktemp -d /tmp/isola-etcd.XXXXXX)
  if ! (cd "$tmp" && apt-get download -q etcd-server >/dev/null 2>&1); then
    apt-get update -q >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download -q etcd-server >/dev/null) || { rm -rf "$tmp"; echo "cannot download Debian's etcd-server" >&2; return 1; }
  fi
  dpkg -x "$tmp"/etcd-server_*.deb "$tmp/root"
  mkdir -p "$out/bin"
  install -m 0755 "$tmp/root/usr/bin/etcd" "$out/bin/etcd"
  rm -rf "$tmp"
  log "etcd $("$out/bin/etcd" --version 2>/dev/null | head -1 | awk '{print $3}') from Debian's etcd-server"
}

if [ ! -f "$archive" ]; then
  log "MISSING: $archive (kube-apiserver, kubelet, kubectl, crio, pinns 1.32.13); the CRI-O and Kubernetes tests cannot run without it"
  exit 0
fi
if [ -f "$out/.sha256" ] && [ "$(cat "$out/.sha256")" = "$sha256" ] && [ -x "$out/bin/crio" ]; then
  fetch_etcd
  log "$out/bin is up to date"
  exit 0
fi
got=$(sha256sum "$archive" | cut -d' ' -f1)
if [ "$got" != "$sha256" ]; then
  echo "$archive: sha256 $got, expected $sha256" >&2
  exit 1
fi
rm -rf "$out/bin"
mkdir -p "$out"
tar -xJf "$archive" -C "$out"
echo "$sha256" >"$out/.sha256"
fetch_etcd
log "unpacked $(ls "$out/bin" | tr '\n' ' ')into $out/bin"
