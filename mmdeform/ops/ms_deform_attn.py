"""Multi-scale deformable attention: four backends behind one function.

``multi_scale_deformable_attn`` computes, for every query ``q`` and head ``m``::

    out[b, q, m*D:(m+1)*D] = sum_{l, k} A[b, q, m, l, k] * bilinear(value_l[b, :, m, :], loc[b, q, m, l, k])

with mmcv's semantics (``F.grid_sample``: bilinear, zero padding, ``align_corners=False``;
a location ``(x, y)`` in ``[0, 1]`` is read at pixel ``(x W_l - 0.5, y H_l - 0.5)``).

Backends (``backend=`` per call, else ``MMDEFORM_MSDA_BACKEND``, else ``'auto'``):

* ``'cpp'``: ``mmdeform.ops._msda_cpu`` (``csrc/``), CPU tensors: threads over queries,
  AVX2 over the channels of a head, a race-free deterministic backward.
* ``'triton'``: ``msda_triton.py``, CUDA tensors, or CPU tensors under Triton's
  interpreter (``TRITON_INTERPRET=1``, how the tests run it). fp16 / bf16 / fp32 computed
  in fp32; the value gradient uses atomics unless ``deterministic``.
* ``'mmcv'``: mmcv's compiled ``MultiScaleDeformableAttnFunction``, CUDA tensors only.
* ``'pytorch'``: mmcv's ``multi_scale_deformable_attn_pytorch`` (``F.grid_sample``), any device.

``'auto'``: on the CPU, ``'cpp'`` (``'pytorch'`` where it was not built, with one warning at
import). On CUDA, ``'triton'`` (triton>=3.0), else ``'mmcv'`` where mmcv was compiled with
CUDA. Nothing has been timed on a GPU yet; mmcv's op goes first only once a GPU measures it
faster (``tools/gpu_check.sh`` times both). With neither, ``'auto'`` on CUDA is an error
(:data:`NO_CUDA_BACKEND`), raised when an ``MSDeformAttn`` is moved to CUDA, before any
forward, rather than a quiet fall back to the ``'pytorch'`` path, which must be named.
"""
import functools
import importlib
import os
import warnings
from importlib import metadata
from typing import Optional

import torch
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)
from packaging.version import Version
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmdeform.utils.amp import fp32_in_autocast
from mmdeform.utils.errors import InputError, ReportedError

try:
    from . import _msda_cpu
except ImportError as err:  # not built: pip install without torch at build time, no compiler
    _msda_cpu = None
    warnings.warn(
        f'mmdeform.ops: the CPU kernel of multi-scale deformable attention is not built ({err}); '
        "deformable attention on the CPU falls back to mmcv's PyTorch path, which is 15-40x "
        'slower. Build it with `pip install --no-build-isolation -e .` (tools/install.sh does).',
        stacklevel=2)

CPU_KERNEL_AVAILABLE = _msda_cpu is not None


def cpu_kernel_isa() -> str:
    """The CPU kernels in use: ``'avx2'`` or ``'default'`` (SSE2); ``'none'`` if not built."""
    return _msda_cpu.isa() if CPU_KERNEL_AVAILABLE else 'none'


def set_cpu_kernel_isa(isa: str) -> None:
    """Choose ``'auto'`` (the default; also ``MMDEFORM_MSDA_ISA``), ``'avx2'`` or ``'default'``."""
    if not CPU_KERNEL_AVAILABLE:
        raise RuntimeError('mmdeform.ops: the CPU kernel is not built')
    _msda_cpu.set_isa(isa)


class _CPUFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
        output = _msda_cpu.forward(value, spatial_shapes, level_start_index,
                                   sampling_locations, attention_weights)
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        grad_value, grad_locations, grad_weights = _msda_cpu.backward(
            grad_output.contiguous(), *ctx.saved_tensors)
        return grad_value, None, None, grad_locations, grad_weights


def _check_shapes(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                  attention_weights: Tensor) -> None:
    if value.dim() != 4:
        raise ValueError(f'multi_scale_deformable_attn: value must be (B, Nv, M, D), '
                         f'got {tuple(value.shape)}')
    b, _, m, _ = value.shape
    if (sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2
            or sampling_locations.shape[0] != b or sampling_locations.shape[2] != m):
        raise ValueError('multi_scale_deformable_attn: sampling_locations must be '
                         f'(B, Nq, M, L, K, 2) with B={b}, M={m} (from value '
                         f'{tuple(value.shape)}), got {tuple(sampling_locations.shape)}')
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError('multi_scale_deformable_attn: attention_weights must be (B, Nq, M, L, K) '
                         f'= {tuple(sampling_locations.shape[:-1])}, got '
                         f'{tuple(attention_weights.shape)}')
    if spatial_shapes.shape != (sampling_locations.shape[3], 2):
        raise ValueError('multi_scale_deformable_attn: spatial_shapes must be (L, 2) with '
                         f'L={sampling_locations.shape[3]}, got {tuple(spatial_shapes.shape)}')


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp64 if any input is fp64 (gradcheck), else fp32: bf16/fp16 are computed in fp32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, 'is_compiling', None)  # torch>=2.3
    return bool(is_compiling and is_compiling())


def exporting() -> bool:
    """Whether ``torch.export`` is tracing: the code then takes the paths that hold for
    every input size (a Python branch on a size would be fixed into the graph)."""
    is_exporting = getattr(torch.compiler, 'is_exporting', None)  # torch>=2.5
    return bool(is_exporting and is_exporting())


BACKENDS = ('auto', 'cpp', 'triton', 'mmcv', 'pytorch')


class BackendNameError(InputError, ValueError):
    """A backend name (argument or ``MMDEFORM_MSDA_BACKEND``) that is not in ``BACKENDS``."""


class BackendUnavailableError(ReportedError, RuntimeError):
    """A backend that cannot run on the tensors' device here; the message says what is missing."""


@functools.lru_cache(None)
def mmcv_cuda_op_available() -> bool:
    """Whether mmcv's extension was compiled with CUDA (only then has its op a CUDA kernel)."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


# the oldest triton our kernels are written for (tested: 3.8, torch 2.14's)
TRITON_MIN = '3.0'


@functools.lru_cache(None)
def _triton_kernels(module: str = 'msda_triton', op: str = 'multi_scale_deformable_attn'):
    """This package's Triton module ``module`` (``msda_triton``, ``na_triton``), imported on
    first use: importing mmdeform never needs triton."""
    try:
        found = metadata.version('triton')
    except metadata.PackageNotFoundError:
        found = None
    if found is not None and Version(found) < Version(TRITON_MIN):
        # torch 2.1's triton 2.1 lacks the language of our kernels (and its interpreter)
        raise BackendUnavailableError(f"{op}: backend 'triton' needs triton>={TRITON_MIN}, "
                                      f'found triton=={found} (torch {torch.__version__})')
    try:
        return importlib.import_module(f'{__package__}.{module}')
    except ImportError as err:
        raise BackendUnavailableError(f"{op}: backend 'triton' needs the triton package "
                                      f'({err})') from err


def _triton_importable(module: str = 'msda_triton') -> bool:
    try:
        _triton_kernels(module)
    except RuntimeError:
        return False
    return True


def check_backend(name: str, source: str = 'backend=') -> str:
    if name not in BACKENDS:
        raise BackendNameError(f'multi_scale_deformable_attn: unknown backend {name!r} (from '
                               f'{source}); valid: {", ".join(BACKENDS)}')
    return name


def requested_backend(backend: Optional[str] = None) -> str:
    """``backend``, else ``MMDEFORM_MSDA_BACKEND``, else ``'auto'``, checked to be a name."""
    if backend:
        return check_backend(backend)
    env = os.environ.get('MMDEFORM_MSDA_BACKEND')
    return check_backend(env, 'MMDEFORM_MSDA_BACKEND') if env else 'auto'


NO_CUDA_BACKEND = ('deformable attention on CUDA needs triton (pip install triton) or mmcv '
                   'compiled with CUDA ops; neither is available (or set '
                   "MMDEFORM_MSDA_BACKEND=pytorch for mmcv's slower grid_sample path)")


def resolve_backend(backend: Optional[str], on_cuda: bool, where: str = 'cpu') -> str:
    """The backend that runs on CPU or CUDA tensors (``where`` names their device in the
    errors), as the module docstring says; :class:`BackendUnavailableError` if it cannot."""
    name = requested_backend(backend)
    if name == 'auto':
        if on_cuda:
            # Triton first; mmcv's compiled op where triton cannot run (e.g. torch 2.1's
            # triton 2.1 with OpenMMLab's prebuilt mmcv), until a GPU measures mmcv faster
            if _triton_importable():
                return 'triton'
            if mmcv_cuda_op_available():
                return 'mmcv'
            raise BackendUnavailableError(NO_CUDA_BACKEND)
        return 'cpp' if CPU_KERNEL_AVAILABLE else 'pytorch'
    error = None
    if name == 'cpp' and (on_cuda or not CPU_KERNEL_AVAILABLE):
        error = (f"backend 'cpp' runs on CPU tensors with mmdeform/ops/_msda_cpu built "
                 f'(tensors on {where}, built: {CPU_KERNEL_AVAILABLE})')
    if name == 'mmcv' and not (on_cuda and mmcv_cuda_op_available()):
        error = (f"backend 'mmcv' needs CUDA tensors and mmcv compiled with CUDA (tensors on "
                 f'{where}, mmcv CUDA: {mmcv_cuda_op_available()})')
    if name == 'triton' and not (_triton_kernels().INTERPRETED or on_cuda):
        error = (f"backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                 f'triton is imported for CPU tensors (tensors on {where})')
    if error:
        raise BackendUnavailableError(f'multi_scale_deformable_attn: {error}')
    return name


def select_backend(value: Tensor, backend: Optional[str] = None) -> str:
    """The backend a call on ``value`` runs: ``backend``, else ``MMDEFORM_MSDA_BACKEND``,
    else ``'auto'`` resolved as the module docstring says."""
    return resolve_backend(backend, value.is_cuda, str(value.device))


def check_cuda_backend(backend: Optional[str] = None) -> str:
    """The backend that would run on CUDA tensors, or the one-line error saying what is
    missing; ``MSDeformAttn`` calls it when it is moved to CUDA, before any forward."""
    return resolve_backend(backend, on_cuda=True, where='cuda')


def _check_levels(spatial_shapes: Tensor, level_start_index: Tensor, num_rows: int) -> None:
    """Every level inside ``value``'s rows (read from CPU tensors only: no device sync;
    not while torch.compile traces, where reading values would break the graph)."""
    if spatial_shapes.is_cuda or level_start_index.is_cuda or _compiling():
        return
    for lvl, ((h, w), start) in enumerate(zip(spatial_shapes.tolist(),
                                              level_start_index.tolist())):
        if h <= 0 or w <= 0 or start < 0 or start + h * w > num_rows:
            raise RuntimeError(f'multi_scale_deformable_attn: level {lvl} (start {start}, '
                               f'{h} x {w}) reaches past the {num_rows} value rows')


@fp32_in_autocast
def multi_scale_deformable_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                                sampling_locations: Tensor, attention_weights: Tensor,
                                im2col_step: int = 64, backend: Optional[str] = None,
                                deterministic: Optional[bool] = None) -> Tensor:
    """Multi-scale deformable attention, autograd-aware, in mmcv's layout.

    Args:
        value: ``(B, Nv, M, D)``, the flattened levels of every head.
        spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``.
        level_start_index: ``(L,)`` int64, the first row of each level in ``Nv``.
        sampling_locations: ``(B, Nq, M, L, K, 2)`` normalised ``(x, y)``.
        attention_weights: ``(B, Nq, M, L, K)``.
        im2col_step: mmcv's CUDA kernel's batch chunk (unused by the others).
        backend: one of ``BACKENDS`` (``None``: ``MMDEFORM_MSDA_BACKEND``, else ``'auto'``).
        deterministic: Triton's backward without atomics (``None``:
            ``MMDEFORM_MSDA_DETERMINISTIC=1`` or ``torch.use_deterministic_algorithms``).
            The ``'cpp'`` backward is always deterministic.

    Returns:
        ``(B, Nq, M * D)`` in ``value``'s dtype; inside autocast, every backend takes
        float32 inputs and returns float32 (:func:`mmdeform.utils.amp.fp32_in_autocast`).
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    name = select_backend(value, backend)
    if value.is_cuda and backend is None and _library.REGISTERED:
        # the operator's CUDA kernel resolves the same MMDEFORM_MSDA_BACKEND / 'auto' choice
        return torch.ops.mmdeform.ms_deform_attn(
            value.contiguous(), spatial_shapes.to(value.device, torch.int64).contiguous(),
            level_start_index.to(value.device, torch.int64).contiguous(),
            sampling_locations.contiguous(), attention_weights.contiguous())
    if name == 'mmcv':
        return MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index,
                                                      sampling_locations, attention_weights,
                                                      im2col_step)
    if name == 'pytorch':
        return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations,
                                                   attention_weights)
    if name == 'triton':
        _check_levels(spatial_shapes, level_start_index, value.shape[1])
        kernels = _triton_kernels()
        if deterministic is None:
            deterministic = kernels.deterministic_default()
        shapes, starts = (t.to(value.device, torch.int64).contiguous()
                          for t in (spatial_shapes, level_start_index))
        return kernels.TritonMSDAFunction.apply(
            value.contiguous(), shapes, starts, sampling_locations.contiguous(),
            attention_weights.contiguous(), bool(deterministic))
    dtype = _compute_dtype(value, sampling_locations, attention_weights)
    value_, locations_, weights_ = (t.to(dtype).contiguous()
                                    for t in (value, sampling_locations, attention_weights))
    cpu = torch.ops.mmdeform.ms_deform_attn if _library.REGISTERED else _CPUFunction.apply
    output = cpu(value_, spatial_shapes.to(torch.int64).contiguous(),
                 level_start_index.to(torch.int64).contiguous(), locations_, weights_)
    return output.to(value.dtype)


from . import library as _library  # noqa: E402 (registers torch.ops.mmdeform.*)
