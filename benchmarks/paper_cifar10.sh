#!/usr/bin/env bash
# The paper's full CIFAR-10 run (Sec. 4.2, Table 6) on one accelerator: train on 45k images (5k held out for
# validation), 64k iterations of batch 128, lr 0.1 -> 0.01 at 32k -> 0.001 at 48k, with the train set on the
# device; then the test error of the final model with evaluate.py. Writes OUTDIR/summary.json (wall times,
# test error) beside the run's metrics.jsonl and curves.png. Needs no TensorFlow.
#
# Usage: bash benchmarks/paper_cifar10.sh DATA_ROOT OUTDIR [MODEL] [--config.<field>=<value> ...]
#   DATA_ROOT: <root>/{train,test}/<class>/<image> (e.g. ../shared's cifar10-jpeg.tar.gz, extracted)
#   TRAIN_TIMEOUT=seconds stops training early (the latest checkpoint is then evaluated, and summary.json
#   says which step it is).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=$1; OUTDIR=$2; MODEL=${3:-cifar_resnet20}; shift $(( $# < 3 ? $# : 3 ))
PY=${PYTHON:-python3}
WORKDIR="$OUTDIR/$MODEL"
mkdir -p "$WORKDIR"
start=$(date +%s)
timeout "${TRAIN_TIMEOUT:-0}" "$PY" train.py --config="resnet_jax/configs/cifar10.py:$MODEL" --workdir="$WORKDIR" \
  --config.dataset="folder:$DATA" --config.on_device_data=True "$@" 2>&1 | tr '\r' '\n' | \
  awk 'NR % 20 == 1 || !/it\/s|step\/s/' | tee "$OUTDIR/train.log"
trained=$(date +%s)
"$PY" evaluate.py --workdir="$WORKDIR" --split=test --batch_size=500 --output="$OUTDIR/test.json" \
  | tee "$OUTDIR/evaluate.log"
"$PY" - "$OUTDIR" "$MODEL" $((trained - start)) $(( $(date +%s) - trained )) <<'PY'
import json, sys
out, model, train_s, eval_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
test = json.load(open(f"{out}/test.json"))
import jax
summary = dict(model=model, device=jax.devices()[0].device_kind, jax=jax.__version__, step=test["step"],
               test_top1_error=test["top1_error"], test_top5_error=test["top5_error"], train_wall_s=train_s,
               eval_wall_s=eval_s)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary))
PY
