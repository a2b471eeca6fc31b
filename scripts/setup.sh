#!/usr/bin/env bash
# Installs everything isola needs to build, test and run on a fresh Debian 12 machine:
# Debian packages, the vhost-user daemons (from crates.io) and cargo-nextest.
# Idempotent: a second run only checks.
set -euo pipefail

VIRTIOFSD_VERSION=1.14.0
VHOST_DEVICE_VSOCK_VERSION=0.3.0
TOOLS_ROOT=${TOOLS_ROOT:-/usr/local}

APT_PACKAGES=(
  qemu-system-x86 qemu-system-data   # the VMM and qboot.rom
  libseccomp-dev libcap-ng-dev       # to build virtiofsd
  cpio kmod lz4 zstd                 # the guest image build
  gcc make bc bison flex libelf-dev xz-utils   # the tailored guest kernel (guest/build-kernel.sh)
  busybox-static umoci skopeo        # local test images (no registry here)
  containerd runc                    # the container engine and the runc baseline
  containernetworking-plugins iproute2
  protobuf-compiler                  # protoc, for the k8s-cri crate (the CRI test client)
  iptables nftables bindfs           # the workload tools of the tools test image
  conmon                             # CRI-O's monitor (its runc handler) in the CRI-O tests
)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# A build and test run needs about 6 GB: target/ (3.6 GB), the kernel source tree while it builds
# (1 GB), the crates.io tools' build directories, the Debian packages. Say so up front, rather
# than fail deep inside a compiler with ENOSPC.
NEED_MB=6144
read -r free_mb mount < <(df --output=avail,target -m . 2>/dev/null | tail -n 1) || true
if [[ "${free_mb:-}" =~ ^[0-9]+$ ]]; then
  if [ "$free_mb" -lt "$NEED_MB" ]; then
    log "WARNING: $free_mb MiB free on $mount; a full build and test run needs about $NEED_MB MiB (cargo clean and rm -rf build/ in other checkouts free some)"
  else
    log "$free_mb MiB free on $mount"
  fi
fi

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh installs system packages: run it as root (sudo make setup)" >&2
  exit 1
fi

pkgs=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || pkgs+=("$p")
done
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
else
  log "Debian packages present"
fi

# cargo install a crate at an exact version unless that version is already installed.
cargo_tool() {
  local crate=$1 version=$2 bin=$3
  if "$TOOLS_ROOT/bin/$bin" --version 2>/dev/null | grep -qF "$version"; then
    log "$crate $version present"
    return
  fi
  log "building $crate $version from crates.io (a few minutes)"
  cargo install --quiet --locked --root "$TOOLS_ROOT" "$crate@$version"
}
cargo_tool virtiofsd "$VIRTIOFSD_VERSION" virtiofsd
cargo_tool vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION" vhost-device-vsock

if ! command -v cargo-nextest >/dev/null; then
  log "installing cargo-nextest"
  cargo install --quiet --locked cargo-nextest
fi
log "done"
