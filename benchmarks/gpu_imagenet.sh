#!/usr/bin/env bash
# The ImageNet study (Sec. 4.1, Figure 4, Table 2) on one GPU: plain-18/34 and ResNet-18/34 (option A) with the
# full 40-epoch tiny_imagenet recipe on Tiny ImageNet's first 100 classes, the train set on the device (scale-
# augmented there as on the host, Sec. 3.4; since 2026-12-01) and STEPS_PER_LOOP steps per jitted call. ../shared does not travel to a lent GPU, so pack the subset here first
# (~35 MB, into the git-ignored gpu_data/) and carry it:
#   bash benchmarks/gpu_imagenet.sh --pack ../shared/data/tiny-imagenet-200.tar.gz gpu_data/tiny-imagenet-100.tar.gz
# then, on the GPU (the study resumes: rerun the same command if a call's time limit cuts it short):
#   bash benchmarks/gpu_imagenet.sh gpu_data/tiny-imagenet-100.tar.gz runs/imagenet_gpu [reproduce flags ...]
# The extra flags go to `python -m resnet_jax.reproduce imagenet` after the defaults, so they override them
# (e.g. --seeds=2, --steps=2000, or --classes=3 --steps=8 --batch_size=8 to check the script on a CPU).
# Prints imagenet.md (Table 2 with the claims, the training's wall time) and the whole call's time and device.
# STUDY=shortcuts runs Table 3's study (ResNet-34 A/B/C, plain-34) the same way: benchmarks/gpu_shortcuts.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CLASSES=${CLASSES:-100}
if [ "${1:-}" = "--pack" ]; then
  SRC=$2; DEST=$3; tmp=$(mktemp -d)
  tar -xzf "$SRC" -C "$tmp"
  "$PY" -c "import sys; from resnet_jax.reproduce import class_subset; class_subset(sys.argv[1], int(sys.argv[2]), sys.argv[3])" \
    "$tmp/tiny-imagenet-200" "$CLASSES" "$tmp/tiny-imagenet-$CLASSES"
  mkdir -p "$(dirname "$DEST")"
  tar -czhf "$DEST.tmp" -C "$tmp" "tiny-imagenet-$CLASSES" && mv "$DEST.tmp" "$DEST"   # -h: the files, not links
  rm -rf "$tmp"
  du -h "$DEST"
  exit 0
fi
TAR=$1; OUT=$2; shift 2
mkdir -p "$OUT/data"
name=$(tar -tzf "$TAR" | sed -n 1p | cut -d/ -f1)
[ -d "$OUT/data/$name" ] || tar -xzf "$TAR" -C "$OUT/data"
start=$(date +%s)
"$PY" -m resnet_jax.reproduce "${STUDY:-imagenet}" --dataset="folder:$OUT/data/$name" --batch_size=64 --on_device_data \
  --steps_per_loop="${STEPS_PER_LOOP:-50}" --workdir="$OUT" "$@"
echo "gpu ${STUDY:-imagenet} study: $(( $(date +%s) - start )) s in all (training, evaluations, figure) on $("$PY" -c \
  'import jax; print(jax.devices()[0].device_kind)')"
