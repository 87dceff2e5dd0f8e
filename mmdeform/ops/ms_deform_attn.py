"""Multi-scale deformable attention: mmcv's CUDA kernel, our CPU kernel, or mmcv's PyTorch path.

``multi_scale_deformable_attn`` computes, for every query ``q`` and head ``m``::

    out[b, q, m*D:(m+1)*D] = sum_{l, k} A[b, q, m, l, k] * bilinear(value_l[b, :, m, :], loc[b, q, m, l, k])

with mmcv's semantics (``F.grid_sample``: bilinear, zero padding, ``align_corners=False``;
a location ``(x, y)`` in ``[0, 1]`` is read at pixel ``(x W_l - 0.5, y H_l - 0.5)``).

Dispatch: CUDA tensors go to mmcv's compiled ``MultiScaleDeformableAttnFunction``
(unchanged); CPU tensors to ``mmdeform.ops._msda_cpu`` (``csrc/``: threads over
queries, AVX2 over the channels of a head, a race-free deterministic backward); where
that extension was not built, to mmcv's ``multi_scale_deformable_attn_pytorch``,
with one warning at import.
"""
import warnings
import torch
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)
from torch import Tensor
from torch.autograd.function import once_differentiable

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


def multi_scale_deformable_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                                sampling_locations: Tensor, attention_weights: Tensor,
                                im2col_step: int = 64) -> Tensor:
    """Multi-scale deformable attention, autograd-aware, in mmcv's layout.

    Args:
        value: ``(B, Nv, M, D)``, the flattened levels of every head.
        spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``.
        level_start_index: ``(L,)`` int64, the first row of each level in ``Nv``.
        sampling_locations: ``(B, Nq, M, L, K, 2)`` normalised ``(x, y)``.
        attention_weights: ``(B, Nq, M, L, K)``.
        im2col_step: the CUDA kernel's batch chunk (unused on the CPU).

    Returns:
        ``(B, Nq, M * D)`` in ``value``'s dtype.
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    if value.is_cuda:
        return MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index,
                                                      sampling_locations, attention_weights,
                                                      im2col_step)
    if not CPU_KERNEL_AVAILABLE:
        return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations,
                                                   attention_weights)
    dtype = _compute_dtype(value, sampling_locations, attention_weights)
    value_, locations_, weights_ = (t.to(dtype).contiguous()
                                    for t in (value, sampling_locations, attention_weights))
    output = _CPUFunction.apply(value_, spatial_shapes.to(torch.int64).contiguous(),
                                level_start_index.to(torch.int64).contiguous(),
                                locations_, weights_)
    return output.to(value.dtype)

