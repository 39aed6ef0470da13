#!/usr/bin/env bash
# One GPU check on one NVIDIA H200, with jax/flax/optax/orbax and no TensorFlow (carry ml_collections as a wheel).
# Checks 1-4 and two of check 5's six variants took 470 s there (2026-11-30), so the whole script is likely longer
# than one 600 s device call: set R50_VARIANTS to a few variants per call.
#   1. resnet50 bf16 train step, batch 256 (images/s, MFU)
#   2. cifar_resnet20 training with the train set on the device (images/s; synthetic CIFAR-sized data)
#   3. resnet50 10-crop evaluation on in-memory views (images/s)
#   4. train.py's loop against its bare step, cifar_resnet20 batch 128, steps_per_loop 1, 10 and 100
#   5. resnet50 bf16 train step: XLA flags and batch sizes, one process each (failures are listed, not fatal)
#   6. resnet50 bf16 end to end with train.py (synthetic data on the device), against its bare step
# Usage: bash benchmarks/gpu_check.sh [--cpu] [OUTDIR]   (--cpu: tiny sizes, to check the script anywhere)
# Extra flag variants for check 5: R50_VARIANTS='name|XLA_FLAGS|train_step.py args;...'
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
  LOOP="--batch_size=16 --image_size=8 --steps=40 --log_every=20 --loops=1,4"
  E2E="--batch_size=4 --image_size=64 --steps=4 --log_every=2"; BIG=8
else
  R50="--batch_size=256 --image_size=224 --steps=20"; R20="--batch_size=128 --steps=50"; EV="--batch_size=64 --batches=10"
  LOOP="--batch_size=128 --image_size=32 --steps=3000 --log_every=100 --loops=1,10,100"
  E2E="--batch_size=256 --image_size=224 --steps=300 --log_every=100"; BIG=512
fi
R50_VARIANTS=${R50_VARIANTS:-"default||;no_command_buffers|--xla_gpu_enable_command_buffer=|;autotune_0|--xla_gpu_autotune_level=0|;no_triton_gemm|--xla_gpu_enable_triton_gemm=false|;batch_$BIG||--batch_size=$BIG;loop_10||--loops=10"}
"$PY" benchmarks/train_step.py --model=resnet50 --dtype=bfloat16 $R50 --output="$OUT/resnet50_train.json"
"$PY" benchmarks/train_step.py --model=cifar_resnet20 --image_size=32 --num_classes=10 --on_device_data $R20 \
  --output="$OUT/cifar_resnet20_on_device.json"
"$PY" benchmarks/eval_step.py --model=resnet50 --dtype=bfloat16 --crops=10 $EV --output="$OUT/resnet50_10crop.json"
"$PY" benchmarks/train_loop.py --model=cifar_resnet20 $LOOP --output="$OUT/cifar_resnet20_train_py.json"
IFS=';' read -ra variants <<< "$R50_VARIANTS"
for variant in "${variants[@]}"; do
  IFS='|' read -r name flags extra <<< "$variant"
  all_flags="${XLA_FLAGS:-}${flags:+ $flags}"
  env ${all_flags:+XLA_FLAGS="$all_flags"} "$PY" benchmarks/train_step.py --model=resnet50 --dtype=bfloat16 $R50 \
    $extra --output="$OUT/r50_$name.json" || echo "variant $name failed" | tee "$OUT/r50_$name.failed"
done
"$PY" benchmarks/train_loop.py --model=resnet50 --dtype=bfloat16 --num_classes=1000 $E2E \
  --output="$OUT/resnet50_train_py.json"
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
loop = json.load(open(f"{out}/cifar_resnet20_train_py.json"))
print(f"\ncifar_resnet20 batch {loop['batch_size']}: bare step {loop['bare_back_to_back_ms']:.3f} ms back to back, "
      f"{loop['bare_waiting_ms']:.3f} ms waiting for each")
for key in sorted(k for k in loop if k.endswith("_vs_bare")):
    ms = loop[key.replace("_vs_bare", "_ms")]
    print(f"  train.py {key[len('train_py_'):-len('_vs_bare')]:<10} {ms:8.3f} ms/step  {loop['batch_size'] / ms * 1e3:10.0f} "
          f"images/s  {loop[key]:.3f} x bare")
import glob, os
print(f"\n{'resnet50 bf16 variant':<24} {'batch':>6} {'images/s':>10} {'MFU':>6} {'compile s':>10}")
for path in sorted(glob.glob(f"{out}/r50_*")):
    name = os.path.basename(path)[4:].rsplit(".", 1)[0]
    if path.endswith(".failed"):
        print(f"{name:<24} failed")
        continue
    r = json.load(open(path))
    keys = [k[:-len("images_per_second")] for k in r if k.endswith("images_per_second") and not k.startswith("reference")]
    for prefix in keys:
        mfu = r.get(prefix + "mfu")
        print(f"{name + ('/' + prefix.rstrip('_') if prefix else ''):<24} {r['batch_size']:>6} "
              f"{r[prefix + 'images_per_second']:10.1f} {f'{mfu:.1%}' if mfu else 'n/a':>6} {r[prefix + 'compile_seconds']:10.1f}")
e2e = json.load(open(f"{out}/resnet50_train_py.json"))
ms = e2e["train_py_loop1_ms"]
print(f"\nresnet50 bf16 train.py end to end (synthetic, on device), batch {e2e['batch_size']}: "
      f"{e2e['batch_size'] / ms * 1e3:.1f} images/s, {e2e['train_py_loop1_vs_bare']:.3f} x its bare step "
      f"({e2e['batch_size'] / e2e['bare_back_to_back_ms'] * 1e3:.1f} images/s)")
PY
