#!/usr/bin/env bash
# The built-in demo: generate the shapes dataset (first run only), train a detector
# on it, evaluate it (COCO AP on the generated val split) and draw its predictions.
#
#   bash tools/demo.sh [--amp] [CONFIG]       (make demo runs the install first)
#
# Writes work_dirs/demo/<config name>/ (logs, checkpoints) and
# work_dirs/demo/<config name>/predictions/*.png. --amp trains in mixed precision
# (tools/train.py --amp: bf16 on the CPU, docs/get_started.md) into
# work_dirs/demo/<config name>_amp/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
AMP=()
if [ "${1:-}" = --amp ]; then
    AMP=(--amp)
    shift
fi
CONFIG=${1:-${DEMO_CONFIG:-configs/shapes/deformable_detr_refine_two_stage_shapes.py}}
NAME=$(basename "$CONFIG" .py)${AMP:+_amp}
WORK_DIR=work_dirs/demo/$NAME
PY=${PYTHON:-$ROOT/.venv/bin/python}

start=$(date +%s)
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "${AMP[@]}"
trained=$(date +%s)
CKPT=$(cat "$WORK_DIR/last_checkpoint")
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
    --show-dir "$ROOT/$WORK_DIR/predictions" --score-thr 0.3
echo "Training took $(( (trained - start) / 60 )) min $(( (trained - start) % 60 )) s on $(nproc) cores."
echo "Predictions on the val images: $WORK_DIR/predictions/"
