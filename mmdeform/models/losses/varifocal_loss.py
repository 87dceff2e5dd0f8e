"""The varifocal loss as RT-DETR computes it (its weight does not back-propagate)."""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from mmdeform.registry import MODELS


@MODELS.register_module()
class DetrVarifocalLoss(nn.Module):
    """``sum BCE(x, s) * (alpha * sigmoid(x)^gamma * (1 - t) + s) / avg_factor``.

    ``t`` is the one-hot class target of each query (zero for the unmatched) and
    ``s = iou * t`` the IoU of the matched query's box with its target
    (VarifoNet's IoU-aware target). The weight is computed from the detached
    score, as in the official RT-DETR. mmdet's ``VarifocalLoss`` is not this
    loss: its weight is not detached (so the gradients differ everywhere), and a
    matched query whose IoU is 0 counts there as a negative with weight
    ``alpha * p^gamma``, here with weight 0 (tests/test_models/test_rtdetr.py).

    The heads pass ``ious`` because of ``iou_aware``: see
    :meth:`~mmdeform.models.dense_heads.DETRHead.iou_targets`.

    Args:
        use_sigmoid: must be True (for the heads' check).
        alpha: the weight of the negatives (0.75).
        gamma: the exponent of the negatives' score (2).
        loss_weight: a factor on the loss.
    """
    iou_aware = True

    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.75, gamma: float = 2.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if not use_sigmoid:
            raise ValueError('DetrVarifocalLoss is a sigmoid loss (use_sigmoid=True)')
        self.use_sigmoid = use_sigmoid
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, labels: Tensor, ious: Tensor,
                avg_factor: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            pred: ``(N, C)`` logits.
            labels: ``(N,)`` int64 in ``[0, C]``, ``C`` for no object.
            ious: ``(N,)`` the IoU of each query's box with its target (0 where
                unmatched), without gradient.
            avg_factor: the normaliser (the number of boxes); None: 1.
        """
        num_classes = pred.shape[-1]
        target = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(pred.dtype)
        score = ious.to(pred.dtype)[:, None] * target
        weight = self.alpha * pred.detach().sigmoid().pow(self.gamma) * (1 - target) + score
        loss = F.binary_cross_entropy_with_logits(pred, score, weight=weight, reduction='sum')
        return self.loss_weight * (loss if avg_factor is None else loss / avg_factor)
