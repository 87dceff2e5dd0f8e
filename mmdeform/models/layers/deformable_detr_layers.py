"""Deformable DETR's encoder and decoder (post-norm, FFN 1024, dropout 0.1)."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmdeform.utils.amp import fp32_in_autocast
from .attention import MultiheadAttention
from .detr_layers import build_ffn
from .msdeform_attn import MSDeformAttn


@fp32_in_autocast
def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with both terms clamped at ``eps`` (as the official code)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class DeformableDetrEncoderLayer(nn.Module):
    """MSDeformAttn self-attention (query = src + pos, value = src) -> norm -> FFN -> norm."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, feedforward_channels: int = 1024,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = MSDeformAttn(embed_dims, num_heads, num_levels, num_points)
        self.dropout = nn.Dropout(dropout)
        self.ffn = build_ffn(embed_dims, feedforward_channels, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(2))

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                padding_mask: Optional[Tensor]) -> Tensor:
        attended = self.self_attn(query + query_pos, query, reference_points, spatial_shapes,
                                  level_start_index, padding_mask)
        query = self.norms[0](query + self.dropout(attended))
        return self.norms[1](self.ffn(query))


class DeformableDetrDecoderLayer(nn.Module):
    """MHA self-attention -> norm -> MSDeformAttn cross-attention -> norm -> FFN -> norm.
    ``cross_attn_cfg``: further :class:`MSDeformAttn` arguments (``offset_scale``,
    ``sampling``)."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: Union[int, Sequence[int]] = 4, feedforward_channels: int = 1024,
                 dropout: float = 0.1, cross_attn_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.cross_attn = MSDeformAttn(embed_dims, num_heads, num_levels, num_points,
                                       **(cross_attn_cfg or {}))
        self.dropout = nn.Dropout(dropout)
        self.ffn = build_ffn(embed_dims, feedforward_channels, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor,
                reference_points: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                memory_mask: Optional[Tensor], self_attn_mask: Optional[Tensor] = None) -> Tensor:
        """``reference_points``: ``(B, Q, L, 2 | 4)``, already scaled by the valid ratios;
        ``self_attn_mask``: ``(Q, Q)`` bool, True where a query may not attend (DINO's
        denoising groups)."""
        query = self.norms[0](self.self_attn(query, query_pos=query_pos, attn_mask=self_attn_mask))
        attended = self.cross_attn(query + query_pos, memory, reference_points, spatial_shapes,
                                   level_start_index, memory_mask)
        query = self.norms[1](query + self.dropout(attended))
        return self.norms[2](self.ffn(query))


class DeformableDetrEncoder(nn.Module):
    """A stack of :class:`DeformableDetrEncoderLayer` around grid reference points."""

    def __init__(self, num_layers: int = 6, **layer_cfg) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrEncoderLayer(**layer_cfg)
                                    for _ in range(num_layers))
        self.embed_dims = self.layers[0].embed_dims

    @staticmethod
    def reference_points(level_shapes: Sequence[Tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """The centre of every cell of every level, for every level: ``(B, N, L, 2)``.

        A centre is normalised by the valid (unpadded) extent of its own level,
        then scaled by each level's valid ratio, so that it lands on the same
        image point in every level whatever the padding.
        """
        points = []
        for lvl, (h, w) in enumerate(level_shapes):
            # arange + 0.5 is linspace(0.5, h - 0.5, h) to the bit, and a symbolic size stays
            # symbolic (linspace fixes it: an export baked to one size, a recompilation per size)
            ref_y, ref_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                indexing='ij')
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((ref_x, ref_y), -1))
        points = torch.cat(points, 1)
        return points[:, :, None] * valid_ratios[:, None]

    def forward(self, feat: Tensor, feat_pos: Tensor, feat_mask: Optional[Tensor],
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                level_shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
        """``(B, N, C)`` flattened multi-level features -> memory ``(B, N, C)``.
        ``level_shapes``: ``spatial_shapes`` as Python ints, which the model passes so that
        tracing (torch.compile, export) never reads a tensor's values."""
        if level_shapes is None:
            level_shapes = [tuple(s) for s in spatial_shapes.tolist()]
        reference_points = self.reference_points(level_shapes, valid_ratios)
        for layer in self.layers:
            feat = layer(feat, feat_pos, reference_points, spatial_shapes, level_start_index,
                         feat_mask)
        return feat


class DeformableDetrDecoder(nn.Module):
    """A stack of :class:`DeformableDetrDecoderLayer` returning every layer's output.

    With ``reg_branches`` (iterative box refinement) each layer's box branch
    moves the reference in inverse-sigmoid space, and the moved reference,
    detached, is the next layer's input.
    """

    def __init__(self, num_layers: int = 6, **layer_cfg) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrDecoderLayer(**layer_cfg)
                                    for _ in range(num_layers))
        self.embed_dims = self.layers[0].embed_dims
        self.num_layers = num_layers

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor,
                memory_mask: Optional[Tensor], reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, valid_ratios: Tensor,
                reg_branches: Optional[List[nn.Module]] = None) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            query, query_pos: ``(B, Q, C)``.
            memory: ``(B, N, C)``; ``memory_mask``: ``(B, N)`` or None.
            reference_points: ``(B, Q, 2 | 4)`` normalised to the valid image.
            valid_ratios: ``(B, L, 2)``.
            reg_branches: the head's per-layer box branches, for refinement.

        Returns:
            hidden states ``(D, B, Q, C)`` and ``D + 1`` references ``(B, Q, 2 | 4)``:
            the input reference of every layer, then the last layer's output. With
            refinement, 2-d references become boxes after the first layer.
        """
        hidden_states, references = [], [reference_points]
        for i, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                scale = torch.cat([valid_ratios, valid_ratios], -1)
            else:
                scale = valid_ratios
            query = layer(query, query_pos, memory, reference_points[:, :, None] * scale[:, None],
                          spatial_shapes, level_start_index, memory_mask)
            if reg_branches is not None:
                delta = reg_branches[i](query)
                if reference_points.shape[-1] == 4:
                    new_reference = delta + inverse_sigmoid(reference_points)
                else:  # points become boxes: the branch's (w, h) join the moved centre
                    new_reference = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                reference_points = new_reference.sigmoid().detach()
            hidden_states.append(query)
            references.append(reference_points)
        return torch.stack(hidden_states), references
