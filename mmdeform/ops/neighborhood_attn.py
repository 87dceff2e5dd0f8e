"""2-D neighbourhood attention's two products on the CPU (C++, ``csrc/neighborhood_attn.cpp``).

For a query ``(i, j)`` of an ``H x W`` map the window is the ``k x k`` keys starting
at ``(start(i), start(j))``, ``start(i) = clamp(i - k // 2, 0, H - k)`` (NATTEN's rule
at dilation 1: a window never leaves the map). With channel-last ``(N, H, W, C)``
tensors::

    neighborhood_qk(q, k)[n, i, j, a*k + b] = q[n, i, j] . k[n, start(i) + a, start(j) + b]
    neighborhood_av(attn, v)[n, i, j] = sum_{a, b} attn[n, i, j, a*k + b] v[n, start(i) + a, start(j) + b]

Both are autograd-aware. The caller adds the position bias and takes the softmax in
between (:class:`mmdeform.models.backbones.dat_blocks.NeighborhoodAttention`).
Compared with windows built from shifted copies in PyTorch, nothing of size
``k*k x`` the map is materialised, in the forward or for the backward.
"""
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmdeform.utils.amp import fp32_in_autocast
from .ms_deform_attn import _msda_cpu

NA_KERNEL_AVAILABLE = _msda_cpu is not None and hasattr(_msda_cpu, 'na_qk_forward')


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
    if x.dim() != 4 or x.shape[1] < kernel or x.shape[2] < kernel:
        raise ValueError(f'neighbourhood attention: {name} must be (N, H, W, C) with H, W >= '
                         f'kernel {kernel}, got {tuple(x.shape)}')
    if x.is_cuda or not NA_KERNEL_AVAILABLE:
        raise RuntimeError('neighbourhood attention: the CPU kernel takes CPU tensors and must '
                           'be built (pip install --no-build-isolation -e .)')


@fp32_in_autocast
def neighborhood_qk(q: Tensor, k: Tensor, kernel: int) -> Tensor:
    """``(N, H, W, C)`` queries and keys -> ``(N, H, W, kernel**2)`` logits."""
    _check('q', q, kernel)
    if k.shape != q.shape:
        raise ValueError(f'neighbourhood attention: k {tuple(k.shape)} must match q '
                         f'{tuple(q.shape)}')
    dtype = torch.promote_types(q.dtype, k.dtype)
    return _Product.apply('qk', q.to(dtype).contiguous(), k.to(dtype).contiguous(), kernel)


@fp32_in_autocast
def neighborhood_av(attn: Tensor, v: Tensor, kernel: int) -> Tensor:
    """``(N, H, W, kernel**2)`` weights and ``(N, H, W, C)`` values -> ``(N, H, W, C)``."""
    _check('v', v, kernel)
    if attn.shape != (*v.shape[:3], kernel * kernel):
        raise ValueError(f'neighbourhood attention: attn must be {(*v.shape[:3], kernel**2)}, '
                         f'got {tuple(attn.shape)}')
    dtype = torch.promote_types(attn.dtype, v.dtype)
    return _Product.apply('av', attn.to(dtype).contiguous(), v.to(dtype).contiguous(),
                          kernel)
