"""Our GIoU match cost against torchvision.ops.generalized_box_iou."""
import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torchvision.ops import generalized_box_iou

from mmdeform.models.task_modules import IoUCost


def _random_cxcywh(n, g):
    return torch.cat([torch.rand(n, 2, generator=g), 0.02 + 0.6 * torch.rand(n, 2, generator=g)], 1)


def test_giou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = _random_cxcywh(50, g), _random_cxcywh(30, g)
    ours = -IoUCost(weight=1.0)(None, a, None, b)
    ref = generalized_box_iou(bbox_cxcywh_to_xyxy(a), bbox_cxcywh_to_xyxy(b))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_giou_zero_area_boxes_are_finite():
    a = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.1, 0.1]])
    b = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    cost = IoUCost(weight=1.0)(None, a, None, b)
    assert torch.isfinite(cost).all()
