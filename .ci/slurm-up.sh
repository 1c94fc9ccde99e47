#!/usr/bin/env bash
# A real single-node Slurm on this machine for the slurm executor's tests (CI and developers).
# Idempotent: installs slurm-wlm and munge if missing, writes /etc/slurm/slurm.conf (one node,
# localhost = 127.0.0.1, the machine's CPUs (at most ATTNBENCH_SLURM_CPUS, default 2) and real
# memory), starts munged, slurmctld and slurmd, and waits until the node accepts jobs.
# Needs root (apt, /etc/slurm, daemons); .ci/slurm-down.sh stops it again.
set -euo pipefail

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  echo "slurm-up: installing slurm-wlm and munge (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

CPUS=$(nproc)
MAX_CPUS=${ATTNBENCH_SLURM_CPUS:-2}
[ "$CPUS" -gt "$MAX_CPUS" ] && CPUS=$MAX_CPUS
# slurmd refuses a node that claims more memory than it has: 90% of MemTotal, in MB
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
CONF=/etc/slurm/slurm.conf
NEW=$(mktemp)
cat > "$NEW" <<CONF
# written by attnbench .ci/slurm-up.sh: one node on 127.0.0.1 for tests
ClusterName=attnbench
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=2048
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$NEW" "$CONF"; then
  mv "$NEW" "$CONF"
  changed=1
else
  rm -f "$NEW"
  changed=0
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! running /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged
fi

if [ "$changed" = 1 ]; then
  # a new configuration: restart whatever runs on the old one
  for pid in /run/slurmd.pid /run/slurmctld.pid; do
    running "$pid" && kill "$(cat "$pid")" && sleep 1
  done
fi
running /run/slurmctld.pid || /usr/sbin/slurmctld
running /run/slurmd.pid || /usr/sbin/slurmd -N localhost

for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mix*|alloc*) echo "slurm-up: node localhost $state ($CPUS CPUs, $MEM_MB MB)"; exit 0 ;;
    down*|drain*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "slurm-up: the node did not become idle; see /var/log/slurm/" >&2
exit 1
