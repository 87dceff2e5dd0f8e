"""Official RT-DETR (v1) and RT-DETRv2 checkpoints -> mmdeform.

tests/data/official_layouts/rtdetr{,v2}_*.json list every tensor name and shape of
the official models' state_dicts (lyuwenyu/RT-DETR@068dfde, each built on the CPU
from its YAML config by ``tools/model_converters/compare_official_rtdetr.py
--dump-layout``). A random checkpoint in that layout is converted and must load
strictly into the model of the matching config; the tensors checked by value are
named here as the official code names them, with the module each must land in.
"""
import json
import os

import pytest
import torch
from helpers import PYTHON, ROOT, load_tool, run_tool, tool_error
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.converters import convert_official_rtdetr
from mmdeform.utils.checkpoint import load_checkpoint_file

LAYOUTS = os.path.join(ROOT, 'tests', 'data', 'official_layouts')
CONFIGS = {
    'rtdetr_r18vd_dec3': 'configs/rtdetr/rtdetr_r18vd_dec3_6x_coco.py',
    'rtdetr_r34vd_dec4': 'configs/rtdetr/rtdetr_r34vd_dec4_6x_coco.py',
    'rtdetr_r50vd_m': 'configs/rtdetr/rtdetr_r50vd_m_6x_coco.py',
    'rtdetr_r50vd': 'configs/rtdetr/rtdetr_r50vd_6x_coco.py',
    'rtdetr_r101vd': 'configs/rtdetr/rtdetr_r101vd_6x_coco.py',
    'rtdetrv2_r18vd': 'configs/rtdetr/rtdetrv2_r18vd_120e_coco.py',
    'rtdetrv2_r34vd': 'configs/rtdetr/rtdetrv2_r34vd_120e_coco.py',
    'rtdetrv2_r50vd_m': 'configs/rtdetr/rtdetrv2_r50vd_m_7x_coco.py',
    'rtdetrv2_r50vd': 'configs/rtdetr/rtdetrv2_r50vd_6x_coco.py',
    'rtdetrv2_r101vd': 'configs/rtdetr/rtdetrv2_r101vd_6x_coco.py',
}
# the official parameter counts (rtdetr-facts: v1 and v2 agree), the layouts must hold them
OFFICIAL_PARAMETERS = {'r18vd': 20_184_464, 'r34vd': 31_441_668, 'r50vd_m': 36_593_772,
                       'r50vd': 42_891_372, 'r101vd': 76_556_268}


def _layout(name):
    with open(os.path.join(LAYOUTS, f'{name}.json')) as f:
        return json.load(f)


def _random_official(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _layout(name)['tensors'].items():
        if key.endswith('num_batches_tracked'):
            state[key] = torch.tensor(seed + 7)
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


def _ours(name):
    cfg = Config.fromfile(os.path.join(ROOT, CONFIGS[name]))
    cfg.model.backbone.init_cfg = None
    return build_ours(cfg)


def test_layouts_are_the_official_models():
    for name in CONFIGS:
        backbone = name.split('_', 1)[1].replace('_dec3', '').replace('_dec4', '')
        assert _layout(name)['num_parameters'] == OFFICIAL_PARAMETERS[backbone], name


def _spot_checks(version):
    """(official key, our module path) pairs, as the official code names its modules."""
    proj = '0' if version == 'v1' else 'conv'
    norm = '1' if version == 'v1' else 'norm'
    enc_out = ('0', '1') if version == 'v1' else ('proj', 'norm')
    return [
        ('backbone.conv1.conv1_1.conv.weight', 'backbone.stem.0.weight'),
        ('backbone.conv1.conv1_2.norm.weight', 'backbone.stem.4.weight'),
        ('backbone.conv1.conv1_3.norm.running_mean', 'backbone.stem.7.running_mean'),
        ('backbone.res_layers.0.blocks.0.short.conv.weight',
         'backbone.layer1.0.downsample.1.weight'),
        ('backbone.res_layers.0.blocks.0.short.norm.running_var',
         'backbone.layer1.0.downsample.2.running_var'),
        ('backbone.res_layers.1.blocks.0.short.conv.conv.weight',
         'backbone.layer2.0.downsample.1.weight'),
        ('backbone.res_layers.3.blocks.0.short.conv.norm.bias',
         'backbone.layer4.0.downsample.2.bias'),
        ('backbone.res_layers.2.blocks.1.branch2b.conv.weight', 'backbone.layer3.1.conv2.weight'),
        ('backbone.res_layers.2.blocks.1.branch2a.norm.weight', 'backbone.layer3.1.bn1.weight'),
        (f'encoder.input_proj.0.{proj}.weight', 'neck.0.input_proj.0.conv.weight'),
        (f'encoder.input_proj.2.{norm}.bias', 'neck.0.input_proj.2.bn.bias'),
        ('encoder.encoder.0.layers.0.self_attn.in_proj_weight',
         'neck.0.encoder.0.layers.0.self_attn.attn.in_proj_weight'),
        ('encoder.encoder.0.layers.0.linear1.weight',
         'neck.0.encoder.0.layers.0.ffn.layers.0.0.weight'),
        ('encoder.encoder.0.layers.0.linear2.bias', 'neck.0.encoder.0.layers.0.ffn.layers.1.bias'),
        ('encoder.encoder.0.layers.0.norm1.weight', 'neck.0.encoder.0.layers.0.norms.0.weight'),
        ('encoder.encoder.0.layers.0.norm2.bias', 'neck.0.encoder.0.layers.0.norms.1.bias'),
        ('encoder.lateral_convs.1.norm.running_mean', 'neck.0.lateral_convs.1.bn.running_mean'),
        ('encoder.downsample_convs.0.conv.weight', 'neck.0.downsample_convs.0.conv.weight'),
        ('encoder.fpn_blocks.0.conv2.conv.weight', 'neck.0.fpn_blocks.0.conv2.conv.weight'),
        ('encoder.fpn_blocks.1.conv3.norm.weight', 'neck.0.fpn_blocks.1.conv3.bn.weight'),
        ('encoder.pan_blocks.1.bottlenecks.2.conv1.conv.weight',
         'neck.0.pan_blocks.1.blocks.2.conv1.conv.weight'),
        ('encoder.pan_blocks.0.bottlenecks.0.conv2.norm.bias',
         'neck.0.pan_blocks.0.blocks.0.conv2.bn.bias'),
        ('decoder.input_proj.1.conv.weight', 'neck.1.convs.1.conv.weight'),
        ('decoder.input_proj.2.norm.running_var', 'neck.1.convs.2.bn.running_var'),
        (f'decoder.enc_output.{enc_out[0]}.weight', 'memory_trans_fc.weight'),
        (f'decoder.enc_output.{enc_out[1]}.bias', 'memory_trans_norm.bias'),
        ('decoder.enc_score_head.weight', 'bbox_head.cls_branches.3.weight'),
        ('decoder.enc_bbox_head.layers.2.bias', 'bbox_head.reg_branches.3.layers.2.bias'),
        ('decoder.dec_score_head.0.bias', 'bbox_head.cls_branches.0.bias'),
        ('decoder.dec_bbox_head.2.layers.1.weight', 'bbox_head.reg_branches.2.layers.1.weight'),
        ('decoder.query_pos_head.layers.0.weight', 'decoder.ref_point_head.layers.0.weight'),
        ('decoder.denoising_class_embed.weight', 'dn_query_generator.label_embedding.weight'),
        ('decoder.decoder.layers.1.self_attn.out_proj.weight',
         'decoder.layers.1.self_attn.attn.out_proj.weight'),
        ('decoder.decoder.layers.2.cross_attn.sampling_offsets.bias',
         'decoder.layers.2.cross_attn.sampling_offsets.bias'),
        ('decoder.decoder.layers.0.cross_attn.attention_weights.weight',
         'decoder.layers.0.cross_attn.attention_weights.weight'),
        ('decoder.decoder.layers.2.cross_attn.value_proj.bias',
         'decoder.layers.2.cross_attn.value_proj.bias'),
        ('decoder.decoder.layers.1.cross_attn.output_proj.weight',
         'decoder.layers.1.cross_attn.output_proj.weight'),
        ('decoder.decoder.layers.0.linear1.bias', 'decoder.layers.0.ffn.layers.0.0.bias'),
        ('decoder.decoder.layers.2.linear2.weight', 'decoder.layers.2.ffn.layers.1.weight'),
        ('decoder.decoder.layers.0.norm1.weight', 'decoder.layers.0.norms.0.weight'),  # self-attn
        ('decoder.decoder.layers.1.norm2.bias', 'decoder.layers.1.norms.1.bias'),  # cross-attn
        ('decoder.decoder.layers.2.norm3.weight', 'decoder.layers.2.norms.2.weight'),  # FFN
    ]


@pytest.mark.parametrize('name, version', [('rtdetr_r18vd_dec3', 'v1'), ('rtdetrv2_r18vd', 'v2')])
def test_cli_converts_ema_and_loads_strictly(name, version, tmp_path):
    src, dst = tmp_path / 'official.pth', tmp_path / 'mmdeform.pth'
    ema, raw = _random_official(name, seed=0), _random_official(name, seed=1)
    torch.save(dict(model=raw, ema=dict(module=ema, updates=5000), last_epoch=71,
                    date='2024-07-24'), src)
    proc = run_tool([PYTHON, 'tools/model_converters/official_rtdetr.py', str(src), str(dst)],
                    fresh=True)
    assert 'unmapped 0' in proc.stdout
    assert f'converted the "ema.module" weights ({version} layout)' in proc.stdout
    if version == 'v2':  # anchors, valid_mask and 3 layers' num_points_scale
        assert 'dropped 5: buffer that mmdeform recomputes' in proc.stdout
    else:
        assert 'dropped 0' in proc.stdout
    checkpoint = load_checkpoint_file(str(dst))
    family = 'official RT-DETRv2' if version == 'v2' else 'official RT-DETR'
    assert checkpoint['meta']['source_format'] == family
    assert checkpoint['meta']['source_epoch'] == 71
    assert not any(k.endswith(('anchors', 'valid_mask', 'num_points_scale'))
                   for k in checkpoint['state_dict'])
    ours = _ours(name)
    ours.load_state_dict(checkpoint['state_dict'], strict=True)
    state = ours.state_dict()
    for official_key, our_key in _spot_checks(version):
        assert torch.equal(state[our_key], ema[official_key]), (official_key, our_key)
    # the ema weights, not the raw ones
    assert not torch.equal(state['backbone.stem.0.weight'],
                           raw['backbone.conv1.conv1_1.conv.weight'])


def test_model_entry_when_there_is_no_ema(tmp_path):
    model = _random_official('rtdetrv2_r18vd', seed=3)
    torch.save(dict(model=model), tmp_path / 'official.pth')
    run_tool([PYTHON, 'tools/model_converters/official_rtdetr.py', str(tmp_path / 'official.pth'),
              str(tmp_path / 'out.pth')])
    out = load_checkpoint_file(str(tmp_path / 'out.pth'))
    assert out['meta']['source_weights'] == 'model'
    assert torch.equal(out['state_dict']['memory_trans_fc.weight'],
                       model['decoder.enc_output.proj.weight'])


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_official_layout_loads_strictly(name):
    """R34's 4 and R50/R101's 6 decoder layers, R50-m's 6 built, the frozen-BN backbones
    (no num_batches_tracked: filled with 0), R101's 384-wide encoder."""
    official = _random_official(name)
    out, report, _ = convert_official_rtdetr(official, {})
    assert not report.unmapped
    assert len(set(report.mapped.values())) == len(report.mapped)  # no two land in one place
    frozen = 'r50' in name or 'r101' in name
    assert bool(report.added) == frozen
    assert all(k.endswith('num_batches_tracked') and k.startswith('backbone.') and
               int(v) == 0 for k, v in out.items() if k in report.added)
    _ours(name).load_state_dict(out, strict=True)
    layers = 1 + max(int(k.split('.')[2]) for k in official
                     if k.startswith('decoder.dec_score_head.'))
    assert torch.equal(out[f'bbox_head.cls_branches.{layers}.weight'],
                       official['decoder.enc_score_head.weight'])


def test_unknown_key_is_a_one_line_error(tmp_path, capsys):
    model = _random_official('rtdetrv2_r18vd')
    model['decoder.something_new.weight'] = torch.zeros(2)
    torch.save(dict(ema=dict(module=model)), tmp_path / 'x.pth')
    line = tool_error('tools/model_converters/official_rtdetr.py',
                      [tmp_path / 'x.pth', tmp_path / 'y.pth'], capsys)
    assert line.startswith('error: UnmappedKeysError: 1 tensors of ')
    assert "['decoder.something_new.weight']" in line
    assert not (tmp_path / 'y.pth').exists()


def test_other_checkpoint_is_refused_and_official_file_is_recognised(tmp_path, capsys):
    """test.py with an official file names this converter; this converter names what it got."""
    from mmdeform.utils.checkpoint import checkpoint_family
    official = _random_official('rtdetr_r18vd_dec3')
    assert checkpoint_family(official) == 'RT-DETR (official lyuwenyu/RT-DETR format)'
    ours = _ours('rtdetr_r18vd_dec3').state_dict()
    torch.save(dict(state_dict=ours), tmp_path / 'ours.pth')
    line = tool_error('tools/model_converters/official_rtdetr.py',
                      [tmp_path / 'ours.pth', tmp_path / 'y.pth'], capsys)
    assert line == (f'error: CheckpointFamilyError: {tmp_path / "ours.pth"} looks like DINO '
                    'weights; this converter reads official lyuwenyu/RT-DETR format checkpoints')


def test_compare_script_matches_queries_in_any_order():
    """compare_official_rtdetr.py's order-free check: a permutation of the queries is the
    same set; one query moved by 1e-3 is reported as unmatched."""
    match = load_tool('tools/model_converters/compare_official_rtdetr.py').match_queries
    g = torch.Generator().manual_seed(0)
    logits, boxes = torch.randn(30, 5, generator=g), torch.rand(30, 4, generator=g)
    perm = torch.randperm(30, generator=g)
    assert match(logits, boxes, logits[perm], boxes[perm]) == (0.0, 0)
    moved = boxes[perm].clone()
    moved[3, 1] += 1e-3
    close, unmatched = match(logits, boxes, logits[perm] + 1e-6, moved)
    assert unmatched == 1 and 0 < close < 2e-6


def test_benchmark_alternates_and_skips_without_the_official_code(tmp_path, capsys):
    tool = load_tool('tools/analysis_tools/benchmark_rtdetr_official.py')
    calls = []
    times = tool.alternate({name: (lambda n=name: calls.append(n)) for name in 'abc'},
                           warmup=1, repeats=3)
    assert calls == list('abc' 'bca' 'cab' 'abc')
    assert {k: len(v) for k, v in times.items()} == dict(a=3, b=3, c=3)
    assert tool.main(['--official-root', str(tmp_path)]) is None
    assert capsys.readouterr().out.startswith(f"skipped: --official-root '{tmp_path}' is not a "
                                              'checkout of lyuwenyu/RT-DETR')
