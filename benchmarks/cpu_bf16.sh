#!/usr/bin/env bash
# Issue 33, item 4: bf16 training on a CPU with bf16 arithmetic (AVX512-BF16 or AMX), pinned to 2 cores as the
# project's CPUs are (taskset -c 0,1; JAX on the CPU):
#   1. which convolutions bf16 gets here (python -m resnet_jax.doctor), and the CPU as lscpu names it
#   2. oneDNN's bf16 passes against XLA's fp32 passes on the same bf16 values (tests/test_conv.py -k bf16)
#   3. the train step of resnet18 at 64 px, batch 128, 200 classes: bf16 with `auto` (oneDNN's bf16 convolutions
#      where they exist) and with XLA's convolutions in one process, then fp32 with `auto`; with TORCH=1, PyTorch
#      channels_last + bf16 autocast in the bf16 process (the comparison issue 33 asks for)
#   4. where a bf16 step's time goes (benchmarks/step_profile.py --dtype=bfloat16)
# On a machine with oneDNN's wheels and pytest installed (a Zen 4 or Zen 5 session):
#   TORCH=1 bash benchmarks/cpu_bf16.sh - OUTDIR
# On the host of a lent GPU machine (an Intel Xeon with AMX, 2026-11-30), which has neither oneDNN nor pytest
# nor ml_collections: pack them here (about 17 MB, into the git-ignored gpu_data/) and carry that folder:
#   bash benchmarks/cpu_bf16.sh --pack gpu_data/bf16
#   bash benchmarks/cpu_bf16.sh gpu_data/bf16 OUTDIR          (on the GPU machine; a few minutes)
# BATCH=16 STEPS=2 checks the script quickly anywhere. Results: OUTDIR/*.json and the printed tables. Record them in docs/performance.md with the CPU named.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--pack" ]; then
  DEST=$2
  lib=$("$PY" -c "from resnet_jax.native import onednn; f = onednn.find_onednn(); print(f[1] if f else '')")
  [ -n "$lib" ] || { echo "error: no oneDNN here to pack (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)"; exit 1; }
  rm -rf "$DEST" && mkdir -p "$DEST/include" "$DEST/wheels"
  cp -r "$lib/../include/oneapi" "$DEST/include/"
  gzip -1 -c "$(readlink -f "$lib/libdnnl.so")" > "$DEST/libdnnl.so.gz"
  "$PY" -m pip download -q --no-deps -d "$DEST/wheels" pytest pluggy iniconfig packaging pygments ml_collections
  du -sh "$DEST"
  exit 0
fi
PACK=$1; OUT=$2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "$PACK" != "-" ]; then  # a packed oneDNN (headers, library) and the wheels this machine lacks
  prefix="$OUT/onednn"
  mkdir -p "$prefix/lib"
  cp -r "$PACK/include" "$prefix/"
  gunzip -c "$PACK/libdnnl.so.gz" > "$prefix/lib/libdnnl.so"
  ln -sf libdnnl.so "$prefix/lib/libdnnl.so.3"
  export ONEDNN_ROOT="$prefix" LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing=()  # pure-Python wheels, installed only where the module is missing (ml_collections' absl-py and PyYAML
  "$PY" -c "import pytest" 2> /dev/null || missing+=(pytest pluggy iniconfig packaging pygments)  # came with jax/orbax)
  "$PY" -c "import ml_collections" 2> /dev/null || missing+=(ml_collections)
  if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-deps --no-index --find-links "$PACK/wheels" --target "$OUT/site" "${missing[@]}"
    export PYTHONPATH="$OUT/site"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" JAX_PLATFORMS=cpu RESNET_JAX_CACHE="$OUT/cache"
PIN=(); command -v taskset > /dev/null && PIN=(taskset -c 0,1)
flags=$(grep -o -w -E "avx512f|avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' ' || true)
{ lscpu | grep -E "^Model name|^CPU family|^Model:" || true; echo "bf16 flags: ${flags:-none}"; } | tee "$OUT/cpu.txt"
"${PIN[@]}" "$PY" -m resnet_jax.doctor | tee "$OUT/doctor.txt" || true
echo "== 1. oneDNN's bf16 passes against XLA's (tests/test_conv.py -k bf16)"
"${PIN[@]}" "$PY" -m pytest -q -p no:cacheprovider tests/test_conv.py -k bf16 -rs 2>&1 | tail -15 | tee "$OUT/bf16_tests.txt" || true
ARGS=(--model=resnet18 --batch_size="${BATCH:-128}" --image_size=64 --num_classes=200 --steps="${STEPS:-15}")
TORCH_FLAG=(); [ "${TORCH:-0}" = 1 ] && TORCH_FLAG=(--torch)
echo "== 2. the train step in bf16 (auto, xla${TORCH_FLAG:+, PyTorch autocast}), then fp32"
"${PIN[@]}" "$PY" benchmarks/train_step.py "${ARGS[@]}" --dtype=bfloat16 --conv_impl=auto,xla "${TORCH_FLAG[@]}" \
  --output="$OUT/step_bf16.json" || true
"${PIN[@]}" "$PY" benchmarks/train_step.py "${ARGS[@]}" --dtype=float32 "${TORCH_FLAG[@]}" --output="$OUT/step_fp32.json" || true
echo "== 3. where a bf16 step's time goes"
"${PIN[@]}" "$PY" benchmarks/step_profile.py --model=resnet18 --image_size=64 --batch_size="${BATCH:-128}" \
  --num_classes=200 --steps=3 --dtype=bfloat16 "${TORCH_FLAG[@]}" --output="$OUT/profile_bf16.json" || true
rm -rf "$OUT/site" "$OUT/onednn" "$OUT/cache"   # only results go back
