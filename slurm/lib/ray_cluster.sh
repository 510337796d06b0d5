# shellcheck shell=bash
# Start ONE Ray runtime per node of the Slurm allocation, wait for all of them, stop them cleanly.
# Sourced by slurm/train.sh and slurm/generate.sh; nothing here is site-specific.
#
# Inputs (environment, all optional):
#   CELLGEN_IMAGE           an Apptainer .sif: every command runs inside it (apptainer exec --nv)
#   CELLGEN_BIND            extra comma-separated bind paths for apptainer
#   CELLGEN_RAY_PORT        GCS port of the head (default 6379 + job id % 1000, so jobs sharing a node differ)
#   CELLGEN_DASHBOARD_HOST  bind address of the Ray dashboard (default 127.0.0.1: reach it with
#                           ssh -L 8265:localhost:8265 <head-node>); anything else is a deliberate opt-in
#   CELLGEN_DASHBOARD_PORT  default 8265
#   CELLGEN_JOIN_TIMEOUT    seconds to wait for the head and all nodes (default 180)
#   CELLGEN_LOG_DIR         where each node's Ray log goes (default: the submit folder)
# Outputs: RAY_ADDRESS (ip:port of the head), RAY_NODES (number of nodes), RUN (command prefix array).

log() { printf '[cellgen %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Command prefix: inside the container when CELLGEN_IMAGE names one, else the current environment.
cellgen_runner() {
  RUN=()
  if [ -n "${CELLGEN_IMAGE:-}" ]; then
    [ -f "$CELLGEN_IMAGE" ] || die "CELLGEN_IMAGE=$CELLGEN_IMAGE does not exist (build it: apptainer build cellgen.sif containers/cellgen.def)"
    command -v apptainer >/dev/null || die "CELLGEN_IMAGE is set but apptainer is not on PATH (module load apptainer?)"
    local binds="$*"
    [ -n "${CELLGEN_BIND:-}" ] && binds="${binds:+$binds,}$CELLGEN_BIND"
    RUN=(apptainer exec --nv)
    [ -n "$binds" ] && RUN+=(--bind "$binds")
    RUN+=("$CELLGEN_IMAGE")
  fi
}

_ray_alive_nodes() {
  # "ray status" lists one "1 node_<id>" line per alive node under "Active:".
  "${RUN[@]}" ray status --address="$RAY_ADDRESS" 2>/dev/null |
    awk '/^Active:/{a=1;next} /^(Pending|Recent failures):/{a=0} a && /node_/{n++} END{print n+0}'
}

# CPUs and GPUs per node of this allocation -> ALLOC_CPUS, ALLOC_GPUS.
allocation() {
  ALLOC_CPUS="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
  ALLOC_GPUS="${SLURM_GPUS_ON_NODE:-0}"
  case "$ALLOC_GPUS" in *[!0-9]*) ALLOC_GPUS=$(echo "$ALLOC_GPUS" | grep -o '[0-9]*$');; esac
  ALLOC_GPUS="${ALLOC_GPUS:-0}"
}

# Workers for the stage: one per GPU of the allocation, else one per CELLGEN_CPUS_PER_WORKER
# cores (default: one per node using all its cores) -> WORKERS, CPUS_PER_WORKER, DEVICE (array).
plan_workers() {
  allocation
  if [ "$ALLOC_GPUS" -gt 0 ]; then
    WORKERS=$((RAY_NODES * ALLOC_GPUS))
    CPUS_PER_WORKER=$(( ALLOC_CPUS / ALLOC_GPUS > 0 ? ALLOC_CPUS / ALLOC_GPUS : 1 ))
    DEVICE=(--gpu)
  else
    CPUS_PER_WORKER="${CELLGEN_CPUS_PER_WORKER:-$ALLOC_CPUS}"
    WORKERS=$((RAY_NODES * (ALLOC_CPUS / CPUS_PER_WORKER > 0 ? ALLOC_CPUS / CPUS_PER_WORKER : 1)))
    DEVICE=(--no-gpu)
  fi
}

ray_cluster_start() {
  local timeout="${CELLGEN_JOIN_TIMEOUT:-180}"
  local port="${CELLGEN_RAY_PORT:-$((6379 + ${SLURM_JOB_ID:-0} % 1000))}"
  local dash_host="${CELLGEN_DASHBOARD_HOST:-127.0.0.1}"
  local dash_port="${CELLGEN_DASHBOARD_PORT:-8265}"
  allocation
  local cpus="$ALLOC_CPUS" gpus="$ALLOC_GPUS"

  mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  RAY_NODES=${#NODES[@]}
  local head="${NODES[0]}"
  # The head's address as the other nodes see it ("hostname --ip-address" can give 127.0.0.1).
  local ip
  ip=$(srun --overlap -N1 -n1 -w "$head" hostname -I | awk '{print $1}')
  [ -n "$ip" ] || die "could not find the IP address of head node $head"
  RAY_ADDRESS="$ip:$port"
  export RAY_ADDRESS

  # One token for every node of this job: Ray 2.60 token auth, never a cluster open to anyone.
  export RAY_AUTH_MODE=token
  if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    RAY_AUTH_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  fi
  export RAY_AUTH_TOKEN RAY_USAGE_STATS_ENABLED=0
  # Ray Train run state in the dashboard (Train tab) is off unless the head is started with this.
  export RAY_TRAIN_ENABLE_STATE_TRACKING=1

  if [ "$dash_host" != "127.0.0.1" ] && [ "$dash_host" != "localhost" ]; then
    log "WARNING: the Ray dashboard binds to $dash_host:$dash_port, reachable beyond this node"
  fi
  log "starting Ray head on $head ($RAY_ADDRESS), dashboard $dash_host:$dash_port, $cpus CPUs, $gpus GPUs per node"
  RAY_STEP_PIDS=()
  local logs="${CELLGEN_LOG_DIR:-${SLURM_SUBMIT_DIR:-.}}"
  mkdir -p "$logs"
  srun --overlap -N1 -n1 -w "$head" "${RUN[@]}" ray start --head --block \
    --node-ip-address="$ip" --port="$port" \
    --dashboard-host="$dash_host" --dashboard-port="$dash_port" \
    --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats \
    >"$logs/ray-${SLURM_JOB_ID}-$head.log" 2>&1 &
  RAY_STEP_PIDS+=($!)

  local deadline=$((SECONDS + timeout))
  until "${RUN[@]}" ray status --address="$RAY_ADDRESS" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "Ray head on $head did not answer at $RAY_ADDRESS within ${timeout}s"
    kill -0 "${RAY_STEP_PIDS[0]}" 2>/dev/null || die "Ray head on $head exited during start-up (see $logs/ray-${SLURM_JOB_ID}-$head.log)"
    sleep 1
  done
  log "Ray head answers"

  local node
  for node in "${NODES[@]:1}"; do
    srun --overlap -N1 -n1 -w "$node" "${RUN[@]}" ray start --block \
      --address="$RAY_ADDRESS" --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats \
      >"$logs/ray-${SLURM_JOB_ID}-$node.log" 2>&1 &
    RAY_STEP_PIDS+=($!)
  done

  local alive=0
  until [ "$alive" -ge "$RAY_NODES" ]; do
    alive=$(_ray_alive_nodes)
    [ "$alive" -ge "$RAY_NODES" ] && break
    [ $SECONDS -lt $deadline ] || die "only $alive of $RAY_NODES Ray nodes joined within ${timeout}s (nodes: ${NODES[*]})"
    sleep 1
  done
  log "Ray cluster up: $alive nodes"
}

ray_cluster_stop() {
  [ -n "${RAY_ADDRESS:-}" ] || return 0
  log "stopping Ray"
  # End the "srun ray start --block" steps: each one then stops the Ray processes it started.
  # (No "ray stop": it kills every Ray runtime of this user on the node, other jobs' too.)
  local pid
  for pid in "${RAY_STEP_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${RAY_STEP_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  RAY_ADDRESS=""
}
