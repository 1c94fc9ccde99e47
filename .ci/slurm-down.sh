#!/usr/bin/env bash
# Stops what .ci/slurm-up.sh started (slurmd, slurmctld, munged); cancels jobs left in the queue.
# Idempotent. The configuration in /etc/slurm stays (the next slurm-up.sh reuses it).
set -uo pipefail
command -v scancel >/dev/null 2>&1 && scancel --full --quiet --user "$(id -un)" 2>/dev/null
stop() {
  local pidfile=$1
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
}
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/munge/munged.pid
echo "slurm-down: stopped"
