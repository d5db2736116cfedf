#!/usr/bin/env bash
# Codec training on every GPU (or TPU core) of one machine: JAX sees all local devices and the
# trainer shards each batch over them (data parallel); nothing else to set up.
#
#   launch/single_host.sh WORKDIR [--config.data.train_shards=...] [other --config.* overrides]
#
# GPUs need the CUDA build of JAX: pip install -U "jax[cuda12]==0.10.2".
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:?usage: launch/single_host.sh WORKDIR [--config.x=y ...]}
shift
# Let XLA overlap collectives with compute on GPUs; harmless elsewhere.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
exec python -m telugu_jax.main --config="${CONFIG:-configs/codec.py}" --workdir="$workdir" "$@"
