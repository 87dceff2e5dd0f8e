"""The DAT detector configs: backbone wiring and the official DAT optimiser settings."""
import pytest
import torch
from mmdet_reference import build_ours
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper


@pytest.mark.parametrize('config, channels', [
    ('configs/dat/deformable_detr_refine_two_stage_dat_pp_tiny.py', [128, 256, 512]),
])
def test_dat_detector_optimiser_groups(config, channels):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    model = build_ours(cfg)
    assert model.backbone.num_features == channels
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = {id(p): g for g in optim.optimizer.param_groups for p in g['params']}
    named = dict(model.named_parameters())
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay

    def setting(name):
        g = groups[id(named[name])]
        return g['lr'], g['weight_decay']

    # the official DAT detection configs: wd 0.05 in the backbone, none on norms and tables
    assert setting('backbone.stages.2.attns.1.proj_q.weight') == (base_lr * 0.1, 0.05)
    assert setting('backbone.patch_proj.0.weight') == (base_lr * 0.1, 0.05)
    for name in ('backbone.stages.2.layer_norms.3.norm.weight', 'backbone.norms.3.norm.bias',
                 'backbone.stages.2.attns.1.conv_offset.1.norm.weight',
                 'backbone.stages.1.attns.3.rpe_table', 'backbone.stages.2.attns.16.rpb',
                 'backbone.stages.0.attns.0.rpb'):
        assert setting(name) == (base_lr * 0.1, 0.0), name
    # the detector keeps its own recipe
    assert setting('decoder.layers.0.norms.0.weight') == (base_lr, base_wd)
    assert setting('neck.convs.0.conv.weight') == (base_lr, base_wd)
    assert setting('encoder.layers.0.self_attn.sampling_offsets.weight')[0] == base_lr * 0.1
    every_table = [n for n in named if n.endswith(('rpe_table', 'rpb'))]
    assert all(setting(n)[1] == 0.0 for n in every_table) and len(every_table) == 26
    with torch.no_grad():
        outs = model.backbone(torch.zeros(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == channels
