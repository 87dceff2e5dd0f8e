"""Official DAT / DAT++ ImageNet checkpoints -> the mmdeform DAT backbone.

tests/data/official_layouts/dat_tiny.json (LeapLabTHU/DAT@566a593) and
dat_pp_tiny.json (@32173fc) list every tensor name and shape of the official
classification models, read off the official code. Random checkpoints in
that layout, with a non-tensor ``config`` entry as the official files have
(a yacs CfgNode there), must convert and load strictly, and load directly
through ``init_cfg=dict(type='Pretrained')``.
"""
import json
import os

import pytest
import torch
from helpers import PYTHON, ROOT, run_tool

from mmdeform.converters import convert_official_dat
from mmdeform.models.backbones import DAT
from mmdeform.utils.checkpoint import CheckpointMismatchError, load_checkpoint_file

LAYOUTS = os.path.join(ROOT, 'tests', 'data', 'official_layouts')


class CfgNode(dict):
    """Stands in for yacs' CfgNode: an object the restricted unpickler must not rebuild."""


def _random_official(arch, seed=0):
    with open(os.path.join(LAYOUTS, f'{arch}.json')) as f:
        layout = json.load(f)['tensors']
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in layout.items()}


def _official_file(path, state_dict):
    torch.save(dict(model=state_dict, optimizer={}, epoch=299, max_accuracy=83.864,
                    config=CfgNode(MODEL=dict(TYPE='dat'))), path)


@pytest.mark.parametrize('arch', ['dat_tiny', 'dat_pp_tiny'])
def test_cli_converts_and_loads_strictly(arch, tmp_path):
    src, dst = tmp_path / 'official.pth', tmp_path / 'backbone.pth'
    official = _random_official(arch)
    _official_file(src, official)
    proc = run_tool([PYTHON, 'tools/model_converters/official_dat.py', str(src), str(dst)])
    assert 'unmapped 0' in proc.stdout and 'cls_norm, cls_head' in proc.stdout
    checkpoint = load_checkpoint_file(str(dst))
    assert checkpoint['meta']['source_epoch'] == 299
    model = DAT(arch)
    model.load_state_dict(checkpoint['state_dict'], strict=True)
    for key, value in model.state_dict().items():
        if not key.startswith('norms.'):
            assert torch.equal(value, official[key]), key


@pytest.mark.parametrize('arch', ['dat_tiny', 'dat_pp_tiny'])
def test_pretrained_init_accepts_official_files(arch, tmp_path):
    """mmengine's Pretrained only unwraps 'state_dict' and would load nothing here."""
    src = tmp_path / 'official.pth'
    official = _random_official(arch, seed=1)
    _official_file(src, official)
    model = DAT(arch, out_indices=(1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    model.init_weights()
    state = model.state_dict()
    assert 'norms.0.norm.weight' not in state
    for key, value in state.items():
        if not key.startswith('norms.'):
            assert torch.equal(value, official[key]), key


def test_pretrained_init_resizes_tables_and_refuses_other_models(tmp_path):
    src = tmp_path / 'official.pth'
    _official_file(src, _random_official('dat_pp_tiny', seed=2))
    model = DAT('dat_pp_tiny', pretrain_img_size=384,
                init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    model.init_weights()  # 224-sized rpe tables, resized bicubically (as the official loader)
    assert model.stages[3].attns[0].rpe_table.shape == (16, 23, 23)
    wrong = DAT('dat_pp_small', init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    with pytest.raises(CheckpointMismatchError, match='shape of'):
        wrong.init_weights()


def test_unmapped_keys_are_an_error(tmp_path):
    state = _random_official('dat_pp_tiny')
    state['stages.0.something_new.weight'] = torch.zeros(3)
    out, report, _ = convert_official_dat(state, {})
    assert report.unmapped == ['stages.0.something_new.weight']
    _official_file(tmp_path / 'x.pth', state)
    proc = run_tool([PYTHON, 'tools/model_converters/official_dat.py', str(tmp_path / 'x.pth'),
                     str(tmp_path / 'y.pth')], check=False)
    assert proc.returncode != 0 and 'stages.0.something_new.weight' in proc.stdout + proc.stderr
    assert not (tmp_path / 'y.pth').exists()
