#!/usr/bin/env bash
# One GPU check (~3 minutes on one NVIDIA H200 with jax/flax/optax/orbax and no TensorFlow):
#   1. resnet50 bf16 train step, batch 256 (images/s, MFU)
#   2. cifar_resnet20 training with the train set on the device (images/s; synthetic CIFAR-sized data)
#   3. resnet50 10-crop evaluation on in-memory views (images/s)
# Usage: bash benchmarks/gpu_check.sh [--cpu] [OUTDIR]   (--cpu: tiny sizes, to check the script anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--cpu" ]; then CPU=1; shift; else CPU=0; fi
OUT=${1:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$CPU" = 1 ]; then
  export JAX_PLATFORMS=cpu
  R50="--batch_size=4 --image_size=64 --steps=2"; R20="--batch_size=32 --steps=3"; EV="--batch_size=2 --batches=2"
else
  R50="--batch_size=256 --image_size=224 --steps=20"; R20="--batch_size=128 --steps=50"; EV="--batch_size=64 --batches=10"
fi
"$PY" benchmarks/train_step.py --model=resnet50 --dtype=bfloat16 $R50 --output="$OUT/resnet50_train.json"
"$PY" benchmarks/train_step.py --model=cifar_resnet20 --image_size=32 --num_classes=10 --on_device_data $R20 \
  --output="$OUT/cifar_resnet20_on_device.json"
"$PY" benchmarks/eval_step.py --model=resnet50 --dtype=bfloat16 --crops=10 $EV --output="$OUT/resnet50_10crop.json"
"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r50, r20, ev = (json.load(open(f"{out}/{n}.json")) for n in ("resnet50_train", "cifar_resnet20_on_device", "resnet50_10crop"))
print(f"\ndevice: {r50['device_kind']} x{r50['num_devices']}, jax {r50['jax_version']}")
print(f"{'check':<42} {'images/s':>10} {'MFU':>6}")
mfu = f"{r50['mfu']:.1%}" if r50.get("mfu") else "n/a"
print(f"{'resnet50 bf16 train step, batch ' + str(r50['batch_size']):<42} {r50['images_per_second']:10.1f} {mfu:>6}")
print(f"{'cifar_resnet20 on-device training, batch ' + str(r20['batch_size']):<42} {r20['images_per_second']:10.1f}")
print(f"{'resnet50 bf16 10-crop evaluation':<42} {ev['images_per_second']:10.1f}")
PY
