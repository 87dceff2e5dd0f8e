"""The batched assigner against brute force over all assignments."""
import itertools

import pytest
import torch

from mmdeform.models.task_modules import HungarianAssigner

COSTS = [dict(type='ClassificationCost', weight=1.0), dict(type='BBoxL1Cost', weight=5.0),
         dict(type='IoUCost', iou_mode='giou', weight=2.0)]


def brute_force_min_cost(cost):
    """Minimum total cost of matching every column to a distinct row."""
    num_q, num_g = len(cost), len(cost[0])
    return min(sum(cost[q][j] for j, q in enumerate(rows))
               for rows in itertools.permutations(range(num_q), num_g))


def _problem(g, layers, sizes, num_queries=5, num_classes=4):
    batch = len(sizes)
    logits = torch.randn(layers, batch, num_queries, num_classes + 1, generator=g)
    boxes = torch.cat([torch.rand(layers, batch, num_queries, 2, generator=g),
                       0.05 + 0.5 * torch.rand(layers, batch, num_queries, 2, generator=g)], -1)
    labels = [torch.randint(0, num_classes, (n,), generator=g) for n in sizes]
    gts = [torch.cat([torch.rand(n, 2, generator=g), 0.05 + 0.5 * torch.rand(n, 2, generator=g)], 1)
           for n in sizes]
    return logits, boxes, labels, gts


@pytest.mark.parametrize('seed', range(5))
def test_assignment_is_optimal(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [3, 0, 5, 1]
    logits, boxes, labels, gts = _problem(g, layers=2, sizes=sizes)
    assigner = HungarianAssigner(COSTS)
    result = assigner.assign(logits, boxes, labels, gts)
    assert len(result) == 2 and all(len(r) == len(sizes) for r in result)
    for layer in range(2):
        for b, n in enumerate(sizes):
            match = result[layer][b]
            assert len(match.query_inds) == n
            assert sorted(match.gt_inds.tolist()) == list(range(n))
            assert len(set(match.query_inds.tolist())) == n
            if n == 0:
                continue
            # the cost matrix of this image alone, from the same cost functions
            cost = sum(c(logits[layer, b], boxes[layer, b], labels[b], gts[b])
                       for c in assigner.match_costs)
            total = cost[match.query_inds, match.gt_inds].sum().item()
            assert total == pytest.approx(brute_force_min_cost(cost.tolist()), abs=1e-5)


def test_no_ground_truth_in_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    logits, boxes, labels, gts = _problem(g, layers=3, sizes=[0, 0])
    result = HungarianAssigner(COSTS).assign(logits, boxes, labels, gts)
    assert len(result) == 3
    assert all(len(m.query_inds) == 0 and len(m.gt_inds) == 0 for r in result for m in r)


def test_non_finite_predictions_give_a_clear_error():
    g = torch.Generator().manual_seed(0)
    logits, boxes, labels, gts = _problem(g, layers=1, sizes=[2])
    boxes[0, 0, 1, 0] = float('nan')
    with pytest.raises(FloatingPointError, match='not finite'):
        HungarianAssigner(COSTS).assign(logits, boxes, labels, gts)
