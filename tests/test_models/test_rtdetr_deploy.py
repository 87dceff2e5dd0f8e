"""RT-DETR's switch_to_deploy: the fused model against the unfused one (float64, so that
only the fusion's own rounding is left), what is left of BatchNorm and RepVGG
branches, eval-only afterwards, and idempotence."""
import copy

import pytest
import torch
from helpers import make_batch, preprocess, randomise_bn
from mmdet_reference import build_ours
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from mmdeform.models.necks.hybrid_encoder import RepVGGBlock

R18 = 'configs/rtdetr/rtdetrv2_r18vd_120e_coco.py'


@pytest.fixture(scope='module')
def r18_frozen_stem():
    """v2-R18 with a frozen stem and stage 1 (BN requires_grad=False, norm_eval) as the
    R50/R101 configs have, random BN statistics everywhere, box branches off zero."""
    cfg = Config.fromfile(R18)
    cfg.model.bbox_head.num_classes = 80
    cfg.model.backbone.frozen_stages = 1
    cfg.model.backbone.norm_cfg = dict(type='BN', requires_grad=False)
    cfg.model.backbone.norm_eval = True
    torch.manual_seed(0)
    model = build_ours(cfg)
    model.init_weights()
    randomise_bn(model)
    with torch.no_grad():
        for branch in model.bbox_head.reg_branches:
            branch.layers[-1].weight.normal_(0, 0.01)
    return model.eval()


def _outputs(model, inputs, samples):
    with torch.no_grad():
        tensors = model(inputs, samples, mode='tensor')
        results = model.predict(inputs, copy.deepcopy(samples))
    return tensors, [r.pred_instances for r in results]


def test_deployed_equals_unfused_in_float64(r18_frozen_stem):
    model = copy.deepcopy(r18_frozen_stem).double()
    bn_total = sum(isinstance(m, _BatchNorm) for m in model.modules())
    blocks = sum(isinstance(m, RepVGGBlock) for m in model.modules())
    inputs, samples = preprocess(model, *make_batch(sizes=((128, 160), (128, 160))))
    inputs = inputs.double()
    ref_tensors, ref_preds = _outputs(model, inputs, samples)

    counts = model.switch_to_deploy()
    # R18 v2 (depth_mult 1.0): 3 blocks in each of the 4 CSPRep layers; every other BN
    # follows a conv (backbone, encoder, the decoder's input projection)
    assert blocks == 12
    assert counts == dict(repvgg_blocks=12, conv_bn=bn_total - 2 * blocks, bn_left=0)
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert all(not hasattr(m, 'conv1') and m.conv.kernel_size == (3, 3)
               for m in model.modules() if isinstance(m, RepVGGBlock))
    assert model.backbone.stem[1].__class__ is torch.nn.Identity  # the frozen stem's BN too
    assert model.backbone.stem[0].bias is not None
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs
               if w.shape[-1] > 1)  # 1x1 kernels are contiguous in both layouts

    tensors, preds = _outputs(model, inputs, samples)
    # float64: the fusion is exact algebra, the differences are float64 rounding (~1e-13)
    torch.testing.assert_close(tensors.all_cls_scores, ref_tensors.all_cls_scores,
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(tensors.all_bbox_preds, ref_tensors.all_bbox_preds,
                               rtol=0, atol=1e-9)
    for pred, ref in zip(preds, ref_preds):
        assert torch.equal(pred.labels, ref.labels)
        torch.testing.assert_close(pred.scores, ref.scores, rtol=0, atol=1e-9)
        torch.testing.assert_close(pred.bboxes, ref.bboxes, rtol=0, atol=1e-7)  # pixels


def test_deployed_is_eval_only_and_idempotent(r18_frozen_stem):
    model = copy.deepcopy(r18_frozen_stem)
    first = model.switch_to_deploy()
    assert first['repvgg_blocks'] == 12 and first['conv_bn'] > 0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.switch_to_deploy() == dict(repvgg_blocks=0, conv_bn=0, bn_left=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(RuntimeError, match=r'RTDETR was fused by switch_to_deploy\(\).*eval-only'):
        model.train()
    model.eval()  # still allowed


def test_deployed_float32_within_1e4(r18_frozen_stem):
    """What a user gets in float32: the folded weights round differently from conv then
    BN (seen: logits 4.5e-6 apart, boxes 2.4e-7, at 2 x 128 x 160); 1e-4 as the
    ONNX checks allow."""
    model = copy.deepcopy(r18_frozen_stem)
    inputs, samples = preprocess(model, *make_batch(sizes=((96, 160), ), seed=2))
    with torch.no_grad():
        ref = model(inputs, samples, mode='tensor')
        model.switch_to_deploy()
        out = model(inputs, samples, mode='tensor')
    torch.testing.assert_close(out.all_cls_scores, ref.all_cls_scores, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.all_bbox_preds, ref.all_bbox_preds, rtol=0, atol=1e-4)


def test_a_norm_not_right_after_its_conv_is_refused(r18_frozen_stem):
    """mmcv's fuse_conv_bn pairs a BN with the conv registered before it, whatever the
    ConvModule's order: an order with the activation in between is refused by name."""
    model = copy.deepcopy(r18_frozen_stem)
    model.neck[0].lateral_convs[0].order = ('conv', 'act', 'norm')
    with pytest.raises(ValueError, match=r"neck\.0\.lateral_convs\.0 has order \('conv', 'act', "
                       r"'norm'\); only a norm right after the conv can be folded"):
        model.switch_to_deploy()
