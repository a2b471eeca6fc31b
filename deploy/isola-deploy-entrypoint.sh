#!/bin/sh
# The isola-deploy image's entrypoint (/usr/local/bin/isola-deploy-entrypoint), what each pod of
# the DaemonSet deploy/isola-deploy.yaml runs. Its settings are the pod's environment: the
# ISOLA_DEPLOY_* of `isola deploy install|uninstall|should-uninstall` (see the manifest) and
# its own two:
#   ISOLA_DEPLOY_MODE               install (default): install, label the node, wait for SIGTERM;
#                                   cleanup: uninstall (again every minute while isola pods keep
#                                   the prefix), then wait
#   ISOLA_DEPLOY_UNINSTALL_ON_TERM  what SIGTERM does in install mode: deleted (default):
#                                   uninstall only when `isola deploy should-uninstall` says this
#                                   pod's DaemonSet is gone or being deleted, not for an update,
#                                   drain or restart; always; never
# ISOLA_DEPLOY_ISOLA names the isola binary (default /payload/bin/isola; tests set it).
# Once its install (or cleanup) is done it writes ISOLA_DEPLOY_READY_FILE (default
# /tmp/isola-deploy.ready), which the DaemonSet's readinessProbe reads: a rolling update goes
# on to the next node only then.
set -u
isola=${ISOLA_DEPLOY_ISOLA:-/payload/bin/isola}
ready_file=${ISOLA_DEPLOY_READY_FILE:-/tmp/isola-deploy.ready}
# Not ready until this run is done (a restarted container keeps its /tmp).
rm -f "$ready_file"
mode=${ISOLA_DEPLOY_MODE:-install}
on_term_do=${ISOLA_DEPLOY_UNINSTALL_ON_TERM:-deleted}
node=${ISOLA_DEPLOY_NODE_NAME:-this node}

# Sleeps in the background, so that a signal's trap runs at once (a foreground sleep would
# delay it); the trap ends that sleep through $! (set as soon as it started, even when the
# signal comes before the wait), with KILL: a TERM that reaches the forked child before it has
# become `sleep` is taken by the shell's handler there and lost.
pause() {
  sleep "$1" &
  wait $!
}

uninstall() {
  "$isola" deploy uninstall "$@"
}

# On SIGTERM the uninstall asks for the runtime's restart without waiting for it (--no-wait):
# this pod's termination is a call from the kubelet to the runtime, and CRI-O, stopping to
# restart, first waits for that call to end, that is for this pod.
on_term() {
  [ -z "${!:-}" ] || kill -KILL "$!" 2>/dev/null
  if [ "$mode" = install ]; then
    case "$on_term_do" in
      always) uninstall --no-wait ;;
      # Exit 0 only when the DaemonSet is gone or being deleted; when the API server cannot
      # say, isola stays installed (and the reason is printed).
      deleted) if "$isola" deploy should-uninstall; then uninstall --no-wait; fi ;;
      never) ;;
    esac
  fi
  exit 0
}

case "$on_term_do" in
  always|deleted|never) ;;
  *) echo "ISOLA_DEPLOY_UNINSTALL_ON_TERM=$on_term_do: deleted, always or never" >&2; exit 2 ;;
esac
trap on_term TERM INT
case "$mode" in
  install) "$isola" deploy install || exit 1 ;;
  cleanup)
    uninstall || exit 1
    while [ -e "${ISOLA_DEPLOY_HOST_ROOT:-/host}${ISOLA_DEPLOY_PREFIX:-/opt/isola}" ]; do
      pause 60
      uninstall || exit 1
    done ;;
  *) echo "ISOLA_DEPLOY_MODE=$mode: install or cleanup" >&2; exit 2 ;;
esac
echo "$mode done" > "$ready_file"
echo "isola-deploy: $mode done on $node; waiting for SIGTERM"
while :; do pause 3600; done
