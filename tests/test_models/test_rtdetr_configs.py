"""RT-DETR's training recipe in our configs against the official formulas: the EMA ramp,
the warm-up, the per-model lr / weight-decay groups, the augmentation pipelines and stop."""
import logging
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from mmdet_reference import build_ours
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

V2_R50 = 'configs/rtdetr/rtdetrv2_r50vd_6x_coco.py'


def _ema_hook(path):
    cfg = Config.fromfile(path)
    hooks = [h for h in cfg.custom_hooks if h.get('type') == 'EMAHook']
    assert len(hooks) == 1, cfg.custom_hooks
    return hooks[0]


@pytest.mark.parametrize('path,top,gamma', [
    (V2_R50, 0.9999, 2000),
    # the CPU demo: the same form, scaled to a run of 2,250 iterations
    ('configs/shapes/rtdetr_shapes.py', 0.999, 200)])
def test_ema_hook_gives_the_official_decay_ramp(path, top, gamma):
    """Official: at update n (from 1), ema = d_n ema + (1 - d_n) model with
    d_n = 0.9999 (1 - exp(-n / 2000)), on every float parameter and buffer. mmdet's
    ExpMomentumEMA as configured: the same from its second update on (its first copies)."""
    from mmdet.models.layers import ExpMomentumEMA
    hook = _ema_hook(path)
    assert hook.ema_type == 'ExpMomentumEMA' and hook.update_buffers
    model = nn.BatchNorm1d(3)
    ema = ExpMomentumEMA(model, momentum=hook.momentum, gamma=hook.gamma,
                         update_buffers=hook.update_buffers)
    g = torch.Generator().manual_seed(0)
    expected = None
    for n in range(1, 7):
        with torch.no_grad():
            model.weight.copy_(torch.randn(3, generator=g) * 100)
            model.running_mean.copy_(torch.randn(3, generator=g) * 100)
        ema.update_parameters(model)
        state = torch.stack([model.weight.detach(), model.running_mean])
        if expected is None:
            expected = state.clone()
        else:
            d = top * (1 - math.exp(-n / gamma))
            expected = d * expected + (1 - d) * state
        got = torch.stack([ema.module.weight, ema.module.running_mean])
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_warm_up_is_the_official_linear_warm_up():
    """Official LinearWarmup: lr = base * min(1, (k + 1) / 2000) at iteration k."""
    from mmengine.optim.scheduler import LinearLR
    (cfg, ) = Config.fromfile(V2_R50).param_scheduler
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-4)
    kwargs = {k: v for k, v in cfg.items() if k != 'type'}
    scheduler = LinearLR(optimizer, **kwargs)
    for k in range(2010):
        expected = 1e-4 * min(1.0, (k + 1) / 2000)
        assert optimizer.param_groups[0]['lr'] == pytest.approx(expected, rel=1e-9), k
        optimizer.step()
        scheduler.step()


def _groups(config):
    cfg = Config.fromfile(config)
    model = build_ours(cfg)
    with DefaultScope.overwrite_default_scope('mmdeform'):
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    by_id = {id(p): (group['lr'], group['weight_decay'])
             for group in optimizer.param_groups for p in group['params']}
    return {name: by_id.get(id(p)) for name, p in model.named_parameters()}


@pytest.mark.parametrize('config, expected', [
    # official v2 R34: backbone lr 5e-5 (norms without decay); encoder/decoder norms and
    # biases without decay
    ('configs/rtdetr/rtdetrv2_r34vd_120e_coco.py', {
        'backbone.layer2.0.conv1.weight': (5e-5, 1e-4),
        'backbone.layer2.0.bn1.weight': (5e-5, 0.0),
        'backbone.stem.1.bias': (5e-5, 0.0),
        'neck.0.input_proj.0.conv.weight': (1e-4, 1e-4),
        'neck.0.input_proj.0.bn.weight': (1e-4, 0.0),
        'neck.0.encoder.0.layers.0.norms.0.weight': (1e-4, 0.0),
        'neck.0.encoder.0.layers.0.self_attn.attn.in_proj_bias': (1e-4, 1e-4),
        'decoder.layers.0.cross_attn.sampling_offsets.bias': (1e-4, 0.0),
        'bbox_head.cls_branches.0.bias': (1e-4, 0.0),
        'memory_trans_fc.weight': (1e-4, 1e-4),
    }),
    # official v2 R50: backbone (its BN frozen) at 1e-5; norms without decay, biases with
    ('configs/rtdetr/rtdetrv2_r50vd_6x_coco.py', {
        'backbone.layer2.0.conv1.weight': (1e-5, 1e-4),
        'backbone.layer2.0.bn1.weight': None,
        'backbone.stem.0.weight': None,
        'neck.1.convs.0.bn.bias': (1e-4, 0.0),
        'decoder.layers.0.norms.2.weight': (1e-4, 0.0),
        'bbox_head.cls_branches.0.bias': (1e-4, 1e-4),
    }),
    # official v1 R101: one group, the backbone at 1e-6; decay on everything else
    ('configs/rtdetr/rtdetr_r101vd_6x_coco.py', {
        'backbone.layer3.0.conv2.weight': (1e-6, 1e-4),
        'decoder.layers.0.norms.2.weight': (1e-4, 1e-4),
        'bbox_head.cls_branches.0.bias': (1e-4, 1e-4),
    }),
])
def test_optimizer_groups_follow_the_official_recipe(config, expected):
    groups = _groups(config)
    for name, value in expected.items():
        got = groups[name]
        if value is None:  # frozen: not in the optimizer
            assert got is None, name
        else:
            assert got == pytest.approx(value, rel=1e-9), name


def test_batch_augment_switch_hook():
    from mmdeform.engine import BatchAugmentSwitchHook
    model = SimpleNamespace(data_preprocessor=SimpleNamespace(batch_augments=[object()]))
    runner = SimpleNamespace(model=model, epoch=70, logger=logging.getLogger('test'))
    hook = BatchAugmentSwitchHook(switch_epoch=71)
    hook.before_train_epoch(runner)
    assert model.data_preprocessor.batch_augments is not None
    runner.epoch = 71
    hook.before_train_epoch(runner)
    assert model.data_preprocessor.batch_augments is None


@pytest.mark.parametrize('config, stop, multi_scale', [
    ('configs/rtdetr/rtdetrv2_r18vd_120e_coco.py', 117, False),
    ('configs/rtdetr/rtdetrv2_r34vd_120e_coco.py', 117, True),
    ('configs/rtdetr/rtdetrv2_r50vd_m_7x_coco.py', 81, True),
    ('configs/rtdetr/rtdetrv2_r50vd_6x_coco.py', 71, True),
    ('configs/rtdetr/rtdetr_r50vd_6x_coco.py', None, True),
])
def test_augmentation_stop_epochs(config, stop, multi_scale):
    cfg = Config.fromfile(config)
    switches = {h.type: h.switch_epoch for h in cfg.custom_hooks if 'switch_epoch' in h}
    if stop is None:
        assert switches == {}
    else:
        assert switches == {'PipelineSwitchHook': stop, 'BatchAugmentSwitchHook': stop}
        assert cfg.train_cfg.max_epochs > stop
    assert (cfg.model.data_preprocessor.get('batch_augments') is not None) == multi_scale


@pytest.mark.parametrize('pipeline', ['train_pipeline', 'final_train_pipeline', 'test_pipeline'])
def test_pipelines_give_640_inputs(tmp_path, pipeline):
    """mmdet's transforms as configured run on an image with boxes: 640 x 640 inputs, boxes
    inside them."""
    cfg = Config.fromfile(V2_R50)
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    path = str(tmp_path / 'image.png')
    cv2.imwrite(path, image)
    with DefaultScope.overwrite_default_scope('mmdeform'):
        transform = Compose(cfg[pipeline])
    for seed in range(6):
        np.random.seed(seed)
        out = transform(dict(img_path=path, img_id=0, instances=[
            dict(bbox=[50.0, 60.0, 200.0, 220.0], bbox_label=3, ignore_flag=0),
            dict(bbox=[250.0, 20.0, 390.0, 120.0], bbox_label=7, ignore_flag=0)]))
        assert out['inputs'].shape == (3, 640, 640)
        boxes = out['data_samples'].gt_instances.bboxes.tensor
        assert ((boxes >= 0) & (boxes <= 640)).all()


def test_training_on_shapes_stops_the_augmentation_and_saves_the_ema(shapes_root, tmp_path):
    """tools/train.py with the v2-R18 recipe on the shapes (2 epochs of 2 iterations): the
    strong and multi-scale augmentation stop after the first epoch, and the checkpoint's
    weights are the EMA ones (mmengine's EMAHook keeps the raw ones in ema_state_dict)."""
    from helpers import PYTHON, run_tool, shapes_options
    out = run_tool([PYTHON, 'tools/train.py', 'tests/data/configs/rtdetr_shapes_tiny.py',
                    '--work-dir', str(tmp_path), '--cfg-options',
                    *shapes_options(shapes_root)])
    log = out.stdout + out.stderr
    assert 'Switch pipeline now!' in log
    assert 'BatchAugmentSwitchHook: no batch augmentation from epoch 2 on' in log
    assert 'coco/bbox_mAP' in log
    ckpt = torch.load(tmp_path / 'epoch_2.pth', map_location='cpu', weights_only=False)
    assert int(ckpt['ema_state_dict']['steps']) == 4
    raw = {k[len('module.'):]: v for k, v in ckpt['ema_state_dict'].items()
           if k.startswith('module.')}
    assert raw.keys() == ckpt['state_dict'].keys()
    assert not torch.equal(raw['decoder.layers.0.cross_attn.value_proj.weight'],
                           ckpt['state_dict']['decoder.layers.0.cross_attn.value_proj.weight'])


def test_dist_train_on_cpu_ignores_sync_bn(shapes_root, tmp_path):
    """RT-DETR's configs ask for SyncBN (as the official runs); 2 gloo CPU processes train
    with per-process BN and say so."""
    from helpers import DIST_ENV, run_tool, shapes_options
    proc = run_tool(['bash', 'tools/dist_train.sh', 'tests/data/configs/rtdetr_shapes_tiny.py',
                     '2', '--work-dir', str(tmp_path), '--cfg-options',
                     *shapes_options(shapes_root), 'train_cfg.max_epochs=1'],
                    env=DIST_ENV, timeout=300)
    log = proc.stdout + proc.stderr
    assert "sync_bn='torch' ignored: SyncBatchNorm needs CUDA" in log, log[-3000:]
    assert (tmp_path / 'epoch_1.pth').is_file()
