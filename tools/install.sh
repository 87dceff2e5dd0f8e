#!/usr/bin/env bash
# Idempotent install of mmdeform and its pinned stack into ./.venv.
#
#   bash tools/install.sh          # both README commands call this first
#
# * torch 2.14.1 / torchvision 0.29.1, mmengine 0.10.7, mmdet 3.3.0, scipy, pycocotools
# * mmcv 2.1.0 with its compiled ops, built from the PyPI sdist (PyPI has no wheel for
#   torch 2.14): setuptools<81, no build isolation, -std=c++17 raised to -std=c++20 for
#   torch 2.14's headers, no debug info. The build is CPU-only on every machine: the GPU
#   is hidden from it, so it never calls a CUDA compiler. The wheel is cached in
#   $MMDEFORM_CACHE/wheels/mmcv-2.1.0-torch<version>-cpu/ (default ~/.cache/mmdeform),
#   a directory that names its torch and says CPU, and reused by every later install.
#   An mmcv 2.1.0 that already imports with its compiled ops (a user's own CUDA build,
#   say) is kept as it is.
# * onnx, onnxruntime and onnxscript (requirements/deploy.txt) for the ONNX export and its
#   tests; MMDEFORM_DEPLOY=0 skips them.
# * mmdeform itself, editable, which compiles its CPU kernels of deformable and
#   neighbourhood attention (mmdeform/ops/csrc, about a minute on 2 cores); the script
#   fails unless both load.
#
# A second run compares a stamp of the requirement files and returns in about a second.
#
# MMDEFORM_TORCH=2.1.2 installs that torch instead (with its torchvision, and numpy<2 for
# torch < 2.3, whose wheels were built against numpy 1), e.g. to check the last stack that
# OpenMMLab shipped prebuilt mmcv CUDA wheels for. Do it in a clone of its own: the
# editable install compiles mmdeform's kernels into the checkout, for one torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMDEFORM_VENV:-$ROOT/.venv}"
CACHE="${MMDEFORM_CACHE:-$HOME/.cache/mmdeform}"
PYTHON="${PYTHON:-python3}"
MMCV_VERSION=2.1.0
TORCH_VERSION="${MMDEFORM_TORCH:-2.14.1}"
case "$TORCH_VERSION" in  # torchvision's release for each torch the README lists
    2.14.1) TORCHVISION_VERSION=0.29.1 ;;
    2.1.2) TORCHVISION_VERSION=0.16.2 ;;
    *) printf '[install] MMDEFORM_TORCH=%s: only 2.14.1 (tested) and 2.1.2 are known\n' \
           "$TORCH_VERSION" >&2; exit 1 ;;
esac
WHEELS="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-cpu"
STAMP="$VENV/.mmdeform-install-stamp"

log() { printf '[install] %s\n' "$*" >&2; }

stamp_value() {
    { cat "$ROOT"/requirements/*.txt "$ROOT/tools/install.sh" "$ROOT/setup.py" \
        "$ROOT"/mmdeform/ops/csrc/*; echo "torch $TORCH_VERSION"; } | sha256sum | cut -d' ' -f1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" && -x "$VENV/bin/python" ]]; then
    log "up to date ($VENV)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
# the requirement files pin torch 2.14.1: another MMDEFORM_TORCH replaces those pins
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
{ cat "$ROOT/requirements/constraints.txt"
  echo "torch==$TORCH_VERSION"; echo "torchvision==$TORCHVISION_VERSION"
  if [[ "$TORCH_VERSION" == 2.1.* ]]; then echo "numpy<2"; fi; } > "$CONSTRAINTS"
PIP_INSTALL=("${PIP[@]}" install -q -c "$CONSTRAINTS")

"${PIP_INSTALL[@]}" --upgrade "pip<26"
"${PIP_INSTALL[@]}" -r "$ROOT/requirements/build.txt"
log "installing torch and the pinned runtime requirements"
# mmdet's wheel depends on mmcv only at import time, so pip does not pull a binary mmcv here.
"${PIP_INSTALL[@]}" torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION
"${PIP_INSTALL[@]}" mmengine==0.10.7

mmcv_ok() {
    "$PY" - <<'EOF' 2>/dev/null
import mmcv
from mmcv.ops import MultiScaleDeformableAttention  # noqa: F401  (needs the compiled ext)
import mmcv._ext  # noqa: F401
assert mmcv.__version__ == '2.1.0'
EOF
}

build_mmcv_wheel() {
    local work="$CACHE/build" sdist
    mkdir -p "$work" "$WHEELS"
    sdist="$(ls "$CACHE"/sdist/mmcv-$MMCV_VERSION.tar.gz 2>/dev/null || true)"
    if [[ -z "$sdist" ]]; then
        log "downloading the mmcv $MMCV_VERSION sdist"
        "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
            -d "$CACHE/sdist" "mmcv==$MMCV_VERSION"
        sdist="$CACHE/sdist/mmcv-$MMCV_VERSION.tar.gz"
    fi
    rm -rf "$work/mmcv-$MMCV_VERSION"
    tar -xzf "$sdist" -C "$work"
    # torch 2.14's headers use C++20 features; the sdist hard-codes C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
    log "building mmcv $MMCV_VERSION with CPU ops (about 8 minutes on 2 cores)"
    # mmcv's setup.py builds CUDA ops whenever torch sees a GPU (or FORCE_CUDA=1), and then
    # needs nvcc, which torch's PyPI wheels do not bring: hide the GPU from the build.
    (
        cd "$work/mmcv-$MMCV_VERSION"
        env MMCV_WITH_OPS=1 FORCE_CUDA=0 FORCE_MLU=0 FORCE_NPU=0 CUDA_VISIBLE_DEVICES= \
            MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            CFLAGS="-O3 -g0 -DNDEBUG -fwrapv" CXXFLAGS="-O3 -g0 -DNDEBUG -fwrapv" \
            "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$CACHE/wheels.tmp" .
    )
    mv "$CACHE"/wheels.tmp/mmcv-$MMCV_VERSION-*.whl "$WHEELS/"
    rm -rf "$CACHE/wheels.tmp" "$work/mmcv-$MMCV_VERSION"
}

if ! mmcv_ok; then
    wheel="$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)"
    if [[ -z "$wheel" ]]; then
        build_mmcv_wheel
        wheel="$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl | head -n1)"
    else
        log "reusing the cached mmcv wheel $wheel"
    fi
    "${PIP_INSTALL[@]}" --force-reinstall --no-deps "$wheel"
    "${PIP_INSTALL[@]}" addict packaging Pillow pyyaml yapf opencv-python
    mmcv_ok || { log "mmcv $MMCV_VERSION with ops does not import from $wheel"; exit 1; }
fi

log "installing mmdet and the remaining requirements"
grep -v '^torch' "$ROOT/requirements/runtime.txt" > "$CONSTRAINTS.runtime"
"${PIP_INSTALL[@]}" -r "$CONSTRAINTS.runtime" -r "$ROOT/requirements/tests.txt"
if [[ "${MMDEFORM_DEPLOY:-1}" != 0 ]]; then
    log "installing the deployment requirements (onnx, onnxruntime, onnxscript)"
    "${PIP_INSTALL[@]}" -r "$ROOT/requirements/deploy.txt"
fi
rm -f "$CONSTRAINTS.runtime"
log "installing mmdeform (editable) and compiling its CPU kernels (about a minute)"
"${PIP_INSTALL[@]}" --no-deps --no-build-isolation -e "$ROOT"
"$PY" - <<'EOF' >&2
import sys
import mmdeform
from mmdeform.ops import CPU_KERNEL_AVAILABLE, NA_KERNEL_AVAILABLE, cpu_kernel_isa
if not CPU_KERNEL_AVAILABLE:
    sys.exit('[install] the CPU kernel of deformable attention (mmdeform/ops/_msda_cpu) does '
             'not load: see the compiler output of pip above')
if not NA_KERNEL_AVAILABLE:
    sys.exit('[install] mmdeform/ops/_msda_cpu has no neighbourhood-attention kernel '
             '(na_qk_forward): a stale build? Remove mmdeform/ops/_msda_cpu*.so and rerun')
print('[install] mmdeform', mmdeform.__version__, 'ready; CPU kernels: deformable attention',
      f'({cpu_kernel_isa()}), neighbourhood attention')
EOF
stamp_value > "$STAMP"
