"""Parameter counts against the official implementations' numbers (num_classes=91,
without the backbone's normalisation layers, which are frozen buffers there)."""
import pytest
import torch
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.utils import count_parameters


@pytest.mark.parametrize('config, expected', [
    ('configs/detr.py', 41_524_768),
    ('configs/detr_dc5.py', 41_524_768),
    ('configs/deformable_detr.py', 40_069_665),
    ('configs/deformable_detr_refine.py', 40_849_660),
    ('configs/deformable_detr_refine_two_stage.py', 41_181_529),
    ('configs/deformable_detr_single_scale.py', 34_066_593),
    ('configs/deformable_detr_single_scale_dc5.py', 34_066_593),
    # DINO: the official count ties the shared decoder heads (counted once) and has a
    # label embedding of num_classes + 1 = 92 rows
    ('configs/dino_4scale.py', 46_893_182),
    ('configs/dino_5scale.py', 47_255_806),
])
def test_parameter_count_excluding_backbone_norms(config, expected):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 91
    assert count_parameters(build_ours(cfg), exclude_backbone_norms=True) == expected


def test_dcn_config_uses_modulated_deformable_convolution():
    from mmcv.ops import ModulatedDeformConv2dPack
    cfg = Config.fromfile('configs/deformable_detr_refine_two_stage_dcn.py')
    cfg.model.backbone.init_cfg = None
    backbone = build_ours(cfg).backbone
    for stage, expect_dcn in zip(('layer1', 'layer2', 'layer3', 'layer4'),
                                 (False, True, True, True)):
        convs = [getattr(backbone, stage)[i].conv2 for i in range(len(getattr(backbone, stage)))]
        assert all(isinstance(c, ModulatedDeformConv2dPack) == expect_dcn for c in convs), stage
    # DCNv2 adds offset and mask convs: 3 * 3 * 3 channels (2 offsets + 1 mask per tap)
    assert backbone.layer2[0].conv2.conv_offset.out_channels == 27


def test_dc5_first_block_of_the_dilated_stage_is_not_dilated():
    """torchvision's replace_stride_with_dilation: C5 at stride 16, layer4[0] at dilation 1."""
    cfg = Config.fromfile('configs/detr_dc5.py')
    cfg.model.backbone.init_cfg = None
    model = build_ours(cfg)
    layer4 = model.backbone.layer4
    assert layer4[0].conv2.dilation == (1, 1) and layer4[0].conv2.padding == (1, 1)
    assert all(layer4[i].conv2.dilation == (2, 2) for i in range(1, len(layer4)))
    feats = model.backbone(torch.zeros(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (4, 6)


def test_dino_layerwise_heads_count_is_mmdets_plus_the_neck_biases():
    """mmdet 3.3.0's DINO, built from its own config at 91 classes and counted the same way
    (without the backbone norms): ours has the same parameters, plus the 4 x 256 biases of
    the input projections, which mmdet's ChannelMapper convs lack."""
    from mmdet_reference import build_mmdet, mmdet_config
    mmdet_cfg = mmdet_config('dino/dino-4scale_r50_8xb2-12e_coco.py')
    mmdet_cfg.model.bbox_head.num_classes = 91
    expected = count_parameters(build_mmdet(mmdet_cfg), exclude_backbone_norms=True) + 4 * 256
    cfg = Config.fromfile('configs/dino_4scale_layerwise_heads.py')
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 91
    cfg.model.dn_cfg.num_label_embeddings = 91
    assert count_parameters(build_ours(cfg), exclude_backbone_norms=True) == expected
