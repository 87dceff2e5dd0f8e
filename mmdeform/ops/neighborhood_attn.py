"""2-D neighbourhood attention's two products (DAT++), four backends behind two functions.

For a query ``(i, j)`` of an ``H x W`` map the window is the ``k x k`` keys starting
at ``(start(i), start(j))``, ``start(i) = clamp(i - k // 2, 0, H - k)`` (NATTEN's rule
at dilation 1: a window never leaves the map). With channel-last ``(N, H, W, C)``
tensors::

    neighborhood_qk(q, k)[n, i, j, a*k + b] = q[n, i, j] . k[n, start(i) + a, start(j) + b]
    neighborhood_av(attn, v)[n, i, j] = sum_{a, b} attn[n, i, j, a*k + b] v[n, start(i) + a, start(j) + b]

Both are autograd-aware. The caller adds the position bias and takes the softmax in
between (:class:`mmdeform.models.backbones.dat_blocks.NeighborhoodAttention`).

Backends (``backend=`` per call, else ``MMDEFORM_NA_BACKEND``, else ``'auto'``):

* ``'cpp'``: ``csrc/neighborhood_attn.cpp``, CPU tensors, fp32 / fp64; backward per map.
* ``'triton'``: ``na_triton.py``, CUDA tensors, or CPU tensors under Triton's interpreter
  (``TRITON_INTERPRET=1``); fp16 / bf16 / fp32 computed in fp32; key and value gradients
  gathered over the inverse neighbourhood, deterministic without atomics.
* ``'pytorch'``: :func:`neighborhood_qk_pytorch` / :func:`neighborhood_av_pytorch`, any
  device: one window slot at a time, keeping ``k*k`` shifted copies for the backward.

``'auto'``: ``'cpp'`` on the CPU, ``'triton'`` on CUDA, ``'pytorch'`` elsewhere or where
the chosen one is missing (the extension not built, triton not installed). Unlike the
PyTorch path, the kernels keep nothing of size ``k*k x`` the map beyond the logits and
the attention themselves.
"""
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmdeform.utils.amp import fp32_in_autocast

from . import library as _library
from .ms_deform_attn import _msda_cpu, _triton_importable, _triton_kernels, exporting

NA_KERNEL_AVAILABLE = _msda_cpu is not None and hasattr(_msda_cpu, 'na_qk_forward')
NA_BACKENDS = ('auto', 'cpp', 'triton', 'pytorch')
_OP = 'neighbourhood attention'


class _Product(torch.autograd.Function):
    """One of the two products, ``'qk'`` or ``'av'``: ``na_{name}_forward(a, b, kernel)``,
    and ``na_{name}_backward(grad, a, b, kernel) -> (grad_a, grad_b)``."""

    @staticmethod
    def forward(ctx, name: str, a: Tensor, b: Tensor, kernel: int) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.name, ctx.kernel = name, kernel
        return getattr(_msda_cpu, f'na_{name}_forward')(a, b, kernel)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        grad_a, grad_b = getattr(_msda_cpu, f'na_{ctx.name}_backward')(
            grad.contiguous(), *ctx.saved_tensors, ctx.kernel)
        return None, grad_a, grad_b, None


def _check(name: str, x: Tensor, kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f'neighbourhood attention: kernel must be odd and positive, got {kernel}')
    if x.dim() != 4 or x.shape[1] < kernel or x.shape[2] < kernel:
        raise ValueError(f'neighbourhood attention: {name} must be (N, H, W, C) with H, W >= '
                         f'kernel {kernel}, got {tuple(x.shape)}')


def _check_pair(name: str, x: Tensor, other: str, y: Tensor) -> None:
    if x.device != y.device:
        raise ValueError(f'neighbourhood attention: {name} is on {x.device}, {other} on '
                         f'{y.device}; they must share a device')


def select_na_backend(x: Tensor, backend: Optional[str] = None) -> str:
    """The backend a call on ``x`` runs: ``backend``, else ``MMDEFORM_NA_BACKEND``, else
    ``'auto'`` resolved as the module docstring says."""
    name = backend or os.environ.get('MMDEFORM_NA_BACKEND') or 'auto'
    if name not in NA_BACKENDS:
        raise ValueError(f'neighbourhood attention: unknown backend {name!r} (argument or '
                         f'MMDEFORM_NA_BACKEND); valid: {", ".join(NA_BACKENDS)}')
    on_cpu = x.device.type == 'cpu'
    if name == 'auto':
        if x.is_cuda:
            return 'triton' if _triton_importable('na_triton') else 'pytorch'
        return 'cpp' if on_cpu and NA_KERNEL_AVAILABLE else 'pytorch'
    if name == 'cpp' and not (on_cpu and NA_KERNEL_AVAILABLE):
        raise RuntimeError(f"neighbourhood attention: backend 'cpp' runs on CPU tensors with "
                           f'mmdeform/ops/_msda_cpu built (tensors on {x.device}, built: '
                           f'{NA_KERNEL_AVAILABLE})')
    if name == 'triton' and not (x.is_cuda or (on_cpu and _triton_kernels(
            'na_triton', _OP).INTERPRETED)):
        raise RuntimeError(f"neighbourhood attention: backend 'triton' needs CUDA tensors, or "
                           f'TRITON_INTERPRET=1 set before triton is imported for CPU tensors '
                           f'(tensors on {x.device})')
    return name


def _product(name: str, a: Tensor, b: Tensor, kernel: int, backend: Optional[str]) -> Tensor:
    """``name`` ('qk' or 'av') of ``a`` and ``b`` on the chosen backend."""
    chosen = select_na_backend(b, backend)
    # an export takes the PyTorch path: slices, a pad, products and sums, which ONNX has
    if chosen == 'pytorch' or exporting():
        return (neighborhood_qk_pytorch if name == 'qk' else neighborhood_av_pytorch)(a, b, kernel)
    if chosen == 'triton' and b.is_cuda and backend is None and _library.REGISTERED:
        return getattr(torch.ops.mmdeform, f'na_{name}')(a.contiguous(), b.contiguous(), kernel)
    if chosen == 'triton':
        return _triton_kernels('na_triton', _OP).TritonNAFunction.apply(
            name, a.contiguous(), b.contiguous(), kernel)
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype).contiguous(), b.to(dtype).contiguous()
    if _library.REGISTERED:
        return getattr(torch.ops.mmdeform, f'na_{name}')(a, b, kernel)
    return _Product.apply(name, a, b, kernel)


@fp32_in_autocast
def neighborhood_qk(q: Tensor, k: Tensor, kernel: int, backend: Optional[str] = None) -> Tensor:
    """``(N, H, W, C)`` queries and keys -> ``(N, H, W, kernel**2)`` logits, on ``backend``
    (``None``: ``MMDEFORM_NA_BACKEND``, else ``'auto'``)."""
    _check('q', q, kernel)
    if k.shape != q.shape:
        raise ValueError(f'neighbourhood attention: k {tuple(k.shape)} must match q '
                         f'{tuple(q.shape)}')
    _check_pair('k', k, 'q', q)
    return _product('qk', q, k, kernel, backend)


@fp32_in_autocast
def neighborhood_av(attn: Tensor, v: Tensor, kernel: int,
                    backend: Optional[str] = None) -> Tensor:
    """``(N, H, W, kernel**2)`` weights and ``(N, H, W, C)`` values -> ``(N, H, W, C)``,
    on ``backend`` as :func:`neighborhood_qk`."""
    _check('v', v, kernel)
    if attn.shape != (*v.shape[:3], kernel * kernel):
        raise ValueError(f'neighbourhood attention: attn must be {(*v.shape[:3], kernel**2)}, '
                         f'got {tuple(attn.shape)}')
    _check_pair('attn', attn, 'v', v)
    return _product('av', attn, v, kernel, backend)


def _shifted(t: Tensor, a: int, b: int, k: int) -> Tensor:
    """(N, H, W, c): every query's key at window slot (a, b). The window of row i starts
    at ``clamp(i - k//2, 0, H - k)``, so slot a of rows k//2 .. H-1-k//2 is the slice
    ``a .. a + H - k`` and the rows nearer a border repeat its first or last row: a
    replicate pad by k//2."""
    H, W = t.shape[1:3]
    t = t[:, a:a + H - k + 1, b:b + W - k + 1].permute(0, 3, 1, 2)
    return F.pad(t, (k // 2, ) * 4, mode='replicate').permute(0, 2, 3, 1)


def neighborhood_qk_pytorch(q: Tensor, key: Tensor, k: int) -> Tensor:
    """:func:`neighborhood_qk` in PyTorch, one window slot at a time."""
    return torch.stack([(q * _shifted(key, a, b, k)).sum(-1) for a in range(k)
                        for b in range(k)], -1)


def neighborhood_av_pytorch(attn: Tensor, v: Tensor, k: int) -> Tensor:
    """:func:`neighborhood_av` in PyTorch, one window slot at a time."""
    return sum(attn[..., a * k + b, None] * _shifted(v, a, b, k) for a in range(k)
               for b in range(k))
