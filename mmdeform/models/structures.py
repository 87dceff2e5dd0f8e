"""The typed records that flow between the steps of a DETR-family forward pass.

``extract_feat -> pre_transformer -> forward_encoder -> pre_decoder ->
forward_decoder -> head``: each step takes and returns one of these, so a
reader can see what flows where without chasing dictionary keys.
Shapes use ``B`` images, ``N`` flattened feature positions over all levels,
``L`` feature levels, ``Q`` queries, ``C`` channels, ``D`` decoder layers.
"""
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

from torch import Tensor


@dataclass
class EncoderInputs:
    feat: Tensor  # (B, N, C) flattened features of every level
    feat_pos: Optional[Tensor]  # (B, N, C) positional (+ level) embeddings; None in RT-DETR
    feat_mask: Optional[Tensor]  # (B, N) bool, True at padding; None if no image is padded
    # multi-scale (Deformable DETR) only
    spatial_shapes: Optional[Tensor] = None  # (L, 2) int64, (H, W) of each level
    level_start_index: Optional[Tensor] = None  # (L,) offset of each level in N
    valid_ratios: Optional[Tensor] = None  # (B, L, 2) unpadded fraction (w, h) per level
    # spatial_shapes as Python ints (symbolic ones under torch.export), for what needs sizes
    level_shapes: Optional[List[Tuple[int, int]]] = None


@dataclass
class DecoderInputs:
    query: Tensor  # (B, Q, C) content queries
    query_pos: Tensor  # (B, Q, C) positional queries
    memory: Tensor  # (B, N, C) encoder output
    reference_points: Optional[Tensor] = None  # (B, Q, 2 | 4) normalised, Deformable DETR only
    # DINO training: (Q, Q) bool, True where a query may not attend (denoising groups)
    attn_mask: Optional[Tensor] = None


@dataclass
class HeadInputs:
    hidden_states: Tensor  # (D, B, Q, C) every decoder layer's output
    # Deformable DETR: D + 1 tensors (B, Q, 2 | 4), normalised cxcy or cxcywh: the
    # reference of each layer's input, then the last layer's output
    references: Optional[List[Tensor]] = None
    # two-stage: the encoder's proposal scores and boxes for the selected proposals
    enc_outputs_class: Optional[Tensor] = None  # (B, N, num_classes)
    enc_outputs_coord: Optional[Tensor] = None  # (B, N, 4) normalised cxcywh
    # DINO training: how the first queries of every layer are the denoising ones
    dn_meta: Optional['DenoisingMeta'] = None


@dataclass
class DenoisingMeta:
    """DINO's denoising queries: the first ``num_queries`` of the decoder's queries.

    They form ``num_groups`` groups of ``group_size = 2 * max_targets`` queries:
    the positives (slots ``0 .. max_targets - 1``) then the negatives, image ``b``
    using the first ``len(gt_indices[b])`` slots of each half.
    """
    num_queries: int
    num_groups: int
    max_targets: int
    gt_indices: List[Tensor]  # per image, (G_b',) the targets denoised (all unless capped)


class HeadOutputs(NamedTuple):
    """What ``model(..., mode='tensor')`` returns."""
    all_cls_scores: Tensor  # (D, B, Q, num_classes [+1]) logits
    all_bbox_preds: Tensor  # (D, B, Q, 4) normalised cxcywh
    enc_cls_scores: Optional[Tensor] = None  # two-stage: (B, N, num_classes)
    enc_bbox_preds: Optional[Tensor] = None  # two-stage: (B, N, 4)
