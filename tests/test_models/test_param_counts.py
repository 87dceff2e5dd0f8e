"""Parameter counts against the official implementations' numbers."""
import pytest
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.utils import count_parameters


@pytest.mark.parametrize('config, expected', [
    ('configs/detr.py', 41_524_768),
    ('configs/detr_dc5.py', 41_524_768),
])
def test_parameter_count_excluding_backbone_norms(config, expected):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 91
    assert count_parameters(build_ours(cfg), exclude_backbone_norms=True) == expected


def test_dc5_first_block_of_the_dilated_stage_is_not_dilated():
    """torchvision's replace_stride_with_dilation: C5 at stride 16, layer4[0] at dilation 1."""
    import torch
    cfg = Config.fromfile('configs/detr_dc5.py')
    cfg.model.backbone.init_cfg = None
    model = build_ours(cfg)
    layer4 = model.backbone.layer4
    assert layer4[0].conv2.dilation == (1, 1) and layer4[0].conv2.padding == (1, 1)
    assert all(layer4[i].conv2.dilation == (2, 2) for i in range(1, len(layer4)))
    feats = model.backbone(torch.zeros(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (4, 6)
