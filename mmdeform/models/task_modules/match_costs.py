"""Pairwise match costs between predictions and ground truth, for whole batches.

Every cost takes all predictions of a batch flattened to ``N`` rows and all
ground-truth boxes of the batch concatenated to ``M`` columns, and returns an
``(N, M)`` matrix already multiplied by its weight. Boxes are normalised
``(cx, cy, w, h)``: predictions as the head emits them, targets divided by
their image's size.
"""
import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps
from torch import Tensor

from mmdeform.registry import TASK_UTILS


class BaseMatchCost:

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def __call__(self, cls_logits: Tensor, boxes: Tensor, gt_labels: Tensor,
                 gt_boxes: Tensor) -> Tensor:
        """
        Args:
            cls_logits: ``(N, num_classes[+1])`` raw class logits.
            boxes: ``(N, 4)`` predicted normalised cxcywh.
            gt_labels: ``(M,)`` class indices.
            gt_boxes: ``(M, 4)`` target normalised cxcywh.

        Returns:
            ``(N, M)`` weighted cost.
        """
        return self.weight * self.cost(cls_logits, boxes, gt_labels, gt_boxes)

    def cost(self, cls_logits, boxes, gt_labels, gt_boxes) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}(weight={self.weight})'


@TASK_UTILS.register_module()
class ClassificationCost(BaseMatchCost):
    """``-softmax(logits)[gt_label]``: DETR's class cost (the ``1 -`` is dropped)."""

    def cost(self, cls_logits, boxes, gt_labels, gt_boxes):
        return -cls_logits.softmax(-1)[:, gt_labels]


@TASK_UTILS.register_module()
class FocalLossCost(BaseMatchCost):
    """Deformable DETR's class cost: the focal loss of the positive minus that of the negative.

    ``eps`` is 1e-8 as in the official code (mmdet uses 1e-12).
    """

    def __init__(self, weight: float = 1.0, alpha: float = 0.25, gamma: float = 2.0,
                 eps: float = 1e-8) -> None:
        super().__init__(weight)
        self.alpha = alpha
        self.gamma = gamma
        self.eps = eps

    def cost(self, cls_logits, boxes, gt_labels, gt_boxes):
        prob = cls_logits.sigmoid()[:, gt_labels]
        neg = (1 - self.alpha) * prob.pow(self.gamma) * -(1 - prob + self.eps).log()
        pos = self.alpha * (1 - prob).pow(self.gamma) * -(prob + self.eps).log()
        return pos - neg


@TASK_UTILS.register_module()
class BBoxL1Cost(BaseMatchCost):
    """L1 distance between normalised cxcywh boxes."""

    def cost(self, cls_logits, boxes, gt_labels, gt_boxes):
        return torch.cdist(boxes, gt_boxes, p=1)


@TASK_UTILS.register_module()
class IoUCost(BaseMatchCost):
    """``-GIoU`` (or ``-IoU``) between boxes in xyxy."""

    def __init__(self, weight: float = 1.0, iou_mode: str = 'giou') -> None:
        super().__init__(weight)
        if iou_mode not in ('iou', 'giou'):
            raise ValueError(f"IoUCost: iou_mode must be 'iou' or 'giou', got {iou_mode!r}")
        self.iou_mode = iou_mode

    def cost(self, cls_logits, boxes, gt_labels, gt_boxes):
        return -bbox_overlaps(bbox_cxcywh_to_xyxy(boxes), bbox_cxcywh_to_xyxy(gt_boxes),
                              mode=self.iou_mode)
