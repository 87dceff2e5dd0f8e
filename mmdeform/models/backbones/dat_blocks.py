"""The blocks of DAT (CVPR 2022) and DAT++ (arXiv 2309.01430), at any input size.

Every block maps an NCHW map ``(B, C, H, W)`` to one of the same shape.
Parameter names follow the official repository (LeapLabTHU/DAT), so that its
checkpoints load with no renames: ``proj_qkv``/``relative_position_bias_table``
(window attention), ``qkv``/``rpb`` (neighbourhood attention), ``proj_q``,
``conv_offset``, ``rpe_table`` (deformable attention), ``.norm`` inside every
channel LayerNorm.

Normalised coordinates are ``(y, x)`` in [-1, 1] with ``align_corners=True``
semantics: -1 and +1 are the centres of the first and last pixels.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from mmdeform.ops import exporting, neighborhood_av, neighborhood_qk


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (the official ``LayerNormProxy``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------ MLPs
class MLP(nn.Module):
    """DAT's MLP: Linear(C, rC) - GELU - Linear(rC, C) over the channels."""

    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__()
        self.chunk = nn.Sequential()
        self.chunk.add_module('linear1', nn.Linear(dim, dim * ratio))
        self.chunk.add_module('act', nn.GELU())
        self.chunk.add_module('linear2', nn.Linear(dim * ratio, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.chunk(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvMLP(nn.Module):
    """DAT++'s conv-FFN: 1x1 (C -> rC), x + DWConv3x3(x), GELU, 1x1 (rC -> C)."""

    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__()
        hidden = dim * ratio
        self.linear1 = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.dwc = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.linear2 = nn.Sequential(nn.Conv2d(hidden, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear1(x)
        return self.linear2(self.act(x + self.dwc(x)))


# ------------------------------------------------------ window attention
class WindowAttention(nn.Module):
    """DAT's (Swin's) attention within non-overlapping ``window`` x ``window`` windows.

    The map is padded at the bottom and right to a multiple of the window; the
    padded keys are masked, so every pixel attends exactly to the real pixels
    of its window, whatever the input size. With ``shift > 0`` the padded map
    is rolled by ``-shift`` first and pixels attend only within the regions
    that were contiguous before the roll (Swin's shifted windows); the mask is
    built for the actual size on every call.

    The relative position bias ``relative_position_bias_table`` has one row per
    displacement ``(dy, dx)`` in ``[-(w-1), w-1]^2``, row ``(dy + w - 1)(2w - 1) + dx + w - 1``
    with ``d = query - key``.
    """
    MASKED = -100.0  # the official shift-mask value

    def __init__(self, dim: int, num_heads: int, window: int = 7, shift: int = 0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'WindowAttention: dim {dim} is not a multiple of '
                             f'num_heads {num_heads}')
        if not 0 <= shift < window:
            raise ValueError(f'WindowAttention: shift {shift} must be in [0, window={window})')
        self.num_heads, self.window, self.shift = num_heads, window, shift
        self.scale = (dim // num_heads)**-0.5
        self.proj_qkv = nn.Linear(dim, 3 * dim)
        self.proj_out = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1)**2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.01)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing='ij')).flatten(1)  # 2, w*w
        rel = (coords[:, :, None] - coords[:, None, :]) + (window - 1)
        # recomputed here, so not saved: official files carry it, the converter drops it
        self.register_buffer('relative_position_index', rel[0] * (2 * window - 1) + rel[1],
                             persistent=False)

    def _mask(self, H: int, W: int, Hp: int, Wp: int, device) -> Tensor:
        """Additive mask (num_windows, w*w, w*w) for a padded map of Hp x Wp (real H x W)."""
        w, s = self.window, self.shift
        region = torch.zeros(Hp, Wp, device=device)
        if s:
            cnt = 0
            for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                    region[hs, ws] = cnt
                    cnt += 1
        valid = torch.zeros(Hp, Wp, device=device)
        valid[:H, :W] = 1
        if s:
            valid = torch.roll(valid, (-s, -s), (0, 1))
        region = self._partition(region[None, :, :, None])[..., 0]  # nW, w*w
        valid = self._partition(valid[None, :, :, None])[..., 0]
        mask = (region[:, None, :] != region[:, :, None]) | (valid[:, None, :] == 0)
        return mask.float() * self.MASKED

    def _partition(self, x: Tensor) -> Tensor:
        """(B, Hp, Wp, C) -> (B * nW, w*w, C)."""
        B, Hp, Wp, C = x.shape
        w = self.window
        x = x.view(B, Hp // w, w, Wp // w, w, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, w * w, C)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        w, s = self.window, self.shift
        # ceil by integer division of non-negative numbers: math.ceil of a float would fix a
        # symbolic size under torch.export, and the ONNX exporter truncates a negative floordiv
        Hp, Wp = (H + w - 1) // w * w, (W + w - 1) // w * w
        x = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, Wp - W, 0, Hp - H))
        if s:
            x = torch.roll(x, (-s, -s), (1, 2))
        windows = self._partition(x)  # B*nW, w*w, C
        qkv = self.proj_qkv(windows).view(windows.shape[0], w * w, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each B*nW, heads, w*w, hc
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(w * w, w * w, -1).permute(2, 0, 1)
        if s or Hp != H or Wp != W or exporting():  # an export serves padded sizes too
            mask = self._mask(H, W, Hp, Wp, x.device)  # nW, w*w, w*w
            attn = attn.view(B, -1, self.num_heads, w * w, w * w) + mask[None, :, None]
            attn = attn.flatten(0, 1)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, C)
        out = self.proj_out(out)
        out = out.view(B, Hp // w, Wp // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        if s:
            out = torch.roll(out, (s, s), (1, 2))
        return out[:, :H, :W].permute(0, 3, 1, 2)


# ------------------------------------------------ neighbourhood attention
def neighbourhood_starts(length: int, kernel: int, device=None) -> Tensor:
    """First index of each position's neighbourhood: clamp(i - k//2, 0, length - k)."""
    return (torch.arange(length, device=device) - kernel // 2).clamp(0, length - kernel)


class NeighborhoodAttention(nn.Module):
    """DAT++'s neighbourhood attention (NATTEN's ``NeighborhoodAttention2D``, dilation 1).

    Each pixel attends to the ``k`` x ``k`` pixels around it, the window shifted
    inwards at the borders so it always holds ``k*k`` pixels. The bias of key
    ``(ky, kx)`` for query ``(qy, qx)`` is ``rpb[head, k-1 + ky-qy, k-1 + kx-qx]``.
    A map smaller than ``k`` is zero-padded at the bottom/right before the qkv
    projection, as in the official model (the padded pixels are attended to).

    The two products around the softmax are :mod:`mmdeform.ops.neighborhood_attn`'s:
    our C++ kernels on the CPU, Triton on CUDA, else plain PyTorch over the ``k*k``
    window slots (``MMDEFORM_NA_BACKEND`` chooses). ``natten`` 0.14.6 (the official pin)
    does not build against current torch, and natten >= 0.20 has no relative position bias.
    """

    def __init__(self, dim: int, num_heads: int, kernel: int = 7) -> None:
        super().__init__()
        if kernel % 2 == 0 or kernel < 3:
            raise ValueError(f'NeighborhoodAttention: kernel must be odd and >= 3, got {kernel}')
        self.num_heads, self.kernel = num_heads, kernel
        self.scale = (dim // num_heads)**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel - 1, 2 * kernel - 1))
        trunc_normal_(self.rpb, std=0.02, mean=0., a=-2., b=2.)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H0, W0 = x.shape
        k, nh = self.kernel, self.num_heads
        x = x.permute(0, 2, 3, 1)
        x = F.pad(x, (0, 0, 0, max(0, k - W0), 0, max(0, k - H0)))
        H, W = x.shape[1:3]
        qkv = self.qkv(x).view(B, H, W, 3, nh, C // nh).permute(3, 0, 4, 1, 2, 5)
        q, key, v = (t.reshape(B * nh, H, W, C // nh) for t in qkv)  # channel-last maps
        rows = neighbourhood_starts(H, k, x.device)  # (H,) first key row of each query row
        cols = neighbourhood_starts(W, k, x.device)
        # bias of window slot (a, b) for query (i, j): rpb[k-1 + rows[i]+a-i, k-1 + cols[j]+b-j]
        ar = torch.arange(k, device=x.device)
        rel_y = (rows - torch.arange(H, device=x.device) + k - 1)[:, None] + ar  # H, k
        rel_x = (cols - torch.arange(W, device=x.device) + k - 1)[:, None] + ar  # W, k
        bias = self.rpb[:, rel_y[:, None, :, None], rel_x[None, :, None, :]]  # heads, H, W, k, k
        logits = neighborhood_qk(q * self.scale, key, k).view(B, nh, H, W, k * k)
        attn = (logits + bias.flatten(3)).softmax(-1).view(B * nh, H, W, k * k)
        out = neighborhood_av(attn, v, k).view(B, nh, H, W, C // nh)[:, :, :H0, :W0]
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(B, H0, W0, C)).permute(0, 3, 1, 2)


# -------------------------------------------------- deformable attention
def normalised_grid(n: int, start: float, denom: float, device, dtype) -> Tensor:
    """``(i + start) / denom * 2 - 1`` for i < n; a single position is the centre, 0.

    The official DAT++ divides by ``n - 1`` and so gives inf/NaN for n == 1.
    """
    if n == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return (torch.arange(n, device=device, dtype=dtype) + start) / denom * 2 - 1


class DeformableAttention(nn.Module):
    """DAT's deformable multi-head attention (the official ``DAttentionBaseline``).

    Queries are all H x W pixels. Keys and values are ``Hk x Wk`` points per
    offset group, ``grid_sample``d from the block input at reference points plus
    offsets that an offset network predicts from the queries:

    1. ``q = proj_q(x)``; per group (C/g channels) the offset network
       ``conv_offset`` = DWConv k x k, stride s -> LN -> GELU -> 1x1 (-> 2) gives
       offsets ``(B*g, 2, Hk, Wk)`` in (y, x), ``Hk = ceil(H / s)``.
    2. ``pos = ref + offset``: version 1 limits the offset to
       ``range_factor * tanh(o) / (Hk, Wk)``; version 2 (DAT++) uses it as is
       and clamps ``pos`` to [-1, 1].
    3. keys/values: ``proj_k``/``proj_v`` of ``grid_sample(x, pos)``, (B, C, Hk*Wk).
    4. ``softmax(q k^T / sqrt(hc) + bias) v`` -> ``proj_out``; the bias is
       ``rpe_table`` (heads, 2*H0-1, 2*W0-1; H0 x W0 the map at the pretraining
       size) sampled bilinearly at the normalised displacement ``(q - pos) / 2``,
       a continuous function of it, so any input size works.

    Grids (normalised, see :func:`normalised_grid`): version 1 puts reference
    points and query positions at pixel centres ``(i + 0.5) / n``; DAT++ puts
    reference points at ``(i + 0.5) / (Hk - 1)`` (its pretrained weights assume
    this) and queries at ``i / (H - 1)``.

    Args:
        dim: channels C. num_heads: heads (head dim C / heads).
        num_groups: offset groups g (heads and channels split evenly).
        stride: offset network stride s. kernel: its depthwise kernel k.
        table_size: (H0, W0), the query map at the pretraining size.
        version: 1 (CVPR 2022) or 2 (DAT++). range_factor: version 1's limit.
    """

    def __init__(self, dim: int, num_heads: int, num_groups: int, stride: int, kernel: int,
                 table_size: Tuple[int, int], version: int = 2,
                 range_factor: float = 2.0) -> None:
        super().__init__()
        if dim % num_heads or num_heads % num_groups:
            raise ValueError(f'DeformableAttention: dim {dim}, heads {num_heads} and groups '
                             f'{num_groups} must divide each other')
        if version not in (1, 2):
            raise ValueError(f'DeformableAttention: version must be 1 or 2, got {version}')
        self.num_heads, self.num_groups, self.version = num_heads, num_groups, version
        self.range_factor = range_factor
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        cg = dim // num_groups
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, kernel, stride, kernel // 2 if kernel != stride else 0, groups=cg),
            ChannelLayerNorm(cg), nn.GELU(), nn.Conv2d(cg, 2, 1, bias=False))
        self.proj_q = nn.Conv2d(dim, dim, 1)
        self.proj_k = nn.Conv2d(dim, dim, 1)
        self.proj_v = nn.Conv2d(dim, dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.rpe_table = nn.Parameter(
            torch.zeros(num_heads, 2 * table_size[0] - 1, 2 * table_size[1] - 1))
        trunc_normal_(self.rpe_table, std=0.01)

    def reference_points(self, Hk: int, Wk: int, device, dtype) -> Tensor:
        """(Hk, Wk, 2) normalised (y, x) of the key grid before the offsets."""
        if self.version == 1:
            ys = normalised_grid(Hk, 0.5, Hk, device, dtype)
            xs = normalised_grid(Wk, 0.5, Wk, device, dtype)
        else:
            ys = normalised_grid(Hk, 0.5, Hk - 1, device, dtype)
            xs = normalised_grid(Wk, 0.5, Wk - 1, device, dtype)
        return torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1)

    def query_grid(self, H: int, W: int, device, dtype) -> Tensor:
        """(H, W, 2) normalised (y, x) of the queries, for the position bias."""
        if self.version == 1:
            ys = normalised_grid(H, 0.5, H, device, dtype)
            xs = normalised_grid(W, 0.5, W, device, dtype)
        else:
            ys = normalised_grid(H, 0.0, H - 1, device, dtype)
            xs = normalised_grid(W, 0.0, W - 1, device, dtype)
        return torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1)

    def sampling_positions(self, q: Tensor) -> Tuple[Tensor, Tensor]:
        """Key positions ``pos`` and reference points ``ref``, both (B*g, Hk, Wk, 2) (y, x)."""
        B, C, H, W = q.shape
        g = self.num_groups
        offset = self.conv_offset(q.reshape(B * g, C // g, H, W))  # B*g, 2, Hk, Wk
        Hk, Wk = offset.shape[2:]
        ref = self.reference_points(Hk, Wk, q.device, q.dtype)[None].expand(B * g, -1, -1, -1)
        offset = offset.permute(0, 2, 3, 1)
        if self.version == 1:
            # 1 / (Hk, Wk) in float64 as Python divides, then the offsets' dtype; by
            # torch.tensor so that an export keeps the sizes symbolic (new_tensor fixes them)
            sizes = torch.tensor([Hk, Wk], dtype=torch.float64, device=offset.device)
            limit = sizes.reciprocal().to(offset.dtype) * self.range_factor
            return ref + offset.tanh() * limit, ref
        return (ref + offset).clamp(-1., 1.), ref

    def forward(self, x: Tensor, return_positions: bool = False):
        B, C, H, W = x.shape
        g, nh, hc = self.num_groups, self.num_heads, self.head_dim
        q = self.proj_q(x)
        pos, ref = self.sampling_positions(q)
        Hk, Wk = pos.shape[1:3]
        sampled = F.grid_sample(x.reshape(B * g, C // g, H, W), pos.flip(-1), mode='bilinear',
                                align_corners=True).reshape(B, C, 1, Hk * Wk)
        k = self.proj_k(sampled).reshape(B * nh, hc, Hk * Wk)
        v = self.proj_v(sampled).reshape(B * nh, hc, Hk * Wk)
        attn = q.reshape(B * nh, hc, H * W).transpose(1, 2) @ k * self.scale  # B*h, HW, Ns
        attn = attn + self.position_bias(pos, H, W).reshape(B * nh, H * W, Hk * Wk)
        out = (attn.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)
        out = self.proj_out(out)
        if return_positions:
            return out, pos.view(B, g, Hk, Wk, 2), ref.reshape(B, g, Hk, Wk, 2)
        return out

    def position_bias(self, pos: Tensor, H: int, W: int) -> Tensor:
        """(B*g, heads/g, H*W, Ns): the table sampled at (query - key) / 2."""
        Bg, Hk, Wk, _ = pos.shape
        g = self.num_groups
        q_grid = self.query_grid(H, W, pos.device, pos.dtype).reshape(1, H * W, 1, 2)
        displacement = (q_grid - pos.reshape(Bg, 1, Hk * Wk, 2)) * 0.5
        table = self.rpe_table.reshape(1, g, -1, *self.rpe_table.shape[1:])
        table = table.expand(Bg // g, -1, -1, -1, -1).reshape(Bg, -1, *self.rpe_table.shape[1:])
        return F.grid_sample(table, displacement.flip(-1), mode='bilinear', align_corners=True)


def build_attention(kind: str, dim: int, num_heads: int, **kwargs) -> nn.Module:
    """'L' window, 'S' shifted window, 'N' neighbourhood, 'D' deformable attention."""
    if kind == 'L':
        return WindowAttention(dim, num_heads, kwargs['window'])
    if kind == 'S':
        return WindowAttention(dim, num_heads, kwargs['window'], math.ceil(kwargs['window'] / 2))
    if kind == 'N':
        return NeighborhoodAttention(dim, num_heads, kwargs['window'])
    if kind == 'D':
        return DeformableAttention(dim, num_heads, kwargs['groups'], kwargs['stride'],
                                   kwargs['kernel'], kwargs['table_size'], kwargs['version'])
    raise ValueError(f'DAT: unknown block kind {kind!r}; expected one of L, S, N, D')
