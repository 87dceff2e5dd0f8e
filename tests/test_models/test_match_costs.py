"""Match costs against values worked out by hand."""
import math

import pytest
import torch

from mmdeform.models.task_modules import BBoxL1Cost, ClassificationCost, FocalLossCost, IoUCost


def test_classification_cost_is_minus_softmax_probability():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])  # softmax = [0.2, 0.6, 0.2]
    cost = ClassificationCost(weight=2.0)(logits, None, torch.tensor([1, 0]), None)
    assert cost.shape == (1, 2)
    torch.testing.assert_close(cost, torch.tensor([[-1.2, -0.4]]))


def test_focal_cost_by_hand():
    # sigmoid(0) = 0.5: pos = 0.25 * 0.25 * ln 2, neg = 0.75 * 0.25 * ln 2
    cost = FocalLossCost(weight=1.0, alpha=0.25, gamma=2.0, eps=0.0)(
        torch.zeros(1, 3), None, torch.tensor([2]), None)
    expected = (0.25 * 0.25 - 0.75 * 0.25) * math.log(2.0)
    assert cost.item() == pytest.approx(expected, rel=1e-6)


def test_l1_cost_by_hand():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.2, 0.3, 0.4]])
    gt = torch.tensor([[0.4, 0.6, 0.2, 0.1]])
    cost = BBoxL1Cost(weight=5.0)(None, pred, None, gt)
    torch.testing.assert_close(cost, torch.tensor([[5 * 0.3], [5 * (0.3 + 0.4 + 0.1 + 0.3)]]))


def test_giou_cost_by_hand():
    # boxes (cxcywh) [0.25,0.25,0.5,0.5] = xyxy [0,0,0.5,0.5] and [0.75,0.75,0.5,0.5] = [0.5,0.5,1,1]:
    # disjoint, touching at a corner: IoU 0, union 0.5, hull 1 -> GIoU = -0.5
    a = torch.tensor([[0.25, 0.25, 0.5, 0.5]])
    b = torch.tensor([[0.75, 0.75, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]])
    cost = IoUCost(weight=2.0)(None, a, None, b)
    torch.testing.assert_close(cost, torch.tensor([[2 * 0.5, 2 * -1.0]]))
    # half overlap: [0,0,1,1] vs [0.5,0,1.5,1]: IoU = 0.5/1.5, hull = union -> GIoU = 1/3
    c = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    d = torch.tensor([[1.0, 0.5, 1.0, 1.0]])
    assert IoUCost(weight=1.0)(None, c, None, d).item() == pytest.approx(-1 / 3, rel=1e-6)


def test_iou_cost_rejects_unknown_mode():
    with pytest.raises(ValueError, match='iou_mode'):
        IoUCost(iou_mode='diou')
