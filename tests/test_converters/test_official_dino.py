"""Official DINO checkpoints -> mmdeform.

tests/data/official_layouts/dino_{4,5}scale.json list every tensor name and shape
of the official model's state_dict (IDEA-Research/DINO built on the CPU from
config/DINO/DINO_{4,5}scale.py). A random checkpoint in that layout, with the
shared decoder heads tied as in the official files, an ``args`` Namespace and an
``ema_model``, is converted by the command-line tool and must load strictly.
"""
import argparse
import json
import os
import re

import pytest
import torch
from helpers import PYTHON, ROOT, run_tool
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.converters import COCO_CATEGORY_IDS, convert_official_dino
from mmdeform.utils.checkpoint import load_checkpoint_file

LAYOUTS = os.path.join(ROOT, 'tests', 'data', 'official_layouts')
TIED = re.compile(r'^(?:transformer\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.+)$')


def _layout(name):
    with open(os.path.join(LAYOUTS, f'{name}.json')) as f:
        return json.load(f)


def _random_official(name, seed=0):
    """Random tensors; every name of a shared decoder head holds layer 0's values."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) for k, shape in _layout(name)['tensors'].items()}
    for key in state:
        match = TIED.match(key)
        if match:
            state[key] = state[f'{match[1]}.0.{match[3]}']
    return state


@pytest.mark.parametrize('name, config', [('dino_4scale', 'configs/dino_4scale.py'),
                                          ('dino_5scale', 'configs/dino_5scale.py')])
def test_cli_converts_and_loads_strictly(name, config, tmp_path):
    layout = _layout(name)
    assert layout['num_state_dict_tensors'] == len(layout['tensors'])
    src, dst = tmp_path / 'official.pth', tmp_path / 'mmdeform.pth'
    model = _random_official(name)
    args = argparse.Namespace(**{k: v for k, v in layout['args'].items()})
    torch.save(dict(model=model, args=args, epoch=11, ema_model={'x': torch.zeros(1)}), src)
    proc = run_tool([PYTHON, 'tools/model_converters/official_dino.py', str(src), str(dst)],
                    fresh=True)
    assert 'unmapped 0' in proc.stdout
    assert 'dropped 48: the decoder\'s copy of the shared class/box head' in proc.stdout
    assert 'the tied decoder heads: 96 names hold 8 tensors' in proc.stdout
    assert 'ema_model ignored' in proc.stdout
    checkpoint = load_checkpoint_file(str(dst))
    assert checkpoint['meta']['source_epoch'] == 11
    assert checkpoint['meta']['source_format'] == 'official DINO'
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    ours = build_ours(cfg)
    ours.load_state_dict(checkpoint['state_dict'], strict=True)
    # the shared head holds class_embed.0's COCO rows, the label embedding its extra row last
    rows = torch.as_tensor(COCO_CATEGORY_IDS)
    assert torch.equal(ours.bbox_head.cls_branches[3].weight, model['class_embed.0.weight'][rows])
    assert torch.equal(ours.bbox_head.reg_branches[5].layers[2].bias,
                       model['bbox_embed.0.layers.2.bias'])
    assert torch.equal(ours.bbox_head.cls_branches[6].bias,
                       model['transformer.enc_out_class_embed.bias'][rows])
    label = ours.dn_query_generator.label_embedding.weight
    assert label.shape == (81, 256)
    assert torch.equal(label[:80], model['label_enc.weight'][rows])
    assert torch.equal(label[80], model['label_enc.weight'][91])
    assert torch.equal(ours.query_embedding.weight, model['transformer.tgt_embed.weight'])
    assert torch.equal(ours.decoder.layers[2].norms[0].weight,
                       model['transformer.decoder.layers.2.norm2.weight'])  # after self-attention
    levels = 4 if name == 'dino_4scale' else 5
    assert torch.equal(ours.neck.extra_convs[0].conv.bias,
                       model[f'input_proj.{levels - 1}.0.bias'])


def test_untied_heads_and_unknown_keys_are_errors(tmp_path):
    model = _random_official('dino_4scale')
    model['class_embed.3.bias'] = model['class_embed.3.bias'] + 1
    with pytest.raises(ValueError, match='class_embed.3.bias differs from .*class_embed.0.bias'):
        convert_official_dino(model, {})
    model = _random_official('dino_4scale')
    model['transformer.something_new.weight'] = torch.zeros(2)
    torch.save(dict(model=model), tmp_path / 'x.pth')
    proc = run_tool([PYTHON, 'tools/model_converters/official_dino.py', str(tmp_path / 'x.pth'),
                     str(tmp_path / 'y.pth')], check=False)
    assert proc.returncode != 0
    assert 'transformer.something_new.weight' in proc.stdout + proc.stderr
    assert not (tmp_path / 'y.pth').exists()


def test_download_tool_converts_a_hand_fetched_file(tmp_path):
    """The official files sit in a Drive folder without per-file links: the index names
    the file, the tool says so, and converts it from --src."""
    proc = run_tool([PYTHON, 'tools/misc/download_checkpoint.py', 'dino_5scale_12e_official'],
                    check=False)
    assert proc.returncode != 0 and "'checkpoint0011_5scale.pth'" in proc.stderr
    src = tmp_path / 'checkpoint0011_5scale.pth'
    torch.save(dict(model=_random_official('dino_5scale')), src)
    proc = run_tool([PYTHON, 'tools/misc/download_checkpoint.py', 'dino_5scale_12e_official',
                     '--src', str(src), '--out-dir', str(tmp_path / 'out')])
    assert 'tools/test.py configs/dino_5scale.py' in proc.stdout
    cfg = Config.fromfile('configs/dino_5scale.py')
    cfg.model.backbone.init_cfg = None
    state = load_checkpoint_file(str(tmp_path / 'out' / 'dino_5scale_12e_official.pth'))
    build_ours(cfg).load_state_dict(state['state_dict'], strict=True)
