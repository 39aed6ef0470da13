#!/usr/bin/env bash
# The paper's Table 6 (CIFAR-10, Sec. 4.2) on one GPU: the full 64k-iteration recipe for each model, with the
# train set on the device and STEPS_PER_LOOP train steps per call, on the CIFAR-10 JPEGs of ../shared (carry the
# tar: ../shared does not travel to a lent GPU). Each model writes OUTDIR/<model>/summary.json (test error,
# wall times); a table of all of them is printed at the end.
# Usage: bash benchmarks/gpu_table6.sh CIFAR_TAR OUTDIR [MODEL ...]   (default: cifar_resnet20)
#   e.g. mkdir -p gpu_data && cp ../shared/data/cifar10-jpeg.tar.gz gpu_data/   (gpu_data/ is git-ignored)
#        bash benchmarks/gpu_table6.sh gpu_data/cifar10-jpeg.tar.gz table6 cifar_resnet20 cifar_resnet32
set -uo pipefail
cd "$(dirname "$0")/.."
TAR=$1; OUT=$2; shift 2
MODELS=("${@:-cifar_resnet20}")
mkdir -p "$OUT/data"
[ -d "$OUT/data/cifar10" ] || tar -xzf "$TAR" -C "$OUT/data"
for model in "${MODELS[@]}"; do
  bash benchmarks/paper_cifar10.sh "$OUT/data/cifar10" "$OUT/$model" "$model" \
    --config.steps_per_loop="${STEPS_PER_LOOP:-100}"
done
"${PYTHON:-python3}" - "$OUT" "${MODELS[@]}" <<'PY'
import json, os, sys
out, models = sys.argv[1], sys.argv[2:]
print(f"\n{'model':<18} {'step':>6} {'test top-1 err':>15} {'train s':>8} {'eval s':>7}  device")
for m in models:
    path = os.path.join(out, m, "summary.json")
    if not os.path.exists(path):
        print(f"{m:<18} no summary (see {os.path.join(out, m, 'train.log')})")
        continue
    s = json.load(open(path))
    print(f"{m:<18} {s['step']:>6} {s['test_top1_error']:>15.2f} {s['train_wall_s']:>8} {s['eval_wall_s']:>7}  {s['device']}")
PY
