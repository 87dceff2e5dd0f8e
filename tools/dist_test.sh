#!/usr/bin/env bash
# Distributed testing: tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [test.py args...]
#
# On one node without PORT set, torchrun picks a free port itself (--standalone);
# set PORT to use a fixed one. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT
# on every node. Without a GPU, the processes run on the CPU and talk over gloo.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}
[[ -x "$ROOT/.venv/bin/python" && -z "${VIRTUAL_ENV:-}" ]] && PYTHON="$ROOT/.venv/bin/python"

if [[ "$NNODES" == 1 && -z "${PORT:-}" ]]; then
    RENDEZVOUS=(--standalone)
else
    RENDEZVOUS=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR"
                --master_port="${PORT:-29500}")
fi

PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
"$PYTHON" -m torch.distributed.run \
    "${RENDEZVOUS[@]}" \
    --nproc_per_node="$GPUS" \
    "$ROOT/tools/test.py" \
    "$CONFIG" "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
