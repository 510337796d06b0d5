#!/usr/bin/env bash
# Bring up a real Slurm cluster of N nodes (default 2) on this one machine, for CI and local tests.
# Usage: source <(.ci/slurm-up.sh [N] [STATE_DIR])   -> prints "export SLURM_CONF=..." lines
# Facts behind each step: ../shared/ENVIRONMENT.md ("Several Slurm nodes on one machine").
set -euo pipefail
NODES="${1:-2}"
STATE="${2:-/tmp/cellgen-slurm}"
CPUS_PER_NODE="${CELLGEN_SLURM_CPUS:-1}"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq slurm-wlm munge >&2
fi

mkdir -p "$STATE"/{spool,state,log,run}
conf="$STATE/slurm.conf"
{
  echo "ClusterName=cellgen-ci"
  echo "SlurmctldHost=localhost"
  echo "SlurmUser=root"
  echo "AuthType=auth/munge"
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
  echo "JobAcctGatherType=jobacct_gather/none"
  echo "AccountingStorageType=accounting_storage/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_Core"
  echo "ReturnToService=2"
  echo "JobRequeue=1"
  echo "MpiDefault=none"
  echo "SlurmctldPort=16817"
  echo "StateSaveLocation=$STATE/state"
  echo "SlurmdSpoolDir=$STATE/spool/%n"
  echo "SlurmctldPidFile=$STATE/run/slurmctld.pid"
  echo "SlurmdPidFile=$STATE/run/slurmd-%n.pid"
  echo "SlurmctldLogFile=$STATE/log/slurmctld.log"
  echo "SlurmdLogFile=$STATE/log/slurmd-%n.log"
  echo "KillWait=60"
  echo "InactiveLimit=0"
  echo "MinJobAge=3600"
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS_PER_NODE RealMemory=8000 State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
} >"$conf"
export SLURM_CONF="$conf"

# munge: the key may be missing on a fresh install
if [ ! -s /etc/munge/munge.key ]; then
  (command -v mungekey >/dev/null && mungekey --create --force) || \
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
fi

if [ ! -f "$STATE/state/node_state" ]; then slurmctld -i; else slurmctld; fi
for i in $(seq 1 "$NODES"); do mkdir -p "$STATE/spool/node$i"; slurmd -N "node$i"; done

deadline=$((SECONDS + 60))
until [ "$(sinfo -h -o %T 2>/dev/null | sort -u | tr -d '\n')" = "idle" ]; do
  if [ $SECONDS -gt $deadline ]; then
    echo "slurm did not come up; sinfo says: $(sinfo -h 2>&1)" >&2
    tail -20 "$STATE"/log/*.log >&2
    exit 1
  fi
  sleep 0.5
done
echo "export SLURM_CONF=$conf"
