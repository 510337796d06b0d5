#!/usr/bin/env bash
# Stop the daemons started by slurm-up.sh (by the PIDs in their pid files).
STATE="${1:-/tmp/cellgen-slurm}"
for pidfile in "$STATE"/run/*.pid; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
sleep 1
exit 0
