"""The contrastive denoising generator against hand-worked cases and the official
group table (dino-facts: the number of groups for each max_gt)."""
import math

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from mmdeform.models.layers import CdnQueryGenerator, NoiseDraws


def _sample(boxes, labels, size=(100, 100)):
    sample = DetDataSample()
    sample.set_metainfo(dict(img_shape=size))
    gt = InstanceData()
    gt.bboxes = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    gt.labels = torch.tensor(labels, dtype=torch.long)
    sample.gt_instances = gt
    return sample


def _generator(**kwargs):
    kwargs.setdefault('num_classes', 10)
    return CdnQueryGenerator(embed_dims=8, num_matching_queries=kwargs.pop('q', 3), **kwargs)


# max_gt -> groups, read off the official code (dn_number=100) and mmdet (num_dn_queries=100)
OFFICIAL_GROUPS = {0: 1, 1: 100, 2: 50, 3: 33, 5: 20, 7: 14, 10: 10, 20: 5, 33: 3, 34: 2,
                   50: 2, 51: 1, 100: 1}


@pytest.mark.parametrize('max_gt, groups', sorted(OFFICIAL_GROUPS.items()))
def test_group_counts(max_gt, groups):
    gen = _generator()
    assert gen.num_groups(max_gt) == groups
    samples = [_sample([[10, 10, 50, 50]] * max_gt, [1] * max_gt), _sample([], [])]
    out = gen(samples)
    assert out.meta.num_groups == groups
    assert out.meta.num_queries == 2 * max_gt * groups == out.label_query.shape[1]
    assert out.attn_mask.shape == (2 * max_gt * groups + 3, ) * 2


def test_attention_mask_blocks():
    """2 groups of (1 positive, 1 negative) and 3 matching queries, by hand."""
    mask = _generator().attention_mask(max_targets=1, num_groups=2, device='cpu')
    expected = torch.tensor([
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_injected_noise_gives_hand_worked_queries():
    """One 100 x 100 image with box (20, 20, 60, 40) of class 3, one group: the
    positive copy moves every corner by +0.5 half-sizes, the negative by -1.5
    (half-size = scale * (w, h) / 2 = (0.2, 0.1) normalised), and the negative's
    label is flipped to 7."""
    gen = _generator()
    gen.draw_noise = lambda n, boxes: NoiseDraws(
        flip_prob=torch.tensor([0.9, 0.1]), random_labels=torch.tensor([7]),
        box_sign=torch.tensor([[1.0] * 4, [-1.0] * 4]),
        box_magnitude=torch.full((2, 4), 0.5))
    gen.num_dn_queries = 1  # one group
    out = gen([_sample([[20, 20, 60, 40]], [3])])
    # positive: (0.3, 0.25, 0.7, 0.45) -> cxcywh (0.5, 0.35, 0.4, 0.2)
    # negative: (0.2 - 0.3, 0.2 - 0.15, 0.6 - 0.3, 0.4 - 0.15) clamped -> (0, 0.05, 0.3, 0.25)
    expected = torch.tensor([[0.5, 0.35, 0.4, 0.2], [0.15, 0.15, 0.3, 0.2]])
    torch.testing.assert_close(out.box_query[0].sigmoid(), expected, atol=1e-6, rtol=0)
    weight = gen.label_embedding.weight
    assert torch.equal(out.label_query[0], weight[[3, 7]])
    assert out.meta.num_queries == 2 and out.meta.max_targets == 1


def test_noise_ranges_and_padding_slots():
    """Positives move each corner by less than one half-size, negatives by 1 to 2;
    the image with fewer boxes leaves its extra slots zero."""
    torch.manual_seed(0)
    gen = _generator(box_noise_scale=1.0)
    boxes = [[40, 40, 60, 60], [35, 45, 65, 55]]  # central: never clamped
    out = gen([_sample(boxes, [1, 2]), _sample([[40, 40, 60, 60]], [0])])
    meta = out.meta
    assert meta.max_targets == 2 and meta.num_groups == 50
    noisy = out.box_query.sigmoid()  # (2, 200, 4) cxcywh
    xyxy = torch.cat([noisy[..., :2] - noisy[..., 2:] / 2, noisy[..., :2] + noisy[..., 2:] / 2], -1)
    gt = torch.tensor(boxes, dtype=torch.float32) / 100
    half = torch.cat([gt[:, 2:] - gt[:, :2]] * 2, -1) / 2
    slots = xyxy[0].view(meta.num_groups, 2, 2, 4)  # group, positive/negative, slot, xyxy
    units = ((slots - gt) / half).abs()
    assert units[:, 0].max() < 1 + 1e-3
    # a negative whose corners crossed (both moved inwards by more than a half-size)
    # is no longer a box: its width or height is clamped; check the others
    sizes = noisy[0].view(meta.num_groups, 2, 2, 4)[:, 1, :, 2:]
    proper = (sizes > 0.01).all(-1)
    assert proper.float().mean() > 0.5
    negatives = units[:, 1][proper]
    assert negatives.min() > 1 - 1e-3 and negatives.max() < 2 + 1e-3
    # both halves are spread over their range
    assert units[:, 0].min() < 0.05 and negatives.max() > 1.9
    image1 = out.label_query[1].view(meta.num_groups, 2, 2, -1)
    assert image1[:, :, 1].abs().sum() == 0 and image1[:, :, 0].abs().sum() > 0


def test_flipped_label_fraction():
    """label_noise_scale 0.5: each copy is redrawn with probability 1/4 and then
    keeps its label with probability 1/num_classes, so 0.25 * (1 - 1/10) change."""
    torch.manual_seed(0)
    gen = _generator(num_classes=10)
    gen.label_embedding.weight.data = torch.arange(11.0)[:, None].repeat(1, 8)  # row i = i
    out = gen([_sample([[10, 10, 50, 50]] * 50, [4] * 50)] * 4)  # 2 groups x 2 x 200 copies
    labels = out.label_query[..., 0].long()
    changed = (labels != 4).float().mean().item()
    n = labels.numel()
    expected = 0.25 * 0.9
    assert abs(changed - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    assert labels.max() < 10  # never the extra row


def test_cap_bounds_queries_and_warns_once():
    gen = _generator(num_dn_queries=100)
    crowded = [_sample([[10, 10, 50, 50]] * 150, list(range(10)) * 15), _sample([], [])]
    with pytest.warns(UserWarning, match='an image has 150 boxes; denoising uses 100'):
        out = gen(crowded)
    assert out.meta.num_queries == 200 and len(out.meta.gt_indices[0]) == 100
    assert len(set(out.meta.gt_indices[0].tolist())) == 100
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert gen(crowded).meta.num_queries == 200
    # without the cap the official rule gives 2 * 150 queries
    assert _generator(max_dn_queries=10_000)(crowded).meta.num_queries == 300


def test_label_embedding_smaller_than_num_classes_is_an_error():
    with pytest.raises(ValueError, match=r'num_classes=91 .*num_label_embeddings=80'):
        _generator(num_classes=91, num_label_embeddings=80)
    assert _generator(num_classes=91).label_embedding.num_embeddings == 92
