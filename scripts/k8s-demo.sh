#!/usr/bin/env bash
# make k8s-demo / make k8s-demo-stop: a single-node Kubernetes 1.32 with isola for a person to
# try (tests/src/bin/k8s-demo.rs, the tests' own cluster), left running in the background
# until stopped. RUNTIME=crio puts CRI-O on the node instead of containerd.
#
#   scripts/k8s-demo.sh start|stop
set -euo pipefail
cd "$(dirname "$0")/.."
state=build/k8s-demo
bin=target/debug/k8s-demo

running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

case ${1:-start} in
start)
  if running; then
    echo "the demo cluster already runs (pid $(cat "$state/pid")):"
    cat "$state/info" 2>/dev/null || echo "(still starting: see $state/log)"
    exit 0
  fi
  [ -x "$bin" ] || { echo "$bin is missing: run make k8s-demo (it builds it)" >&2; exit 1; }
  mkdir -p "$state"
  rm -f "$state/info"
  setsid "$bin" "${RUNTIME:-containerd}" "$PWD/$state/info" >"$state/log" 2>&1 </dev/null &
  echo $! >"$state/pid"
  echo "starting the cluster (log: $state/log) ..."
  for _ in $(seq 600); do
    [ -f "$state/info" ] && { cat "$state/info"; exit 0; }
    running || { echo "the demo cluster did not start:" >&2; tail -40 "$state/log" >&2; exit 1; }
    sleep 1
  done
  echo "the demo cluster is not up after 10 minutes: see $state/log" >&2
  exit 1
  ;;
stop)
  if ! running; then
    echo "no demo cluster runs"
    rm -rf "$state"
    exit 0
  fi
  pid=$(cat "$state/pid")
  kill -TERM "$pid"
  for _ in $(seq 180); do
    kill -0 "$pid" 2>/dev/null || { echo "the demo cluster is gone"; rm -rf "$state"; exit 0; }
    sleep 1
  done
  echo "the demo cluster (pid $pid) did not stop within 3 minutes: see $state/log" >&2
  exit 1
  ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
