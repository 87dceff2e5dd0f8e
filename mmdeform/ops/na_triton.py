"""DAT++'s two neighbourhood-attention products in Triton, forward and backward.

The semantics are :mod:`mmdeform.ops.neighborhood_attn`'s: channel-last ``(N, H, W, C)``
maps, the window of query ``(i, j)`` is the ``K x K`` keys from ``(start(i), start(j))``,
``start(i) = clamp(i - K // 2, 0, H - K)``, window slot ``s = a * K + b``. Three kernels,
each a program per (block of pixels, map), cover the two products and their gradients:

* ``_window_dot``: ``out[p, s] = x[p] . y[window slot s of p]``, qk's forward (x = q,
  y = k) and av's attention gradient (x = grad_out, y = v);
* ``_window_sum``: ``out[p] = sum_s w[p, s] y[window slot s of p]``, av's forward
  (w = attn, y = v) and qk's query gradient (w = grad_logits, y = k);
* ``_inverse_sum``: ``out[p] = sum over the queries q whose window holds p of
  w[q, slot of p in q's window] x[q]``, the key gradient (w = grad_logits, x = q) and the
  value gradient (w = attn, x = grad_out).

The key and value gradients, scatters in the C++ kernel, are gathers here over the
inverse neighbourhood: along an axis of length ``L``, the queries whose window holds
``p`` are the contiguous run ``first(p) .. last(p)``, ``first(p) = 0`` if ``p < K``
else ``p - K // 2``, ``last(p) = L - 1`` if ``p >= L - K`` else ``p + K // 2`` (``K``
queries inside, up to ``2K - 1`` near the borders, where windows stop moving). Every
output element is summed by one program in a fixed order: no atomics, the same bits on
every run. Inputs may be fp16, bf16, fp32 or fp64; the arithmetic is fp32 (fp64 for fp64
inputs), results are written in it and rounded by torch to the output dtype.

As in ``msda_triton.py``, ``TRITON_INTERPRET=1`` set before triton is imported runs
the kernels on CPU tensors in Triton's interpreter (how the tests run them).
"""
import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .msda_triton import INTERPRETED, _acc_dtype, _blocks  # noqa: F401 (INTERPRETED re-exported)


@triton.jit
def _tile(H, W, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's pixels of map ``n``: flat index, row, column, mask; the channels,
    the ``(BLOCK_P, BLOCK_C)`` mask, and map ``n``'s first row."""
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < H * W
    cols = tl.arange(0, BLOCK_C)
    mask = pmask[:, None] & (cols < C)[None, :]
    return p, p // W, p % W, pmask, cols, mask, n * H * W


@triton.jit
def _start(i, L, K: tl.constexpr):
    return tl.minimum(tl.maximum(i - K // 2, 0), L - K)


@triton.jit
def _window_dot(x, y, out, H, W, C, K: tl.constexpr, ACC: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p, i, j, pmask, cols, mask, base = _tile(H, W, C, BLOCK_P, BLOCK_C)
    xs = tl.load(x + (base + p)[:, None] * C + cols[None, :], mask=mask, other=0.0).to(ACC)
    first = base + _start(i, H, K) * W + _start(j, W, K)  # window slot 0's row
    for s in range(K * K):
        row = first + (s // K) * W + s % K
        ys = tl.load(y + row[:, None] * C + cols[None, :], mask=mask, other=0.0).to(ACC)
        tl.store(out + (base + p) * (K * K) + s, tl.sum(xs * ys, axis=1), mask=pmask)


@triton.jit
def _window_sum(w, y, out, H, W, C, K: tl.constexpr, ACC: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p, i, j, pmask, cols, mask, base = _tile(H, W, C, BLOCK_P, BLOCK_C)
    first = base + _start(i, H, K) * W + _start(j, W, K)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for s in range(K * K):
        row = first + (s // K) * W + s % K
        ws = tl.load(w + (base + p) * (K * K) + s, mask=pmask, other=0.0).to(ACC)
        acc += ws[:, None] * tl.load(y + row[:, None] * C + cols[None, :], mask=mask,
                                     other=0.0).to(ACC)
    tl.store(out + (base + p)[:, None] * C + cols[None, :], acc, mask=mask)


@triton.jit
def _queries_of(p, L, pmask, K: tl.constexpr):
    """The first query whose window holds key ``p`` along an axis, and how many do."""
    first = tl.where(p < K, 0, p - K // 2)
    last = tl.where(p >= L - K, L - 1, p + K // 2)
    return first, tl.where(pmask, last - first + 1, 0)


@triton.jit
def _inverse_sum(w, x, out, H, W, C, K: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p, i, j, pmask, cols, mask, base = _tile(H, W, C, BLOCK_P, BLOCK_C)
    qi0, ni = _queries_of(i, H, pmask, K)
    qj0, nj = _queries_of(j, W, pmask, K)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    # the block's longest runs: K inside the map, up to 2K - 1 near a border
    for t in range(tl.max(ni, axis=0)):
        qi = qi0 + t
        row = base + qi * W  # the query row's first pixel
        slot_row = (i - _start(qi, H, K)) * K
        for u in range(tl.max(nj, axis=0)):
            qj = qj0 + u
            valid = (t < ni) & (u < nj)
            ws = tl.load(w + (row + qj) * (K * K) + slot_row + j - _start(qj, W, K), mask=valid,
                         other=0.0).to(ACC)
            xs = tl.load(x + (row + qj)[:, None] * C + cols[None, :], mask=mask & valid[:, None],
                         other=0.0).to(ACC)
            acc += ws[:, None] * xs
    tl.store(out + (base + p)[:, None] * C + cols[None, :], acc, mask=mask)


def _launch(kernel, first: Tensor, second: Tensor, maps: Tensor, K: int,
            columns: int) -> Tensor:
    """``kernel`` over ``maps``' (N, H, W, C) pixels: an (N, H, W, columns) result in the
    arithmetic's dtype (fp32, or fp64 for fp64 inputs)."""
    N, H, W, C = maps.shape
    acc, tl_acc = _acc_dtype(first, second)
    out = torch.empty(N, H, W, columns, dtype=acc, device=maps.device)
    block_c, block_p = _blocks(C)
    with torch.cuda.device(maps.device) if maps.is_cuda else contextlib.nullcontext():
        kernel[(triton.cdiv(H * W, block_p), N)](first, second, out, H, W, C, K=K, ACC=tl_acc,
                                                 BLOCK_P=block_p, BLOCK_C=block_c)
    return out


def window_dot(x: Tensor, y: Tensor, K: int) -> Tensor:
    return _launch(_window_dot, x, y, x, K, K * K)


def window_sum(w: Tensor, y: Tensor, K: int) -> Tensor:
    return _launch(_window_sum, w, y, y, K, y.shape[-1])


def inverse_sum(w: Tensor, x: Tensor, K: int) -> Tensor:
    return _launch(_inverse_sum, w, x, x, K, x.shape[-1])


class TritonNAFunction(torch.autograd.Function):
    """``apply(name, a, b, kernel)`` on contiguous tensors of one device: ``'qk'`` with
    ``a = q``, ``b = k``, or ``'av'`` with ``a = attn``, ``b = v``. The output has the
    promoted dtype of ``a`` and ``b``; each gradient its input's dtype."""

    @staticmethod
    def forward(ctx, name: str, a: Tensor, b: Tensor, kernel: int) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.name, ctx.kernel = name, kernel
        out = window_dot(a, b, kernel) if name == 'qk' else window_sum(a, b, kernel)
        return out.to(torch.promote_types(a.dtype, b.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        grad, k = grad.contiguous(), ctx.kernel
        if ctx.name == 'qk':  # grad: (N, H, W, K*K) of the logits
            grad_a, grad_b = window_sum(grad, b, k), inverse_sum(grad, a, k)
        else:  # grad: (N, H, W, C) of the output
            grad_a, grad_b = window_dot(grad, b, k), inverse_sum(a, grad, k)
        return None, grad_a.to(a.dtype), grad_b.to(b.dtype), None
