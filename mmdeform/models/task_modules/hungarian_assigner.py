"""One-to-one matching of queries to ground-truth boxes (DETR's bipartite matching)."""
from typing import List, NamedTuple, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mmdeform.registry import TASK_UTILS
from mmdeform.utils.amp import fp32_in_autocast


class Matching(NamedTuple):
    """The matched pairs of one image: ``query_inds[k]`` is matched to ``gt_inds[k]``."""
    query_inds: Tensor  # (K,) int64
    gt_inds: Tensor  # (K,) int64


@TASK_UTILS.register_module()
class HungarianAssigner:
    """Minimum-cost one-to-one assignment by ``scipy.optimize.linear_sum_assignment``.

    The cost of every prediction against every target of the batch is built
    in one batched computation for any number of leading dimensions (decoder
    layers, images), copied to the host once, and then split per image. This
    is one device-to-host transfer per call instead of one per image and layer.

    Args:
        match_costs: configs of the costs in :mod:`.match_costs`, summed.
    """

    def __init__(self, match_costs: Sequence[dict]) -> None:
        if isinstance(match_costs, dict):
            match_costs = [match_costs]
        self.match_costs = [TASK_UTILS.build(cfg) for cfg in match_costs]

    @fp32_in_autocast
    @torch.no_grad()
    def assign(self, cls_logits: Tensor, boxes: Tensor, gt_labels: List[Tensor],
               gt_boxes: List[Tensor]) -> List[List[Matching]]:
        """Match each image's queries to its targets, for every leading index.

        Args:
            cls_logits: ``(S, B, Q, C)`` logits for ``S`` sets of predictions
                (e.g. decoder layers) of ``B`` images.
            boxes: ``(S, B, Q, 4)`` normalised cxcywh.
            gt_labels: ``B`` tensors of shape ``(G_b,)``.
            gt_boxes: ``B`` tensors of shape ``(G_b, 4)``, normalised cxcywh.

        Returns:
            ``S`` lists of ``B`` :class:`Matching`.
        """
        num_sets, batch_size, num_queries = cls_logits.shape[:3]
        if len(gt_labels) != batch_size or len(gt_boxes) != batch_size:
            raise ValueError(f'HungarianAssigner: got {len(gt_labels)} label and {len(gt_boxes)} '
                             f'box tensors for a batch of {batch_size} images')
        sizes = [len(labels) for labels in gt_labels]
        if sum(sizes) == 0:
            empty = Matching(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
            return [[empty] * batch_size for _ in range(num_sets)]

        labels = torch.cat(gt_labels)
        targets = torch.cat(gt_boxes)
        flat_logits = cls_logits.flatten(0, 2)
        flat_boxes = boxes.flatten(0, 2)
        cost = sum(cost_fn(flat_logits, flat_boxes, labels, targets) for cost_fn in self.match_costs)
        cost = cost.view(num_sets, batch_size, num_queries, -1).float().cpu().numpy()
        if not np.isfinite(cost).all():
            raise FloatingPointError(
                'HungarianAssigner: the matching cost has NaN or inf entries; the predicted '
                'logits or boxes are not finite (did the training diverge? try a lower lr or '
                'gradient clipping)')

        bounds = np.cumsum([0] + sizes)
        return [[self._solve(cost[s, b, :, bounds[b]:bounds[b + 1]]) for b in range(batch_size)]
                for s in range(num_sets)]

    @staticmethod
    def _solve(cost: np.ndarray) -> Matching:
        query_inds, gt_inds = linear_sum_assignment(cost)
        return Matching(torch.from_numpy(query_inds).long(), torch.from_numpy(gt_inds).long())

    def __repr__(self) -> str:
        return f'{type(self).__name__}(match_costs={self.match_costs})'
