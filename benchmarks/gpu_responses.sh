#!/usr/bin/env bash
# Figure 7's study on one GPU: plain-20/56 and ResNet-20/56/110 trained with the paper's CIFAR recipe (the train set
# on the device, STEPS_PER_LOOP steps per jitted call), then every 3x3 layer's response std on the test split.
# ../shared's CIFAR-10 JPEGs (20 MB) travel as they are:
#   bash benchmarks/gpu_responses.sh ../shared/data/cifar10-jpeg.tar.gz runs/responses_gpu [reproduce flags ...]
# (carry the archive into gpu_data/ first). The study resumes: rerun the same command if a call's limit cuts it
# short. The default 6,400 iterations are a tenth of the paper's 64k; --steps=64000 is the whole schedule.
# Prints responses.md (per-network summaries and both claims) and the whole call's time and device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TAR=$1; OUT=$2; shift 2
mkdir -p "$OUT/data"
[ -d "$OUT/data/cifar10" ] || tar -xzf "$TAR" -C "$OUT/data"
start=$(date +%s)
"$PY" -m resnet_jax.reproduce responses --dataset="folder:$OUT/data/cifar10" --steps=6400 --on_device_data \
  --workdir="$OUT" "$@"
echo "gpu responses study: $(( $(date +%s) - start )) s in all (training, responses, figure) on $("$PY" -c \
  'import jax; print(jax.devices()[0].device_kind)')"
