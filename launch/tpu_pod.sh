#!/usr/bin/env bash
# Codec training on a Cloud TPU pod slice: the same command on every worker; JAX detects the
# pod's topology, and the trainer shards batches over all of its cores.
#
#   launch/tpu_pod.sh TPU_NAME ZONE gs://bucket/workdir --config.data.train_shards='gs://bucket/shards/train-*'
#
# Each worker needs this checkout and `pip install -r requirements.txt -e . "jax[tpu]==0.10.2"`
# (run it once with --command on --worker=all). The workdir and shards must be on storage every
# worker reads, e.g. GCS (Orbax and grain read gs:// paths through etils).
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE WORKDIR [--config.x=y ...]}
zone=${2:?zone}
workdir=${3:?workdir}
shift 3
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/telugu-jax && python -m telugu_jax.main --config=${CONFIG:-configs/codec.py} \
    --workdir=$workdir --distributed $*"
