"""DINO's contrastive denoising (CDN) queries (Zhang et al., ICLR 2023, Sec. 3.3).

Every ground-truth box of the batch is repeated in ``num_groups`` groups, each
with a positive copy (corners moved by less than half the box size: it must
be reconstructed) and a negative copy (moved by 1 to 2 half-sizes: it must be
classified as no object). A quarter of the copies (``label_noise_scale / 2``)
get a random label. The queries' content is the label's embedding; their
reference box is the noisy box.
"""
import math
import warnings
from typing import List, NamedTuple, Optional, Tuple

import torch
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from torch import Tensor, nn

from ..structures import DenoisingMeta
from .deformable_detr_layers import inverse_sigmoid


class NoiseDraws(NamedTuple):
    """The random draws of one batch, for ``n = 2 * num_groups * num_targets`` copies
    ordered ``[group 0 positives, group 0 negatives, group 1 positives, ...]``,
    each block holding the batch's targets concatenated image after image."""
    flip_prob: Tensor  # (n,) uniform [0, 1): the label is redrawn where < label_noise_scale / 2
    random_labels: Tensor  # (k,) int64 in [0, num_classes): the new labels, k = flipped copies
    box_sign: Tensor  # (n, 4) float, +-1 per corner coordinate
    box_magnitude: Tensor  # (n, 4) uniform [0, 1); negatives add 1


class DenoisingQueries(NamedTuple):
    label_query: Tensor  # (B, P, C) content queries
    box_query: Tensor  # (B, P, 4) noisy boxes, normalised cxcywh in inverse-sigmoid space
    attn_mask: Tensor  # (P + Q, P + Q) bool, True where a query may not attend
    meta: DenoisingMeta


class CdnQueryGenerator(nn.Module):
    """Builds the denoising queries of a training batch from its ground truth.

    Args:
        num_classes: object classes; noisy labels are drawn in ``[0, num_classes)``.
        embed_dims: query width ``C``.
        num_matching_queries: ``Q``, the decoder's ordinary queries (for the mask).
        label_noise_scale: twice the fraction of copies that get a random label.
        box_noise_scale: the corner noise in units of the box's half size.
        num_dn_queries: the groups are ``num_dn_queries // max_targets`` (at least
            1), ``max_targets`` being the most boxes of an image in the batch.
        max_dn_queries: a cap on ``P``: when ``2 * max_targets`` would exceed it,
            each image keeps a random ``max_dn_queries // 2`` of its boxes for
            denoising (all boxes still take part in the matching loss), with one
            warning. Default ``2 * num_dn_queries``, which no COCO image reaches.
        num_label_embeddings: rows of the label embedding; the official model has
            ``num_classes + 1`` (the default), mmdet ``num_classes``.
        box_eps: the inverse-sigmoid clamp of the noisy boxes (DINO 1e-3, RT-DETR 1e-5).
        padding_box: the box of the slots that images with fewer targets leave
            empty: ``'centre'`` (DINO: logits 0, a centred half-size box) or
            ``'zero'`` (RT-DETR: its noise leaves the zero box, logits ``log(box_eps)``).

    The random draws come from :meth:`draw_noise`, in the order and shapes of
    mmdet 3.3.0's ``CdnQueryGenerator``; replace it to inject fixed noise.
    """

    def __init__(self, num_classes: int, embed_dims: int, num_matching_queries: int,
                 label_noise_scale: float = 0.5, box_noise_scale: float = 1.0,
                 num_dn_queries: int = 100, max_dn_queries: Optional[int] = None,
                 num_label_embeddings: Optional[int] = None, box_eps: float = 1e-3,
                 padding_box: str = 'centre') -> None:
        super().__init__()
        if padding_box not in ('centre', 'zero'):
            raise ValueError(f"CdnQueryGenerator: padding_box must be 'centre' or 'zero', "
                             f'got {padding_box!r}')
        self.box_eps = box_eps
        self.padding_logit = 0.0 if padding_box == 'centre' else math.log(box_eps)
        rows = num_classes + 1 if num_label_embeddings is None else num_label_embeddings
        if num_classes > rows:
            raise ValueError(f'CdnQueryGenerator: num_classes={num_classes} is larger than the '
                             f'label embedding (num_label_embeddings={rows} rows); every class '
                             'needs a row')
        if num_dn_queries < 1:
            raise ValueError(f'CdnQueryGenerator: num_dn_queries must be >= 1, '
                             f'got {num_dn_queries}')
        self.max_dn_queries = 2 * num_dn_queries if max_dn_queries is None else max_dn_queries
        if self.max_dn_queries < 2:
            raise ValueError('CdnQueryGenerator: max_dn_queries must be >= 2 (one positive and '
                             f'one negative), got {max_dn_queries}')
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_matching_queries = num_matching_queries
        self.label_noise_scale = label_noise_scale
        self.box_noise_scale = box_noise_scale
        self.num_dn_queries = num_dn_queries
        self.label_embedding = nn.Embedding(rows, embed_dims)
        self._warned_cap = False

    def num_groups(self, max_targets: int) -> int:
        return max(1, self.num_dn_queries // max_targets) if max_targets > 0 else 1

    def draw_noise(self, num_copies: int, boxes: Tensor) -> NoiseDraws:
        """Label flips in float32, box noise in ``boxes``' dtype and device (as mmdet's
        and the official generators draw them, whatever the default dtype)."""
        device = boxes.device
        flip_prob = torch.rand(num_copies, dtype=torch.float32, device=device)
        num_flipped = int((flip_prob < self.label_noise_scale * 0.5).sum())
        random_labels = torch.randint(0, self.num_classes, (num_flipped, ), device=device)
        box_sign = torch.randint(0, 2, (num_copies, 4), dtype=torch.float32, device=device) * 2 - 1
        box_magnitude = torch.rand(num_copies, 4, dtype=boxes.dtype, device=device)
        return NoiseDraws(flip_prob, random_labels, box_sign, box_magnitude)

    @torch.compiler.disable
    def forward(self, batch_data_samples: SampleList) -> DenoisingQueries:
        """Eager under ``torch.compile``: the number of queries depends on the data."""
        device = self.label_embedding.weight.device
        gt_indices = self._denoised_targets(batch_data_samples)
        labels, boxes, image_of = [], [], []
        for b, (sample, keep) in enumerate(zip(batch_data_samples, gt_indices)):
            h, w = sample.img_shape[:2]
            labels.append(sample.gt_instances.labels[keep])
            boxes.append(sample.gt_instances.bboxes[keep] / boxes_scale(w, h, device))
            image_of.append(torch.full((len(keep), ), b, dtype=torch.long, device=device))
        labels, boxes, image_of = torch.cat(labels), torch.cat(boxes), torch.cat(image_of)
        max_targets = max(len(keep) for keep in gt_indices)
        num_groups = self.num_groups(max_targets)
        noise = self.draw_noise(2 * num_groups * len(labels), boxes)
        label_query = self.label_embedding(self._noisy_labels(labels, num_groups, noise))
        box_query = self._noisy_boxes(boxes, num_groups, noise)
        label_query, box_query = self._collate(label_query, box_query, image_of, gt_indices,
                                               num_groups, max_targets)
        meta = DenoisingMeta(2 * max_targets * num_groups, num_groups, max_targets, gt_indices)
        return DenoisingQueries(label_query, box_query,
                                self.attention_mask(max_targets, num_groups, device), meta)

    def _denoised_targets(self, batch_data_samples: SampleList) -> List[Tensor]:
        """Each image's target indices to denoise: all, or a random subset at the cap."""
        device = self.label_embedding.weight.device
        counts = [len(s.gt_instances.labels) for s in batch_data_samples]
        limit = self.max_dn_queries // 2
        if max(counts) <= limit:
            return [torch.arange(n, device=device) for n in counts]
        if not self._warned_cap:
            warnings.warn(f'CdnQueryGenerator: an image has {max(counts)} boxes; denoising uses '
                          f'{limit} random boxes per image (max_dn_queries={self.max_dn_queries}). '
                          'This warning is shown once.')
            self._warned_cap = True
        return [torch.randperm(n, device=device)[:limit].sort()[0] if n > limit
                else torch.arange(n, device=device) for n in counts]

    def _noisy_labels(self, labels: Tensor, num_groups: int, noise: NoiseDraws) -> Tensor:
        copies = labels.repeat(2 * num_groups)
        flipped = torch.nonzero(noise.flip_prob < self.label_noise_scale * 0.5).view(-1)
        return copies.scatter(0, flipped, noise.random_labels)

    def _noisy_boxes(self, boxes: Tensor, num_groups: int, noise: NoiseDraws) -> Tensor:
        """``(N, 4)`` normalised xyxy -> ``(2 * groups * N, 4)`` noisy inverse-sigmoid cxcywh."""
        n = len(boxes)
        copies = boxes.repeat(2 * num_groups, 1)
        negative = torch.arange(2 * num_groups, device=boxes.device).repeat_interleave(n) % 2
        offset = (noise.box_magnitude + negative[:, None]) * noise.box_sign
        half_sizes = bbox_xyxy_to_cxcywh(copies)[:, 2:].repeat(1, 2)
        noisy = (copies + offset * half_sizes * self.box_noise_scale / 2).clamp(min=0.0, max=1.0)
        return inverse_sigmoid(bbox_xyxy_to_cxcywh(noisy), eps=self.box_eps)

    def _collate(self, label_query: Tensor, box_query: Tensor, image_of: Tensor,
                 gt_indices: List[Tensor], num_groups: int,
                 max_targets: int) -> Tuple[Tensor, Tensor]:
        """Place the copies in ``(B, P, ...)``: image ``b``'s ``j``-th target of block
        ``k`` (``k = 2 * group + negative``) at query ``k * max_targets + j``; the
        slots of images with fewer targets keep a zero content and ``padding_box``."""
        batch_size = len(gt_indices)
        slot = torch.cat([torch.arange(len(keep), device=image_of.device) for keep in gt_indices])
        blocks = torch.arange(2 * num_groups, device=image_of.device).repeat_interleave(len(slot))
        query_index = blocks * max_targets + slot.repeat(2 * num_groups)
        image_index = image_of.repeat(2 * num_groups)
        num_queries = 2 * max_targets * num_groups
        labels = label_query.new_zeros(batch_size, num_queries, self.embed_dims)
        boxes = box_query.new_full((batch_size, num_queries, 4), self.padding_logit)
        labels[image_index, query_index] = label_query
        boxes[image_index, query_index] = box_query
        return labels, boxes

    def attention_mask(self, max_targets: int, num_groups: int, device: torch.device) -> Tensor:
        """``(P + Q, P + Q)``: the matching queries cannot see the denoising queries
        (they would see the answers), and no group can see another."""
        group_size = 2 * max_targets
        num_dn = group_size * num_groups
        total = num_dn + self.num_matching_queries
        mask = torch.zeros(total, total, dtype=torch.bool, device=device)
        mask[num_dn:, :num_dn] = True
        for g in range(num_groups):
            rows = slice(g * group_size, (g + 1) * group_size)
            mask[rows, :g * group_size] = True
            mask[rows, (g + 1) * group_size:num_dn] = True
        return mask


def boxes_scale(w: int, h: int, device: torch.device) -> Tensor:
    return torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
