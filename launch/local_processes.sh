#!/usr/bin/env bash
# N training processes on this machine, joined through a coordinator on 127.0.0.1: the multi-host
# code path without a cluster (CPU devices, gloo collectives). Useful to check a change.
#
#   launch/local_processes.sh 2 /tmp/workdir --config=configs/codec.py:smoke
#   DEVICES_PER_PROCESS=2 launch/local_processes.sh 2 /tmp/workdir --config=configs/codec.py:smoke
set -euo pipefail
cd "$(dirname "$0")/.."
num=${1:?usage: launch/local_processes.sh NUM_PROCESSES WORKDIR --config=... [--config.x=y ...]}
workdir=${2:?workdir}
shift 2
port=${PORT:-12355}
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
pids=()
for ((i = 0; i < num; i++)); do
  python -m telugu_jax.main --workdir="$workdir" --distributed \
    --coordinator_address="127.0.0.1:$port" --num_processes="$num" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
