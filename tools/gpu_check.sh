#!/usr/bin/env bash
# One call that checks mmdeform on a GPU and writes one report (docs/get_started.md):
#
#   bash tools/gpu_check.sh                 # on a CUDA machine: about 8 minutes at most
#   bash tools/gpu_check.sh --device cpu    # the same steps on the CPU, smaller: the plumbing
#
# Steps, each under `timeout`, in this order, each given what is left of the budget (480 s
# by default) up to its own cap; a step that fails or runs out of time does not stop the
# next ones:
#   install        tools/install.sh (idempotent; a second run takes a second), its lines timed
#   environment    torch, CUDA device, triton, torchvision, mmcv's CUDA ops, the MSDA backend
#   ops-tests      the Triton deformable-attention tests on the compiled kernels
#                  (MMDEFORM_TEST_DEVICE=cuda MMDEFORM_MSDA_BACKEND=triton, no interpreter)
#                  and the DCNv2 tests (torchvision's op on CUDA against mmcv's on the CPU)
#   parity-tests   DETR / Deformable DETR / DINO eval outputs, ours on the device against
#                  mmdet 3.3.0's model on the CPU
#   data           a 16 + 8 image shapes dataset for the training steps
#   train-*        one AMP training iteration of each family (tools/train.py --amp on the
#                  tests' tiny shapes configs, max_iters=1): DETR, Deformable DETR, DINO,
#                  DINO on DAT++
#   benchmark-op   benchmark.py --mode op: Triton against mmcv's op (800x1066 encoder,
#                  300 / 900 query decoders), forward and forward + backward
#   benchmark-model benchmark.py: our refine + two-stage Deformable DETR against mmdet's
#
# Options:
#   --device cuda|cpu   where to run (default cuda). cpu: what the CPU can run of every step,
#                       smaller (training without AMP, which mmengine allows on CUDA only;
#                       tests in one process, 256x256 benchmark images, one repeat on one
#                       thread; caps x3), to check the script itself
#   --budget SECONDS    the whole run's time (default 480)
#   --out DIR           where the report and the logs go (default work_dirs/gpu_check)
#   --python PY         use this Python and skip the install step
# Environment: MMDEFORM_VENV (tools/install.sh's venv, default ./.venv).
#
# Exit status: 0 if every step passed, 1 otherwise; the report's path is the last line.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE=cuda
BUDGET=480
OUT=work_dirs/gpu_check
PY=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (--device cuda|cpu, --budget S, --out DIR," \
                "--python PY)" >&2; exit 2 ;;
    esac
done
if [[ "$DEVICE" != cuda && "$DEVICE" != cpu ]]; then
    echo "gpu_check.sh: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2
fi
SKIP_INSTALL=${PY:+1}
# the CPU run: each step's cap x3, tests in one process, benchmarks on one thread
if [[ "$DEVICE" == cpu ]]; then CAP_SCALE=3 WORKERS=0; else CAP_SCALE=1 WORKERS=3; fi
PY="${PY:-${MMDEFORM_VENV:-$ROOT/.venv}/bin/python}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
REPORT="$OUT/report.md"
ROWS="$OUT/logs/rows.md"
: >"$ROWS"
START=$(date +%s)
FAILED=0
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# stamp: prefix every line with the seconds since the step began
stamp() {
    local begin line
    begin=$(date +%s)
    while IFS= read -r line || [[ -n "$line" ]]; do printf '[%4ds] %s\n' $(($(date +%s) - begin)) "$line"; done
}

# run_step NAME CAP SUMMARY_FN COMMAND...: run COMMAND under timeout (the smaller of CAP and
# what is left of the budget), log to logs/NAME.log, add a row to the report
run_step() {
    local name="$1" cap="$2" summary="$3"
    shift 3
    local log="$OUT/logs/$name.log" left limit begin rc secs status
    cap=$((cap * CAP_SCALE))
    left=$((BUDGET - ($(date +%s) - START) - 5))
    limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        printf '| %s | not run: out of time | - | 0 | budget %s s spent |\n' "$name" "$BUDGET" >>"$ROWS"
        echo "== $name: not run, the budget is spent" >&2
        FAILED=1
        return 1
    fi
    echo "== $name (at most ${limit} s)" >&2
    begin=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | stamp >"$log"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - begin))
    if ((rc == 0)); then status=passed; elif ((rc == 124 || rc == 137)); then
        status="timed out after ${limit} s"; else status=failed; fi
    ((rc == 0)) || FAILED=1
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$status" "$rc" "$secs" \
        "$("$summary" "$log" | tr '\n' ' ' | sed 's/|/\\|/g')" >>"$ROWS"
    echo "   $status in ${secs} s" >&2
    return "$rc"
}

# summaries: the key numbers of a step's log (the log lines carry the stamp prefix)
strip() { sed -E 's/^\[ *[0-9]+s\] //' "$1"; }
last_lines() { strip "$1" | tail -n 2; }
pytest_summary() {
    strip "$1" | grep -E '[0-9]+ (passed|failed|error|skipped)|^ERROR|^FAILED' | tail -n 4 \
        | sed -E 's/^=+ | =+$//g'
}
install_summary() { strip "$1" | grep '^\[install\]' | tail -n 3; }
train_summary() {
    # mmengine's training line of iteration 1: its time, memory and losses; AMP or not
    strip "$1" | grep 'Iter(train)' | tail -n 1 | grep -oE ' (time|memory|loss|loss_cls): [^ ]+'
    if grep -q 'optim_wrapper = dict(' "$1"; then
        grep -q "type='AmpOptimWrapper'" "$1" && echo AMP || echo 'no AMP'
    fi
    last_error "$1"
}
table_summary() {  # case: ours / reference (speed-up)
    strip "$1" | grep -E '^\| (enc|dec|inf|train)' | awk -F'|' '{print $2 ":" $3 "/" $4 "(" $5 ");"}'
    last_error "$1"
}
last_error() { strip "$1" | grep -E '^([A-Za-z.]*Error|error:|SystemExit)' | tail -n 1; }
data_summary() { strip "$1" | grep 'shapes dataset in'; }

# ---- install
if [[ -n "$SKIP_INSTALL" ]]; then
    printf '| install | skipped (--python %s) | - | 0 | |\n' "$PY" >>"$ROWS"
else
    run_step install 300 install_summary bash tools/install.sh
fi

# ---- environment
run_step environment 60 last_lines "$PY" - "$DEVICE" <<'EOF'
import sys
import torch, torchvision
device = sys.argv[1]
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'torchvision', torchvision.__version__)
from mmdeform.ops.ms_deform_attn import mmcv_cuda_op_available, resolve_backend
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = 'missing'
if device == 'cuda':
    if not torch.cuda.is_available():
        sys.exit('--device cuda, but torch sees no CUDA device')
    name = torch.cuda.get_device_name()
else:
    name = 'CPU'
print(f'device {name}; triton {triton_version}; mmcv CUDA ops {mmcv_cuda_op_available()}; '
      f"MSDA backend {resolve_backend(None, on_cuda=device == 'cuda', where=device)}")
EOF

# ---- tests on the device
run_step ops-tests 150 pytest_summary env -u TRITON_INTERPRET MMDEFORM_TEST_DEVICE="$DEVICE" \
    MMDEFORM_MSDA_BACKEND=triton "$PY" -m pytest tests/test_ops/test_ms_deform_attn_triton.py \
    tests/test_ops/test_neighborhood_attn_triton.py tests/test_ops/test_deform_conv.py -v -n 0 -p no:cacheprovider
run_step parity-tests 200 pytest_summary env MMDEFORM_TEST_DEVICE="$DEVICE" "$PY" -m pytest \
    tests/test_models/test_detr_parity.py tests/test_models/test_deformable_detr_parity.py \
    tests/test_models/test_dino_parity.py -k 'test_eval_outputs_match and not 900' -v -n "$WORKERS" \
    -p no:cacheprovider

# ---- one training iteration of each family
SHAPES="$OUT/shapes/"
run_step data 60 data_summary "$PY" -c "
from mmdeform.datasets import ShapesSpec, generate_shapes_dataset
generate_shapes_dataset('$SHAPES', ShapesSpec(num_train=16, num_val=8))
print('shapes dataset in $SHAPES')"
SHAPES_OPTIONS=(val_evaluator.ann_file="${SHAPES}annotations/instances_val.json"
                test_evaluator.ann_file="${SHAPES}annotations/instances_val.json")
for loader in train_dataloader val_dataloader test_dataloader; do
    SHAPES_OPTIONS+=("$loader.dataset.data_root=$SHAPES" "$loader.dataset.spec.num_train=16"
                     "$loader.dataset.spec.num_val=8")
done
AMP=(--amp)
[[ "$DEVICE" == cpu ]] && AMP=()
# on --device cuda, a machine without CUDA must fail the step, not train on the CPU
TRAIN='if [[ $1 == cuda ]] && ! "$2" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"
then echo "error: --device cuda, but torch sees no CUDA device"; exit 1; fi
exec "$2" tools/train.py "${@:3}"'
for family in detr:detr_shapes_tiny ddetr:ddetr_shapes_tiny dino:dino_shapes_tiny \
              dino_dat:dino_dat_shapes_tiny; do
    name="${family%%:*}" config="tests/data/configs/${family#*:}.py"
    run_step "train-$name" 90 train_summary bash -c "$TRAIN" train "$DEVICE" "$PY" "$config" \
        "${AMP[@]}" --work-dir "$OUT/train/$name" --cfg-options train_cfg.max_iters=1 \
        default_hooks.checkpoint.interval=1 "${SHAPES_OPTIONS[@]}"
done

# ---- benchmarks
if [[ "$DEVICE" == cpu ]]; then
    SMALL=(--warmup 0 --repeats 1 --threads 1)
    MODEL_SIZES=(--sizes 256x256 --train-sizes 256x256)
else
    SMALL=()
    MODEL_SIZES=()
fi
run_step benchmark-op 120 table_summary "$PY" tools/analysis_tools/benchmark.py --mode op \
    --device "$DEVICE" "${SMALL[@]}" --out "$OUT/benchmark_op.md"
run_step benchmark-model 150 table_summary "$PY" tools/analysis_tools/benchmark.py \
    --device "$DEVICE" "${SMALL[@]}" "${MODEL_SIZES[@]}" --out "$OUT/benchmark_model.md"

# ---- the report
{
    echo "# mmdeform GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null ||
        echo '?'); device $DEVICE; budget $BUDGET s, used $(($(date +%s) - START)) s;" \
        "$(nproc --all) cores; Python $PY"
    echo
    echo '| step | status | exit | seconds | key numbers |'
    echo '| --- | --- | ---: | ---: | --- |'
    cat "$ROWS"
    if [[ -f "$OUT/logs/install.log" ]]; then
        echo
        echo '## install, timed (seconds since the step began)'
        echo
        echo '```'
        grep -E '\[install\]' "$OUT/logs/install.log" || true
        echo '```'
    fi
    for table in benchmark_op benchmark_model; do
        if [[ -f "$OUT/$table.md" ]]; then
            echo
            echo "## $table"
            echo
            cat "$OUT/$table.md"
        fi
    done
    for log in "$OUT"/logs/*.log; do
        if grep -q "^| $(basename "$log" .log) | \(failed\|timed\)" "$ROWS"; then
            echo
            echo "## $(basename "$log" .log): the end of its log"
            echo
            echo '```'
            tail -n 25 "$log"
            echo '```'
        fi
    done
} >"$REPORT"
echo "$REPORT"
exit "$FAILED"
