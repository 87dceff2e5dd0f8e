"""The DAT / DAT++ backbone: official parameter counts, any input size, freezing, checkpointing."""
import json
import math
import os

import pytest
import torch
from helpers import ROOT

from mmdeform.models.backbones import DAT
from mmdeform.models.backbones.dat import ARCH_SETTINGS, stage_sizes


LAYOUTS = os.path.join(ROOT, 'tests', 'data', 'official_layouts')
BUFFERS = ('relative_position_index', 'attn_mask')


def official_detection_backbone(arch):
    """Parameter names and shapes of the official detection backbone (DAT-Detection):
    the ImageNet model in tests/data/official_layouts (read off the official code)
    without cls_norm / cls_head, plus a LayerNorm on each of the four outputs."""
    with open(os.path.join(LAYOUTS, f'{arch}.json')) as f:
        layout = json.load(f)
    params = {k: tuple(v) for k, v in layout['tensors'].items() if not k.endswith(BUFFERS)}
    assert sum(math.prod(s) for s in params.values()) == layout['num_parameters']
    backbone = {k: s for k, s in params.items() if not k.startswith(('cls_norm.', 'cls_head.'))}
    for i in range(4):
        for name in ('weight', 'bias'):
            backbone[f'norms.{i}.norm.{name}'] = params[f'stages.{i}.layer_norms.0.norm.weight']
    return backbone


# 27,551,482 / 48,932,746 / 86,858,424 (DAT-T/S/B), 23,450,772 / 52,359,710 / 92,667,432 (++)
@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_parameters_equal_the_official_detection_backbones(arch):
    expected = official_detection_backbone(arch)
    model = DAT(arch, out_indices=(0, 1, 2, 3))
    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == expected
    assert sum(p.numel() for p in model.parameters()) == \
        sum(math.prod(s) for s in expected.values())


@pytest.mark.parametrize('arch', ['dat_tiny', 'dat_pp_tiny'])
@pytest.mark.parametrize('size', [(230, 301), (33, 47), (20, 28)])
def test_any_input_size_gives_finite_outputs_at_strides_4_to_32(arch, size):
    torch.manual_seed(0)
    model = DAT(arch, drop_path_rate=0.0).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    dims = model.arch['dims']
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape == (1, dims[i], math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert torch.isfinite(out).all(), (arch, size, i)
    assert [o.shape[-2:] for o in outs] == list(stage_sizes(*size))
    if size == (20, 28):  # a 1 x 1 last stage: the official DAT++ gives NaN here
        assert outs[-1].shape[-2:] == (1, 1)


def test_out_indices_and_frozen_stages():
    model = DAT('dat_pp_tiny', out_indices=(1, 3), frozen_stages=2)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 512] and model.num_features == [128, 512]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith(('patch_proj.', 'stages.0.', 'stages.1.', 'down_projs.0.', 'norms.1.'))
               for n in frozen)
    assert any(n.startswith('stages.1.') for n in frozen)
    assert any(n.startswith('norms.1') for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters()
               if n.startswith(('stages.2.', 'down_projs.1.', 'norms.3.')))
    model.train()
    assert not model.stages[1].training and model.stages[2].training
    with pytest.raises(KeyError, match='unknown arch'):
        DAT('dat_huge')


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = DAT('dat_tiny', drop_path_rate=0.0)
    ckpt = DAT('dat_tiny', drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 96)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
