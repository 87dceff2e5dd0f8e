"""Multi-scale deformable attention in Triton: forward and backward, mmcv's layout.

One program per (block of queries, head, image) holds a ``(BLOCK_Q, D)`` tile and walks
the levels and points; each sample reads the four bilinear corners as ``D``-wide rows of
``value`` (zero outside the map: ``F.grid_sample``'s zero padding, ``align_corners=False``,
so a location ``x`` is read at pixel ``x W - 0.5``). Inputs may be fp16, bf16, fp32 or
fp64; the arithmetic is fp32 (fp64 for fp64 inputs) and the output has ``value``'s dtype.

Backward: the gradients of locations and weights belong to one program each and are
stored directly. The gradient of ``value`` is a scatter. By default it is
``tl.atomic_add`` into an fp32 buffer, whose summation order on a GPU varies from run to
run. With ``deterministic=True`` (or ``MMDEFORM_MSDA_DETERMINISTIC=1``, or
``torch.use_deterministic_algorithms(True)``) the kernel instead writes each corner's target
row and coefficient, the corners are sorted by row (a stable sort), and a second kernel sums
every row's contributions in that fixed order: the same bits on every run, for extra memory
(about 30 bytes per sampled corner: rows, coefficients and the sort's output) and time.

Triton reads ``TRITON_INTERPRET`` when it is imported (``triton.jit`` decorates its own
``tl.zeros`` etc. then): with ``TRITON_INTERPRET=1`` from the start, the kernels run on CPU
tensors through Triton's interpreter (how the tests run them); otherwise on CUDA tensors.
"""
import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable


@triton.jit
def _corner(vbase, h, w, H, W, start, M, D, cols, mask, ACC: tl.constexpr):
    """Rows ``(h, w)`` of one level for a block of queries; zeros where off the map."""
    inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
    row = start + h * W + w
    ptr = vbase + (row * M * D)[:, None] + cols[None, :]
    return tl.load(ptr, mask=mask & inside[:, None], other=0.0).to(ACC), inside, row


@triton.jit
def _bilinear(loc, s_idx, qmask, H, W, ACC: tl.constexpr):
    """Pixel coordinates of one sample per query: floor cell and fractional parts."""
    x = tl.load(loc + 2 * s_idx, mask=qmask, other=0.0).to(ACC)
    y = tl.load(loc + 2 * s_idx + 1, mask=qmask, other=0.0).to(ACC)
    w_im = x * W.to(ACC) - 0.5
    h_im = y * H.to(ACC) - 0.5
    h0f = tl.floor(h_im)
    w0f = tl.floor(w_im)
    return h0f.to(tl.int64), w0f.to(tl.int64), h_im - h0f, w_im - w0f


@triton.jit
def _sample(vbase, loc, attn, s_idx, qmask, H, W, start, M, D, cols, mask, ACC: tl.constexpr):
    """One sampling point for a block of queries: its attention weight, its fractional
    position ``(lh, lw)`` in the cell, and the four corners' values, whether each is on the
    map, and their rows, ordered (h0, w0), (h0, w0 + 1), (h0 + 1, w0), (h0 + 1, w0 + 1)."""
    a = tl.load(attn + s_idx, mask=qmask, other=0.0).to(ACC)
    h0, w0, lh, lw = _bilinear(loc, s_idx, qmask, H, W, ACC)
    v00, in00, r00 = _corner(vbase, h0, w0, H, W, start, M, D, cols, mask, ACC)
    v01, in01, r01 = _corner(vbase, h0, w0 + 1, H, W, start, M, D, cols, mask, ACC)
    v10, in10, r10 = _corner(vbase, h0 + 1, w0, H, W, start, M, D, cols, mask, ACC)
    v11, in11, r11 = _corner(vbase, h0 + 1, w0 + 1, H, W, start, M, D, cols, mask, ACC)
    return a, lh, lw, v00, v01, v10, v11, in00, in01, in10, in11, r00, r01, r10, r11


@triton.jit
def _msda_forward(value, shapes, starts, loc, attn, out, S, Q, M, D, L, P,
                  ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_q = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = tl.arange(0, BLOCK_D)
    qmask = qs < Q
    mask = qmask[:, None] & (cols < D)[None, :]
    head = (b * Q + qs) * M + m  # (b, q, m) rows of loc / attn / out
    vbase = value + b * S * M * D + m * D
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=ACC)
    for lvl in range(L):
        H = tl.load(shapes + 2 * lvl)
        W = tl.load(shapes + 2 * lvl + 1)
        start = tl.load(starts + lvl)
        for p in range(P):
            s_idx = (head * L + lvl) * P + p
            a, lh, lw, v00, v01, v10, v11, _, _, _, _, _, _, _, _ = _sample(
                vbase, loc, attn, s_idx, qmask, H, W, start, M, D, cols, mask, ACC)
            hh = 1.0 - lh
            hw = 1.0 - lw
            sampled = ((hh * hw)[:, None] * v00 + (hh * lw)[:, None] * v01
                       + (lh * hw)[:, None] * v10 + (lh * lw)[:, None] * v11)
            acc += a[:, None] * sampled
    ptr = out + head[:, None] * D + cols[None, :]
    tl.store(ptr, acc, mask=mask)


@triton.jit
def _scatter_corner(grad_value, targets, coefs, t_idx, vbase_grad, row, inside, coef, g, b, S,
                    M, D, m, mask, qmask, cols, DETERMINISTIC: tl.constexpr):
    """Atomically add ``coef * g`` to a corner's row, or record (row, coef) for the sort."""
    if DETERMINISTIC:
        # the flat (b, s, m) row of value; -1 where the corner is off the map
        target = tl.where(inside, (b * S + row) * M + m, -1)
        tl.store(targets + t_idx, target, mask=qmask)
        tl.store(coefs + t_idx, coef, mask=qmask)
    else:
        ptr = vbase_grad + (row * M * D)[:, None] + cols[None, :]
        tl.atomic_add(ptr, coef[:, None] * g, mask=mask & inside[:, None])


@triton.jit
def _msda_backward(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc, grad_attn,
                   targets, coefs, S, Q, M, D, L, P, ACC: tl.constexpr,
                   DETERMINISTIC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_q = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = tl.arange(0, BLOCK_D)
    qmask = qs < Q
    mask = qmask[:, None] & (cols < D)[None, :]
    head = (b * Q + qs) * M + m
    vbase = value + b * S * M * D + m * D
    gbase = grad_value + b * S * M * D + m * D
    g = tl.load(grad_out + head[:, None] * D + cols[None, :], mask=mask, other=0.0).to(ACC)
    for lvl in range(L):
        H = tl.load(shapes + 2 * lvl)
        W = tl.load(shapes + 2 * lvl + 1)
        start = tl.load(starts + lvl)
        for p in range(P):
            s_idx = (head * L + lvl) * P + p
            a, lh, lw, v00, v01, v10, v11, in00, in01, in10, in11, r00, r01, r10, r11 = _sample(
                vbase, loc, attn, s_idx, qmask, H, W, start, M, D, cols, mask, ACC)
            hh = 1.0 - lh
            hw = 1.0 - lw
            sampled = ((hh * hw)[:, None] * v00 + (hh * lw)[:, None] * v01
                       + (lh * hw)[:, None] * v10 + (lh * lw)[:, None] * v11)
            tl.store(grad_attn + s_idx, tl.sum(g * sampled, axis=1), mask=qmask)
            ga = g * a[:, None]
            d_w = tl.sum(ga * (hh[:, None] * (v01 - v00) + lh[:, None] * (v11 - v10)), axis=1)
            d_h = tl.sum(ga * (hw[:, None] * (v10 - v00) + lw[:, None] * (v11 - v01)), axis=1)
            tl.store(grad_loc + 2 * s_idx, d_w * W.to(ACC), mask=qmask)
            tl.store(grad_loc + 2 * s_idx + 1, d_h * H.to(ACC), mask=qmask)
            t_idx = s_idx * 4
            _scatter_corner(grad_value, targets, coefs, t_idx, gbase, r00, in00, a * hh * hw, g,
                            b, S, M, D, m, mask, qmask, cols, DETERMINISTIC)
            _scatter_corner(grad_value, targets, coefs, t_idx + 1, gbase, r01, in01, a * hh * lw,
                            g, b, S, M, D, m, mask, qmask, cols, DETERMINISTIC)
            _scatter_corner(grad_value, targets, coefs, t_idx + 2, gbase, r10, in10, a * lh * hw,
                            g, b, S, M, D, m, mask, qmask, cols, DETERMINISTIC)
            _scatter_corner(grad_value, targets, coefs, t_idx + 3, gbase, r11, in11, a * lh * lw,
                            g, b, S, M, D, m, mask, qmask, cols, DETERMINISTIC)


@triton.jit
def _gather_value_grad(order, segments, coefs, grad_out, grad_value, L, P, D,
                       ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (b, s, m) row of ``value``: the sum of its corners' contributions in
    sorted (deterministic) order."""
    r = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    dmask = cols < D
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(tl.load(segments + r), tl.load(segments + r + 1)):
        corner = tl.load(order + i)
        head = corner // (4 * L * P)  # the (b, q, m) row of grad_out
        g = tl.load(grad_out + head * D + cols, mask=dmask, other=0.0).to(ACC)
        acc += tl.load(coefs + corner) * g
    tl.store(grad_value + r * D + cols, acc, mask=dmask)


INTERPRETED = not isinstance(_msda_forward, triton.runtime.JITFunction)


def _blocks(dims: int):
    """A power-of-two tile over the channels, and as many queries as keep it ~1k elements."""
    block_d = triton.next_power_of_2(dims)
    return block_d, max(1, min(32, 1024 // block_d))


def _acc_dtype(*tensors: Tensor):
    return (torch.float64, tl.float64) if any(t.dtype == torch.float64 for t in tensors) \
        else (torch.float32, tl.float32)


def deterministic_default() -> bool:
    """``MMDEFORM_MSDA_DETERMINISTIC=1`` or ``torch.use_deterministic_algorithms(True)``."""
    return (os.environ.get('MMDEFORM_MSDA_DETERMINISTIC', '0') == '1'
            or torch.are_deterministic_algorithms_enabled())


def _forward(value, shapes, starts, loc, attn):
    batch, rows, heads, dims = value.shape
    queries, levels, points = loc.shape[1], loc.shape[3], loc.shape[4]
    acc, tl_acc = _acc_dtype(value, loc, attn)
    # written in fp32 and rounded by torch: Triton's interpreter truncates fp32 -> bf16 where
    # a GPU rounds to nearest, and torch rounds the same way on every device
    out = torch.empty(batch, queries, heads * dims, dtype=acc, device=value.device)
    block_d, block_q = _blocks(dims)
    grid = (triton.cdiv(queries, block_q), heads, batch)
    _msda_forward[grid](value, shapes, starts, loc, attn, out, rows, queries, heads, dims, levels,
                        points, ACC=tl_acc, BLOCK_Q=block_q, BLOCK_D=block_d)
    return out.to(value.dtype)


def _backward(grad_out, value, shapes, starts, loc, attn, deterministic):
    batch, rows, heads, dims = value.shape
    queries, levels, points = loc.shape[1], loc.shape[3], loc.shape[4]
    acc, tl_acc = _acc_dtype(value, loc, attn)
    grad_value = torch.zeros(value.shape, dtype=acc, device=value.device)
    grad_loc = torch.empty(loc.shape, dtype=acc, device=value.device)
    grad_attn = torch.empty(attn.shape, dtype=acc, device=value.device)
    if deterministic:  # (row of value, coefficient) of each of the 4 corners of each sample
        targets = torch.empty(attn.shape + (4,), dtype=torch.int64, device=value.device)
        coefs = torch.empty(attn.shape + (4,), dtype=acc, device=value.device)
    else:
        targets = coefs = grad_value  # unused
    block_d, block_q = _blocks(dims)
    grid = (triton.cdiv(queries, block_q), heads, batch)
    _msda_backward[grid](value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc,
                         grad_attn, targets, coefs, rows, queries, heads, dims, levels, points,
                         ACC=tl_acc, DETERMINISTIC=deterministic, BLOCK_Q=block_q,
                         BLOCK_D=block_d)
    if deterministic:
        sorted_targets, order = torch.sort(targets.flatten(), stable=True)
        segments = torch.searchsorted(sorted_targets, torch.arange(
            batch * rows * heads + 1, device=value.device))
        _gather_value_grad[(batch * rows * heads,)](order, segments, coefs.flatten(), grad_out,
                                                    grad_value, levels, points, dims, ACC=tl_acc,
                                                    BLOCK_D=block_d)
    return grad_value.to(value.dtype), grad_loc.to(loc.dtype), grad_attn.to(attn.dtype)


class TritonMSDAFunction(torch.autograd.Function):
    """``apply(value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights, deterministic)`` on contiguous tensors of one device (int64 shapes)."""

    @staticmethod
    def forward(ctx, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor,
                deterministic: bool) -> Tensor:
        ctx.deterministic = deterministic
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        with torch.cuda.device(value.device) if value.is_cuda else contextlib.nullcontext():
            return _forward(value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        value = ctx.saved_tensors[0]
        with torch.cuda.device(value.device) if value.is_cuda else contextlib.nullcontext():
            grads = _backward(grad_output.contiguous(), *ctx.saved_tensors, ctx.deterministic)
        return grads[0], None, None, grads[1], grads[2], None

