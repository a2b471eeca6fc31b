#!/usr/bin/env bash
# Checks the isola-deploy image archive (scripts/build-deploy-image.sh) without a container
# runtime: unpacks it into a temporary directory and runs, chrooted into its rootfs (as root, or
# in a user namespace), what the DaemonSet's pod runs: isola from /payload with the image's own
# libraries, `isola deploy` and its subcommands, util-linux's nsenter, busybox's sh, and the
# entrypoint (a bad setting must make it exit 2 at once). Leaves nothing behind.
#
#   scripts/check-deploy-image.sh build/images/isola-deploy.tar     # make deploy-image runs it
set -euo pipefail

tar=${1:?usage: check-deploy-image.sh <isola-deploy.tar>}
[ -f "$tar" ] || { echo "check-deploy-image: no $tar: make deploy-image" >&2; exit 1; }
work=$(mktemp -d /tmp/isola-deploy-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
skopeo --insecure-policy copy --quiet "oci-archive:$tar" "oci:$work/oci:latest"
umoci unpack --image "$work/oci:latest" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
enter=(chroot "$rootfs")
[ "$(id -u)" = 0 ] || enter=(unshare -r chroot "$rootfs")

fail() { echo "check-deploy-image: $*" >&2; exit 1; }
# A clean environment, as a container's: the image's PATH alone.
run() { env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${enter[@]}" "$@"; }

run /payload/bin/isola --version | grep -q '^isola ' || fail "/payload/bin/isola does not run in the image"
for sub in install uninstall should-uninstall; do
  run /payload/bin/isola deploy "$sub" --help >/dev/null || fail "isola deploy $sub --help failed"
done
run /usr/bin/nsenter --version | grep -q util-linux || fail "/usr/bin/nsenter is not util-linux's"
[ "$(run /bin/sh -c 'echo ok')" = ok ] || fail "/bin/sh does not run"
rc=0
run /usr/bin/env ISOLA_DEPLOY_MODE=bogus /usr/local/bin/isola-deploy-entrypoint 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "the entrypoint answered ISOLA_DEPLOY_MODE=bogus with $rc, not 2"
entry=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["process"]["args"][0])' \
  "$work/bundle/config.json")
[ "$entry" = /usr/local/bin/isola-deploy-entrypoint ] || fail "entrypoint is $entry"
echo "check-deploy-image: $tar runs isola $(run /payload/bin/isola --version | cut -d' ' -f2), nsenter, sh and its entrypoint"
