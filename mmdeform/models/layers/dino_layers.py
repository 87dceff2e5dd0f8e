"""DINO's decoder: anchor boxes as queries (DAB-DETR) and look-forward-twice."""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .deformable_detr_layers import DeformableDetrDecoder, inverse_sigmoid
from .mlp import MLP


def box_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: int = 10000) -> Tensor:
    """``(B, Q, 4)`` normalised cxcywh -> ``(B, Q, 4 * num_feats)`` sine embedding in the
    order y, x, w, h, each with sin on even and cos on odd channels."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature**(2 * torch.div(dim_t, 2, rounding_mode='floor') / num_feats)
    angles = boxes[..., None] * (2 * math.pi) / dim_t  # (B, Q, 4, F)
    embed = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1).flatten(-2)
    x, y, w, h = embed.unbind(-2)
    return torch.cat((y, x, w, h), -1)


class DinoDecoder(DeformableDetrDecoder):
    """The Deformable DETR decoder with 4-d anchor boxes as references.

    Each layer's positional query depends on ``query_pos``: ``'sine'`` (DINO,
    DAB-DETR): ``ref_point_head(sine(anchor))``, an MLP ``2C -> C -> C`` of the
    anchor's sine embedding; ``'box'`` (RT-DETR): ``ref_point_head(anchor)``, an
    MLP ``4 -> 2C -> C``; ``'given'``: the positional queries passed in, the same
    for every layer (Deformable DETR). Either way the head's box branches move
    the anchors.

    Args:
        query_pos: see above.
        final_norm: every layer's output goes through one final LayerNorm on its
            way to the heads (DINO); off in Deformable DETR and RT-DETR.
        look_forward_twice: the head's box of layer ``i`` is computed from the
            reference of layer ``i - 1`` *before* it is detached, so that the loss
            of layer ``i`` also trains the box branch of layer ``i - 1``. Off: the
            detached reference (Deformable DETR's refinement).
        reference_eps: the inverse-sigmoid clamp of the reference update (1e-3
            in both official DINO and mmdet, 1e-5 in RT-DETR).
        eval_idx: in evaluation, run the layers up to this one (negative: from
            the end) and return their outputs only; RT-DETR R50-m trains 6 layers
            and evaluates 3.
        Others: see :class:`DeformableDetrDecoder`.
    """

    def __init__(self, num_layers: int = 6, look_forward_twice: bool = True,
                 reference_eps: float = 1e-3, query_pos: str = 'sine', final_norm: bool = True,
                 eval_idx: int = -1, **layer_cfg) -> None:
        super().__init__(num_layers, **layer_cfg)
        if query_pos not in ('sine', 'box', 'given'):
            raise ValueError(f"DinoDecoder: query_pos must be 'sine', 'box' or 'given', "
                             f'got {query_pos!r}')
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f'DinoDecoder: eval_idx {eval_idx} is out of range for '
                             f'{num_layers} layers')
        self.look_forward_twice = look_forward_twice
        self.reference_eps = reference_eps
        self.query_pos = query_pos
        self.eval_layers = eval_idx % num_layers + 1
        c = self.embed_dims
        if query_pos == 'sine':
            self.ref_point_head = MLP(2 * c, c, c, 2)
        elif query_pos == 'box':
            self.ref_point_head = MLP(4, 2 * c, c, 2)
        self.norm = nn.LayerNorm(c) if final_norm else nn.Identity()

    def forward(self, query: Tensor, query_pos: Optional[Tensor], memory: Tensor,
                memory_mask: Optional[Tensor], reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, valid_ratios: Tensor,
                reg_branches: Optional[List[nn.Module]] = None,
                attn_mask: Optional[Tensor] = None) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            query: ``(B, Q, C)`` content queries; ``query_pos`` ``(B, Q, C)``
                is used only with ``query_pos='given'``.
            reference_points: ``(B, Q, 4)`` normalised cxcywh anchors.
            reg_branches: the head's per-layer box branches (required).
            attn_mask: ``(Q, Q)`` bool self-attention mask (denoising groups).
            Others: see :meth:`DeformableDetrDecoder.forward`.

        Returns:
            the hidden states ``(D, B, Q, C)`` and ``D + 1`` references
            ``(B, Q, 4)``: the input anchors, then each layer's refined boxes,
            undetached with look-forward-twice. ``D`` is ``eval_idx``'s count in
            evaluation, else every layer.
        """
        if reference_points.shape[-1] != 4 or reg_branches is None:
            raise ValueError('DinoDecoder needs 4-d anchor boxes and the head\'s box branches, '
                             f'got references {tuple(reference_points.shape)}')
        scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]
        hidden_states, references = [], [reference_points]
        layers = self.layers if self.training else self.layers[:self.eval_layers]
        for i, layer in enumerate(layers):
            scaled = reference_points[:, :, None] * scale
            if self.query_pos == 'sine':
                query_pos = self.ref_point_head(box_sine_embedding(scaled[:, :, 0],
                                                                   self.embed_dims // 2))
            elif self.query_pos == 'box':
                query_pos = self.ref_point_head(reference_points)
            query = layer(query, query_pos, memory, scaled, spatial_shapes, level_start_index,
                          memory_mask, self_attn_mask=attn_mask)
            new_reference = (reg_branches[i](query) +
                             inverse_sigmoid(reference_points, self.reference_eps)).sigmoid()
            reference_points = new_reference.detach()
            hidden_states.append(self.norm(query))
            references.append(new_reference if self.look_forward_twice else reference_points)
        return torch.stack(hidden_states), references
