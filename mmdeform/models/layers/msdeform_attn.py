"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 3) on mmcv's op."""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from mmdeform.ops import multi_scale_deformable_attn
from mmdeform.ops.ms_deform_attn import check_cuda_backend, requested_backend
from mmdeform.ops.msda_discrete import discrete_deformable_attn


class MSDeformAttn(nn.Module):
    """Each query attends to ``num_points`` sampled locations per head and level.

    ``out = W_o sum_m sum_l sum_k A_mlqk * W_v x_l(phi_l(p_q) + dp_mlqk)``: the
    offsets ``dp`` and weights ``A`` (softmax over levels x points) are linear
    functions of the query; the sampling is bilinear, done by
    :func:`mmdeform.ops.multi_scale_deformable_attn` (by default mmcv's compiled kernel or
    our Triton one on CUDA, our C++ kernel on the CPU; see ``backend``).

    Parameter names (``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj``) are the official code's, mmcv's and mmdet's.

    Args:
        embed_dims: channels ``C``.
        num_heads: ``M`` (8).
        num_levels: ``L`` feature levels.
        num_points: ``K`` sampling points per head and level (4), or one count per
            level (RT-DETRv2); uneven counts run as ``max(K_l)`` points with zero
            weight on the missing ones.
        offset_scale: box references move each point by ``offset * offset_scale / K_l``
            times the box size (0.5 in every official model).
        sampling: ``'bilinear'``, or ``'discrete'`` (RT-DETRv2: each point reads its
            nearest cell, :func:`~mmdeform.ops.msda_discrete.discrete_deformable_attn`;
            ``sampling_offsets`` then get no gradient and are frozen, as official).
        im2col_step: mmcv's CUDA kernel's batch chunk.
        backend: this layer's MSDA backend (``mmdeform.ops.BACKENDS``); ``None`` follows
            ``MMDEFORM_MSDA_BACKEND``, else ``'auto'``. A wrong name is an error here, and
            moving the layer to CUDA where no backend can run there is one too.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: Union[int, Sequence[int]] = 4, offset_scale: float = 0.5,
                 sampling: str = 'bilinear', im2col_step: int = 64,
                 backend: Optional[str] = None) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f'MSDeformAttn: embed_dims ({embed_dims}) must be divisible by '
                             f'num_heads ({num_heads})')
        points = [num_points] * num_levels if isinstance(num_points, int) else list(num_points)
        if len(points) != num_levels or min(points) < 1:
            raise ValueError(f'MSDeformAttn: num_points must be a positive int or one per '
                             f'level ({num_levels}), got {num_points}')
        if sampling not in ('bilinear', 'discrete'):
            raise ValueError(f"MSDeformAttn: sampling must be 'bilinear' or 'discrete', "
                             f'got {sampling!r}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points_list = points
        self.num_points = max(points)
        self.offset_scale = offset_scale
        self.sampling_method = sampling
        self.im2col_step = im2col_step
        requested_backend(backend)  # a wrong name stops the build
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * sum(points) * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * sum(points))
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        if len(set(points)) > 1:  # slot l * K + k of the padded layout -> its point, or sum(points)
            slots = [sum(points[:lvl]) + k if k < p else sum(points)
                     for lvl, p in enumerate(points) for k in range(self.num_points)]
            self.register_buffer('padded_slots', torch.tensor(slots), persistent=False)
        # set by record_sampling(True): the last call's sampling (for visualisation)
        self.recording = False
        self.last_sampling_locations: Optional[Tensor] = None
        self.last_attention_weights: Optional[Tensor] = None
        self.init_weights()
        if sampling == 'discrete':
            self.sampling_offsets.requires_grad_(False)

    def init_weights(self) -> None:
        """Offsets start on a circle of directions, the k-th point of a level k+1 cells
        out; attention is uniform (zero logits); value and output projections Xavier."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        steps = torch.cat([torch.arange(1, p + 1, dtype=torch.float32)
                           for p in self.num_points_list])
        grid = grid[:, None, :] * steps[None, :, None]  # (M, sum(K_l), 2), level-major
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def _apply(self, fn, *args, **kwargs):
        # every .to() / .cuda() / .half() of a model comes through here
        super()._apply(fn, *args, **kwargs)
        if self._on_cuda():
            check_cuda_backend(self.backend)
        return self

    def _on_cuda(self) -> bool:
        return self.value_proj.weight.is_cuda

    def sampling(self, query: Tensor, reference_points: Tensor, spatial_shapes: Tensor):
        """Sampling locations ``(B, Nq, M, L, K, 2)`` in [0, 1] and their attention
        weights ``(B, Nq, M, L, K)``.

        2-d references (normalised cx, cy) are moved by offsets in cells of each
        level: ``offset / (W_l, H_l)``. 4-d references (cx, cy, w, h) are moved by
        ``offset / K_l * (w, h) * offset_scale``, so the points stay within the box scale.
        """
        b, nq, _ = query.shape
        m, lv, k = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(b, nq, m, -1, 2)
        weights = self.attention_weights(query).view(b, nq, m, -1).softmax(-1)
        if hasattr(self, 'padded_slots'):  # uneven points: zero offsets and weights as padding
            offsets = torch.cat([offsets, offsets.new_zeros(b, nq, m, 1, 2)], 3)
            weights = torch.cat([weights, weights.new_zeros(b, nq, m, 1)], 3)
            offsets, weights = offsets[:, :, :, self.padded_slots], weights[..., self.padded_slots]
        offsets = offsets.view(b, nq, m, lv, k, 2)
        weights = weights.view(b, nq, m, lv, k)
        # One fused multiply-add over the (B, Nq, M, L, K, 2) offsets: this tensor is as
        # large as the value, and separate divide / multiply / add passes over it cost
        # more than the deformable attention itself on the CPU.
        if reference_points.shape[-1] == 2:
            cell = 1.0 / torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]],
                                     -1).to(offsets.dtype)
            locations = torch.addcmul(reference_points[:, :, None, :, None, :], offsets,
                                      cell[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            if hasattr(self, 'padded_slots'):
                per_level = offsets.new_tensor([1.0 / p for p in self.num_points_list])
                offsets = offsets * per_level.view(lv, 1, 1)
                scale = self.offset_scale
            else:
                scale = self.offset_scale / k
            locations = torch.addcmul(reference_points[:, :, None, :, None, :2], offsets,
                                      reference_points[:, :, None, :, None, 2:], value=scale)
        else:
            raise ValueError('MSDeformAttn: reference_points must end in 2 (points) or 4 '
                             f'(boxes), got shape {tuple(reference_points.shape)}')
        return locations, weights

    def forward(self, query: Tensor, value: Tensor, reference_points: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                value_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            query: ``(B, Nq, C)``, positions already added.
            value: ``(B, Nv, C)``, the flattened levels.
            reference_points: ``(B, Nq, L, 2)`` normalised (cx, cy) per level,
                or ``(B, Nq, L, 4)`` normalised boxes.
            spatial_shapes: ``(L, 2)`` int64 ``(H, W)``.
            level_start_index: ``(L,)`` offset of each level in ``Nv``.
            value_padding_mask: ``(B, Nv)`` bool, True at padding; those values are zeroed.

        Returns:
            ``(B, Nq, C)`` after the output projection (no residual).
        """
        b, nv, _ = value.shape
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(b, nv, self.num_heads, self.embed_dims // self.num_heads)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        if self.recording:
            self.last_sampling_locations = locations.detach()
            self.last_attention_weights = weights.detach()
        if self.sampling_method == 'discrete':
            out = discrete_deformable_attn(value, spatial_shapes, level_start_index, locations,
                                           weights)
        else:
            out = multi_scale_deformable_attn(value, spatial_shapes, level_start_index,
                                              locations, weights, self.im2col_step, self.backend)
        return self.output_proj(out)
