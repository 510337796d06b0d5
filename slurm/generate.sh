#!/bin/bash
# Generate synthetic cells on a Slurm allocation: one Ray runtime per node, then
# `cellgen generate --address` with one actor per GPU (or per node on CPU partitions).
#
#   sbatch [sbatch options] slurm/generate.sh EXP OUT [cellgen generate options, e.g. --n 33 --size 256]
#
#SBATCH --job-name=cellgen-generate
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cellgen-generate-%j.log
#
# Environment: CELLGEN_IMAGE (Apptainer .sif), CELLGEN_CPUS_PER_WORKER, and the CELLGEN_RAY_* /
# CELLGEN_DASHBOARD_* settings of slurm/lib/ray_cluster.sh. A requeued or resubmitted job
# completes only the sequences that are missing.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: sbatch slurm/generate.sh EXP OUT [cellgen generate options]" >&2
  exit 2
fi
EXP=$1 OUT=$2
shift 2

SLURM_DIR=${CELLGEN_SLURM_DIR:-$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")}
[ -f "$SLURM_DIR/lib/ray_cluster.sh" ] || SLURM_DIR="${SLURM_SUBMIT_DIR:-.}/slurm"
# shellcheck source=lib/ray_cluster.sh
source "$SLURM_DIR/lib/ray_cluster.sh"

mkdir -p "$OUT"
cellgen_runner "$(realpath "$EXP")" "$(realpath "$OUT")"
trap ray_cluster_stop EXIT
ray_cluster_start

plan_workers

log "cellgen generate: $WORKERS actors over $RAY_NODES nodes"
"${RUN[@]}" cellgen generate "$EXP" "$OUT" --address "$RAY_ADDRESS" --workers "$WORKERS" "${DEVICE[@]}" "$@"
rc=$?
log "cellgen generate finished with exit code $rc"
exit "$rc"
