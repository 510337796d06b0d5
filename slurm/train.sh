#!/bin/bash
# Train cellgen on a Slurm allocation: one Ray runtime per node, then `cellgen train --address`.
#
#   sbatch [sbatch options] slurm/train.sh CONFIG EXP DATA [cellgen train options]
#   e.g. sbatch --nodes=2 --gpus-per-node=4 --cpus-per-task=32 slurm/train.sh configs/filo.yaml exp/filo data/filo
#
# Defaults below; override any of them on the sbatch line. GPUs are not requested by default
# (the script assumes no particular partition): add --gpus-per-node=N for GPU training.
#SBATCH --job-name=cellgen-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cellgen-train-%j.log
#
# Environment: CELLGEN_IMAGE (Apptainer .sif; default: current Python environment),
# CELLGEN_CPUS_PER_WORKER (CPU training: cores per Ray Train worker; default all cores of a node),
# and the CELLGEN_RAY_* / CELLGEN_DASHBOARD_* settings of slurm/lib/ray_cluster.sh.
# Preemption: on SIGTERM (scancel, --signal before the time limit, preemption) training writes a
# checkpoint and exits 143; this script then requeues the job, which resumes from that checkpoint.
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: sbatch slurm/train.sh CONFIG EXP DATA [cellgen train options]" >&2
  exit 2
fi
CONFIG=$1 EXP=$2 DATA=$3
shift 3

# sbatch runs a copy of this script: find the original to source the shared library.
SLURM_DIR=${CELLGEN_SLURM_DIR:-$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")}
[ -f "$SLURM_DIR/lib/ray_cluster.sh" ] || SLURM_DIR="${SLURM_SUBMIT_DIR:-.}/slurm"
# shellcheck source=lib/ray_cluster.sh
source "$SLURM_DIR/lib/ray_cluster.sh"

mkdir -p "$EXP"
cellgen_runner "$(realpath "$DATA")" "$(realpath "$EXP")" "$(realpath "$(dirname "$CONFIG")")"
trap ray_cluster_stop EXIT
ray_cluster_start

plan_workers
resume=()
if compgen -G "$EXP/checkpoints/epoch_*.pt" >/dev/null; then
  resume=(--resume)
  log "checkpoints found in $EXP: resuming (restart ${SLURM_RESTART_COUNT:-0})"
fi

log "cellgen train: $WORKERS workers x $CPUS_PER_WORKER CPUs over $RAY_NODES nodes"
"${RUN[@]}" cellgen train "$CONFIG" -o "$EXP" --data "$DATA" --address "$RAY_ADDRESS" \
  --workers "$WORKERS" "${DEVICE[@]}" --set "train.cpus_per_worker=$CPUS_PER_WORKER" "${resume[@]}" "$@" &
stage=$!
trap 'log "SIGTERM: asking training to checkpoint and stop"; kill -TERM "$stage" 2>/dev/null' TERM
# wait returns early when a trapped signal arrives: wait until the stage has really ended.
while :; do
  wait "$stage"; rc=$?
  kill -0 "$stage" 2>/dev/null || break
done

if [ "$rc" -eq 143 ]; then
  log "training checkpointed after a signal: requeueing job $SLURM_JOB_ID"
  ray_cluster_stop
  scontrol requeue "$SLURM_JOB_ID" || log "requeue refused: resubmit this script, it resumes"
  exit 0
fi
log "cellgen train finished with exit code $rc"
exit "$rc"
