"""RT-DETR v1/v2: parameter counts against the official table, the forward pass, and its
parts against hand-worked cases, direct formulas and brute force."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_batch, preprocess, randomise_bn
from mmdet_reference import build_ours
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from mmdeform.models.layers import MSDeformAttn
from mmdeform.models.necks.hybrid_encoder import (HybridEncoder, RepVGGBlock,
                                                  sincos_embedding_2d)
from mmdeform.ops.msda_discrete import discrete_deformable_attn
from mmdeform.utils import count_parameters

R18 = 'configs/rtdetr/rtdetrv2_r18vd_120e_coco.py'

# sum(p.numel() for p in model.parameters()) of the official models at 80 classes
# (lyuwenyu/RT-DETR 068dfde, ../shared/reference/rtdetr-facts.md); v1 = v2
OFFICIAL = {
    'rtdetrv2_r18vd_120e_coco': 20_184_464,
    'rtdetrv2_r34vd_120e_coco': 31_441_668,
    'rtdetrv2_r50vd_m_7x_coco': 36_593_772,
    'rtdetrv2_r50vd_6x_coco': 42_891_372,
    'rtdetrv2_r101vd_6x_coco': 76_556_268,
    'rtdetr_r18vd_dec3_6x_coco': 20_184_464,
    'rtdetr_r34vd_dec4_6x_coco': 31_441_668,
    'rtdetr_r50vd_m_6x_coco': 36_593_772,
    'rtdetr_r50vd_6x_coco': 42_891_372,
    'rtdetr_r101vd_6x_coco': 76_556_268,
}
# The official R50/R101 hold their frozen backbone BN as FrozenBatchNorm2d buffers; ours,
# as mmdet's ResNet, as parameters with requires_grad=False: exactly these many more.
FROZEN_BN = {'r18': 0, 'r34': 0, 'r50': 53_248, 'r101': 105_472}


def _config(path: str) -> Config:
    cfg = Config.fromfile(path)
    cfg.model.bbox_head.num_classes = 80
    return cfg


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_parameter_count_equals_the_official_plus_frozen_bn(name):
    model = build_ours(_config(f'configs/rtdetr/{name}.py'))
    frozen = sum(p.numel() for m in model.backbone.modules() if isinstance(m, _BatchNorm)
                 for p in m.parameters() if not p.requires_grad)
    depth = next(d for d in ('r101', 'r18', 'r34', 'r50') if f'_{d}vd' in name)
    assert frozen == FROZEN_BN[depth]
    assert _numel(model) == OFFICIAL[name] + frozen
    # what get_flops.py prints as the official count
    assert count_parameters(model, exclude_backbone_norms=True) == OFFICIAL[name]


def test_r18_parameter_split_equals_the_official():
    model = build_ours(_config(R18))
    encoder, input_proj = model.neck[0], model.neck[1]
    assert _numel(model.backbone) == 11_199_968
    assert _numel(encoder) == 4_965_120
    assert _numel(encoder.input_proj) == 230_912
    assert _numel(encoder.encoder) == 789_760  # AIFI
    ccfm = [encoder.lateral_convs, encoder.fpn_blocks, encoder.downsample_convs,
            encoder.pan_blocks]
    assert sum(_numel(m) for m in ccfm) == 3_944_448
    head = model.bbox_head
    decoder = (_numel(input_proj) + _numel(model.decoder) + _numel(head) +
               _numel(model.memory_trans_fc) + _numel(model.memory_trans_norm) +
               _numel(model.dn_query_generator))
    assert decoder == 4_019_376
    assert _numel(input_proj) == 198_144
    assert [_numel(layer) for layer in model.decoder.layers] == [995_872] * 3
    assert _numel(model.decoder.ref_point_head) == 133_888  # query_pos_head
    per_layer = sum(_numel(head.cls_branches[i]) + _numel(head.reg_branches[i])
                    for i in range(3))
    assert per_layer == 459_516
    enc_output = (_numel(model.memory_trans_fc) + _numel(model.memory_trans_norm) +
                  _numel(head.cls_branches[3]) + _numel(head.reg_branches[3]))
    assert enc_output == 219_476
    assert _numel(model.dn_query_generator) == 20_736


@pytest.mark.parametrize('depth, extra', [(18, 4_224), (34, 4_224), (50, 0)])
def test_presnet_is_resnet_v1d_plus_the_stage1_projection(depth, extra):
    from mmdet.models.backbones import ResNetV1d

    from mmdeform.models.backbones import PResNet
    ours, mmdet = PResNet(depth=depth), ResNetV1d(depth=depth)
    assert _numel(ours) - _numel(mmdet) == extra
    shortcut = ours.layer1[0].downsample
    assert shortcut is not None and shortcut[1].kernel_size == (1, 1)  # named as mmdet's
    ours.eval()  # mmdet's ResNet.train returns None
    mmdet.eval()
    x = torch.randn(1, 3, 64, 64)
    assert [f.shape for f in ours(x)] == [f.shape for f in mmdet(x)]


# ----------------------------------------------------------------- the whole model
@pytest.fixture(scope='module')
def r18():
    torch.manual_seed(0)
    model = build_ours(_config(R18))
    model.init_weights()
    with torch.no_grad():  # the box branches start at zero: give them weights
        for branch in model.bbox_head.reg_branches:
            branch.layers[-1].weight.normal_(0, 0.01)
    return model


def test_r18_loss_and_predict(r18):
    model = copy.deepcopy(r18).train()
    inputs, samples = preprocess(model, *make_batch(sizes=((128, 160), (96, 128)),
                                                    boxes_per_image=[3, 1]), training=True)
    losses = model.loss(inputs, samples)
    # 3 losses x (3 layers + the proposals + 3 denoising layers), as the official v2
    assert len(losses) == 21
    assert {'enc_loss_cls', 'dn_loss_cls', 'd1.dn_loss_iou', 'loss_cls'} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.layer1[0].downsample[1].weight.grad.abs().sum() > 0
    assert model.dn_query_generator.label_embedding.weight.grad.abs().sum() > 0

    model.eval()
    inputs, samples = preprocess(model, *make_batch(sizes=((128, 128), (128, 128))))
    with torch.no_grad():
        results = model.predict(inputs, samples)
    for result in results:
        pred = result.pred_instances
        assert pred.bboxes.shape == (300, 4) and pred.labels.max() < 80
        assert (pred.bboxes >= 0).all() and (pred.bboxes <= 128).all()
        assert (pred.scores[:-1] >= pred.scores[1:]).all()


def test_anchors_follow_the_input_size(r18):
    """No cache: after a 192 x 128 input, a 128 x 160 input gives what a fresh copy gives."""
    model, fresh = copy.deepcopy(r18).eval(), copy.deepcopy(r18).eval()
    with torch.no_grad():
        model(*preprocess(model, *make_batch(sizes=((192, 128), ))), mode='tensor')
        inputs, samples = preprocess(model, *make_batch(sizes=((128, 160), ), seed=3))
        out = model(inputs, samples, mode='tensor')
        expected = fresh(inputs, samples, mode='tensor')
    assert torch.equal(out.all_bbox_preds, expected.all_bbox_preds)
    assert torch.equal(out.all_cls_scores, expected.all_cls_scores)


def test_upsampling_is_nearest_2x_and_odd_maps_work():
    """The top-down path upsamples by nearest 2x (checked against repeat_interleave); maps of
    an input that is no multiple of 32 (13, 7, 4 from 100 x 100) are brought to the lower
    level's size, where the official model fails."""
    torch.manual_seed(0)
    encoder = HybridEncoder(in_channels=[8, 8, 8], hidden_dim=16, num_heads=2,
                            feedforward_channels=32, expansion=0.5).eval()
    feats = [torch.randn(1, 8, s, s) for s in (16, 8, 4)]
    calls = []
    interpolate = F.interpolate

    def spy(x, *args, **kwargs):
        out = interpolate(x, *args, **kwargs)
        calls.append((x, out))
        return out

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, 'interpolate', spy)
        encoder(feats)
        outs = encoder([torch.randn(1, 8, s, s) for s in (13, 7, 4)])
    for x, out in calls[:2]:
        torch.testing.assert_close(out, x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert [o.shape[-1] for o in outs] == [13, 7, 4]


def test_more_queries_than_anchors_names_both_numbers(r18):
    model = copy.deepcopy(r18).eval()
    inputs, samples = preprocess(model, *make_batch(sizes=((64, 64), )))
    # 8 x 8 + 4 x 4 + 2 x 2 anchors
    with pytest.raises(ValueError, match=r'num_queries=300 .* only 84 feature cells .*'
                       r'one anchor each'):
        model.predict(inputs, samples)


def test_anchors_and_valid_mask_worked_case(r18):
    """Centres ``(i + 0.5) / size``, sizes ``0.05 * 2^level``, logits; anchors with a value
    outside (0.01, 0.99) are inf and their memory is zeroed."""
    shapes = [(1, 3), (2, 1), (1, 1), (1, 1), (1, 1), (1, 1)]
    expected = [(1 / 6, 1 / 2, .05, .05), (1 / 2, 1 / 2, .05, .05), (5 / 6, 1 / 2, .05, .05),
                (1 / 2, 1 / 4, .1, .1), (1 / 2, 3 / 4, .1, .1), (.5, .5, .2, .2),
                (.5, .5, .4, .4), (.5, .5, .8, .8), (.5, .5, 1.6, 1.6)]
    logit = [[math.log(v / (1 - v)) for v in box] for box in expected[:-1]]
    memory = torch.randn(1, 9, 256)
    out_memory, anchors = r18.encoder_proposals(memory, None, shapes)
    torch.testing.assert_close(anchors[0, :8], torch.tensor(logit), rtol=0, atol=1e-6)
    assert torch.isinf(anchors[0, 8]).all()  # 1.6 > 0.99
    transform = torch.nn.Sequential(r18.memory_trans_fc, r18.memory_trans_norm)
    torch.testing.assert_close(out_memory[0, :8], transform(memory[0, :8]))
    torch.testing.assert_close(out_memory[0, 8], transform(torch.zeros(256)))

    # a 51-wide level: 0.5 / 51 < 0.01 < 1.5 / 51, and 50.5 / 51 > 0.99 > 49.5 / 51
    _, anchors = r18.encoder_proposals(torch.randn(1, 51, 256), None, [(1, 51)])
    invalid = torch.isinf(anchors[0]).any(-1)
    assert invalid.tolist() == [True] + [False] * 49 + [True]


def _hand_anchors(level_shapes):
    """Loops: cell ``(y, x)`` of level ``l`` (``h x w``) is ``((x + .5) / w, (y + .5) / h,
    .05 * 2^l, .05 * 2^l)``; its logit, or None when a value is outside (0.01, 0.99)."""
    out = []
    for lvl, (h, w) in enumerate(level_shapes):
        for y in range(h):
            for x in range(w):
                box = ((x + .5) / w, (y + .5) / h, .05 * 2**lvl, .05 * 2**lvl)
                out.append([math.log(v / (1 - v)) for v in box]
                           if all(.01 < v < .99 for v in box) else None)
    return out


@pytest.mark.parametrize('size,levels,invalid', [
    ((96, 160), [(12, 20), (6, 10), (3, 5)], 0),
    ((128, 224), [(16, 28), (8, 14), (4, 7)], 0),
    # level 0 is 52 wide: its first and last columns (0.5 / 52 < 0.01) are invalid
    ((96, 416), [(12, 52), (6, 26), (3, 13)], 24)])
def test_anchors_and_valid_mask_at_non_640_inputs(r18, size, levels, invalid):
    """The anchors of a forward pass at inputs other than 640 x 640, against loops: the
    model makes them from the level shapes of each input (no cache; the official model
    caches 640's 8,400 in evaluation), zeroes the memory of the invalid ones."""
    model = copy.deepcopy(r18).eval()
    seen = []
    proposals = model.encoder_proposals

    def spy(*args):
        out = proposals(*args)
        seen.append(out)
        return out

    model.encoder_proposals = spy
    inputs, samples = preprocess(model, *make_batch(sizes=(size, )))
    with torch.no_grad():
        model.predict(inputs, samples)
        out_memory, anchors = seen[-1]
        expected = _hand_anchors(levels)
        assert anchors.shape == (1, len(expected), 4)
        is_invalid = torch.tensor([e is None for e in expected])
        assert int(is_invalid.sum()) == invalid
        assert torch.isinf(anchors[0, is_invalid]).all()
        # the model makes its anchors in float32: log(p / (1 - p)) of float32 positions,
        # |logit| <= 4.6, is a few float32 ulps (~5e-7 each) from the float64 loops
        torch.testing.assert_close(anchors[0, ~is_invalid],
                                   torch.tensor([e for e in expected if e is not None]),
                                   rtol=0, atol=1e-5)
        zero = model.memory_trans_norm(model.memory_trans_fc(torch.zeros(256)))
        torch.testing.assert_close(out_memory[0, is_invalid], zero.expand(invalid, -1))


# ------------------------------------------------------------------------- parts
def test_position_embedding_hand_worked_2x3():
    """dims 8: frequencies 1 and 1/100; cell k of the row-major 2 x 3 map gets
    ``a = k // 2``, ``b = k % 2`` (the official meshgrid(w, h, indexing='ij'))."""
    rows = []
    for a, b in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]:
        rows.append([math.sin(a), math.sin(a / 100), math.cos(a), math.cos(a / 100),
                     math.sin(b), math.sin(b / 100), math.cos(b), math.cos(b / 100)])
    torch.testing.assert_close(sincos_embedding_2d(2, 3, 8), torch.tensor(rows))


def test_position_embedding_square_map_first_half_is_the_row():
    emb = sincos_embedding_2d(3, 3, 4)  # cell k = 3 y + x
    ys, xs = torch.arange(9) // 3, torch.arange(9) % 3
    torch.testing.assert_close(emb, torch.stack([ys.sin(), ys.cos(), xs.sin(), xs.cos()], 1).float())


def test_repvgg_fusion_equals_the_two_branches():
    block = RepVGGBlock(6).eval()
    randomise_bn(block)
    block.double()  # the fusion is exact algebra: float64 leaves only rounding (~1e-15)
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = F.silu(block.conv1.bn(block.conv1.conv(x)) + block.conv2.bn(block.conv2.conv(x)))
        block.switch_to_deploy()
        fused = block(x)
    assert not hasattr(block, 'conv1') and block.conv.kernel_size == (3, 3)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)


def test_hybrid_encoder_deploy_equals_unfused():
    """In float64, so that the random BN statistics' large activations (~1e3) leave no
    float32 rounding to tolerate: the fusion itself is exact."""
    torch.manual_seed(0)
    encoder = HybridEncoder(in_channels=[16, 24, 32], hidden_dim=32, num_heads=4,
                            feedforward_channels=64, expansion=0.5).eval()
    randomise_bn(encoder)
    encoder.double()
    feats = [torch.randn(1, c, s, s, dtype=torch.float64) for c, s in ((16, 16), (24, 8), (32, 4))]
    with torch.no_grad():
        expected = encoder(feats)
        encoder.switch_to_deploy()
        fused = encoder(feats)
    assert not any(hasattr(m, 'conv1') for m in encoder.modules() if isinstance(m, RepVGGBlock))
    for a, b in zip(fused, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def _brute_force_discrete(value, shapes, locations, weights):
    """Loops: each point reads cell (int(x W + 0.5), int(y H + 0.5)) clamped per axis."""
    b_, nq, m_, lv, k_, _ = locations.shape
    d = value.shape[-1]
    out = torch.zeros(b_, nq, m_, d, dtype=torch.float64)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    for b in range(b_):
        for q in range(nq):
            for m in range(m_):
                for lvl, (h, w) in enumerate(shapes):
                    for k in range(k_):
                        x, y = locations[b, q, m, lvl, k].tolist()
                        col = min(max(int(x * w + 0.5), 0), w - 1)
                        row = min(max(int(y * h + 0.5), 0), h - 1)
                        cell = value[b, starts[lvl] + row * w + col, m].double()
                        out[b, q, m] += weights[b, q, m, lvl, k].double() * cell
    return out.flatten(2)


def test_discrete_sampling_equals_brute_force():
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 2)]  # non-square: x is clamped to W - 1, y to H - 1
    value = torch.randn(2, 16, 2, 3)
    locations = torch.rand(2, 5, 2, 2, 3, 2) * 1.4 - 0.2  # some outside [0, 1]
    weights = torch.rand(2, 5, 2, 2, 3)
    spatial = torch.tensor(shapes)
    start = torch.tensor([0, 12])
    out = discrete_deformable_attn(value, spatial, start, locations, weights)
    torch.testing.assert_close(out.double(), _brute_force_discrete(value, shapes, locations,
                                                                   weights), rtol=0, atol=1e-6)


def test_discrete_attention_freezes_the_offsets():
    attn = MSDeformAttn(32, 4, 2, [2, 3], sampling='discrete')
    assert not attn.sampling_offsets.weight.requires_grad
    query, value = torch.randn(1, 4, 32), torch.randn(1, 20, 32, requires_grad=True)
    refs = torch.rand(1, 4, 2, 4) * 0.5 + 0.25
    out = attn(query, value, refs, torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16]))
    out.sum().backward()
    assert value.grad.abs().sum() > 0 and attn.attention_weights.weight.grad is not None


def _official_v2_attention(attn, query, value, refs, shapes):
    """RT-DETRv2's per-level point split written out: one softmax over all points, point p
    of level l moved by offset / K_l * wh * offset_scale, bilinear grid_sample per level."""
    b, nq, _ = query.shape
    m, points = attn.num_heads, attn.num_points_list
    v = attn.value_proj(value).view(b, -1, m, attn.embed_dims // m)
    offsets = attn.sampling_offsets(query).view(b, nq, m, sum(points), 2)
    weights = attn.attention_weights(query).view(b, nq, m, sum(points)).softmax(-1)
    scale = torch.tensor([1 / p for p in points for _ in range(p)],
                         dtype=offsets.dtype).view(-1, 1)
    locs = refs[:, :, None, :, :2] + offsets * scale * refs[:, :, None, :, 2:] * attn.offset_scale
    grids = (2 * locs - 1).split(points, dim=3)
    values = v.split([h * w for h, w in shapes], dim=1)
    sampled = []
    for (h, w), val, grid in zip(shapes, values, grids):
        val = val.permute(0, 2, 3, 1).reshape(b * m, -1, h, w)
        grid = grid.permute(0, 2, 1, 3, 4).flatten(0, 1)
        sampled.append(F.grid_sample(val, grid, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))
    w_ = weights.permute(0, 2, 1, 3).reshape(b * m, 1, nq, sum(points))
    out = (torch.cat(sampled, -1) * w_).sum(-1).view(b, -1, nq).transpose(1, 2)
    return attn.output_proj(out)


@pytest.mark.parametrize('points', [[1, 2, 3], [4, 4, 4]])
def test_per_level_points_equal_the_official_split(points):
    torch.manual_seed(0)
    attn = MSDeformAttn(32, 4, 3, points, offset_scale=0.5)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.1)
        attn.attention_weights.weight.normal_(0, 0.1)
    attn.double()  # float64: the two orders of summation differ only by rounding
    shapes = [(6, 5), (3, 3), (2, 1)]
    query = torch.randn(2, 7, 32, dtype=torch.float64)
    value = torch.randn(2, 30 + 9 + 2, 32, dtype=torch.float64)
    refs = torch.rand(2, 7, 1, 4, dtype=torch.float64) * 0.6 + 0.2
    out = attn(query, value, refs.expand(-1, -1, 3, -1), torch.tensor(shapes),
               torch.tensor([0, 30, 39]))
    torch.testing.assert_close(out, _official_v2_attention(attn, query, value, refs, shapes),
                               rtol=0, atol=1e-12)


def test_decoder_eval_idx_stops_early(r18):
    """R50-m trains 6 layers and evaluates 3: in evaluation the decoder returns the first
    eval_idx + 1 layers, the same as the training run's."""
    from mmdeform.models.layers import DinoDecoder
    torch.manual_seed(0)
    decoder = DinoDecoder(num_layers=4, query_pos='box', final_norm=False, eval_idx=1,
                          num_levels=1, embed_dims=32, num_heads=4, feedforward_channels=64,
                          dropout=0.0)
    branches = [torch.nn.Linear(32, 4) for _ in range(4)]
    args = (torch.randn(1, 5, 32), None, torch.randn(1, 16, 32), None,
            torch.rand(1, 5, 4) * 0.5 + 0.25, torch.tensor([[4, 4]]), torch.tensor([0]),
            torch.ones(1, 1, 2), branches)
    hidden_train, refs_train = decoder.train()(*args)
    hidden_eval, refs_eval = decoder.eval()(*args)
    assert hidden_train.shape[0] == 4 and hidden_eval.shape[0] == 2 and len(refs_eval) == 3
    torch.testing.assert_close(hidden_eval, hidden_train[:2])


# ---------------------------------------------------------------- varifocal loss
def _direct_vfl(logits, labels, ious, alpha=0.75, gamma=2.0):
    """The official loss_labels_vfl, summed and divided by the number of boxes later."""
    num_classes = logits.shape[-1]
    p = logits.sigmoid()
    t = torch.zeros_like(logits)
    matched = labels < num_classes
    t[matched, labels[matched]] = 1.0
    s = ious[:, None] * t
    weight = alpha * p.detach()**gamma * (1 - t) + s
    bce = -(s * torch.log(p) + (1 - s) * torch.log(1 - p))
    return (bce * weight).sum()


def _vfl_case(zero_iou=False):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    labels = torch.tensor([2, 5, 0, 5, 4, 5])  # 5: no object
    ious = torch.tensor([0.7, 0.0, 0.0 if zero_iou else 0.3, 0.0, 0.9, 0.0])
    return logits, labels, ious


def test_varifocal_loss_equals_the_direct_formula():
    from mmdeform.models.losses import DetrVarifocalLoss
    logits, labels, ious = _vfl_case(zero_iou=True)
    ours_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = DetrVarifocalLoss()(ours_in, labels, ious, avg_factor=torch.tensor(3.0))
    expected = _direct_vfl(ref_in, labels, ious) / 3.0
    torch.testing.assert_close(ours, expected)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_mmdet_varifocal_loss_is_not_the_official_one():
    """mmdet's VarifocalLoss gives the same value while every matched IoU is > 0, but its
    weight is not detached (other gradients), and a matched query with IoU 0 counts as a
    negative there (other value): so RT-DETR uses DetrVarifocalLoss."""
    from mmdet.models.losses import VarifocalLoss
    mmdet_vfl = VarifocalLoss(alpha=0.75, gamma=2.0, iou_weighted=True, reduction='sum')

    def mmdet_loss(logits, labels, ious):
        target = torch.zeros_like(logits)
        matched = labels < logits.shape[-1]
        target[matched, labels[matched]] = ious[matched]
        return mmdet_vfl(logits, target)

    logits, labels, ious = _vfl_case()
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    theirs, direct = mmdet_loss(a, labels, ious), _direct_vfl(b, labels, ious)
    torch.testing.assert_close(theirs, direct)
    theirs.backward()
    direct.backward()
    assert not torch.allclose(a.grad, b.grad, atol=1e-4)

    logits, labels, ious = _vfl_case(zero_iou=True)
    assert not torch.allclose(mmdet_loss(logits, labels, ious), _direct_vfl(logits, labels, ious))
