"""Official DETR / Deformable-DETR checkpoints -> mmdeform.

The layouts in tests/data/official_layouts/ list every tensor name and shape of
the official models' state_dict (read off the official model definitions). A
random checkpoint in that layout, holding an argparse.Namespace as the official
files do, is converted with the command-line tool and must load into the
matching config with strict=True.
"""
import argparse
import json
import os

import pytest
import torch
from helpers import PYTHON, ROOT, run_tool
from mmdet.datasets import CocoDataset
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.converters import (COCO_CATEGORY_IDS, convert_official_deformable_detr,
                                 convert_official_detr, select_class_rows)
from mmdeform.utils.checkpoint import load_checkpoint_file

LAYOUTS = os.path.join(ROOT, 'tests', 'data', 'official_layouts')
CASES = {
    'deformable_detr_single_scale': 'configs/deformable_detr_single_scale.py',
    'deformable_detr_single_scale_dc5': 'configs/deformable_detr_single_scale_dc5.py',
    'deformable_detr': 'configs/deformable_detr.py',
    'deformable_detr_refine': 'configs/deformable_detr_refine.py',
    'deformable_detr_refine_two_stage': 'configs/deformable_detr_refine_two_stage.py',
    'detr_r50': 'configs/detr.py',
    'detr_r50_dc5': 'configs/detr_dc5.py',
    'detr_r101': 'configs/detr_r101.py',
    'detr_r101_dc5': 'configs/detr_r101_dc5.py',
}

# COCO's 91 category slots by id, as listed with the official DETR demo ('N/A' = unused id)
COCO_91 = [
    'N/A', 'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'N/A', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
    'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'N/A', 'backpack',
    'umbrella', 'N/A', 'N/A', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
    'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'N/A', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl',
    'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut',
    'cake', 'chair', 'couch', 'potted plant', 'bed', 'N/A', 'dining table', 'N/A', 'N/A',
    'toilet', 'N/A', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave',
    'oven', 'toaster', 'sink', 'refrigerator', 'N/A', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush']


def _layout(name):
    with open(os.path.join(LAYOUTS, f'{name}.json')) as f:
        return json.load(f)


def _random_official(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) if shape else torch.randn((), generator=g)
            for k, shape in _layout(name)['tensors'].items()}


def _convert(name, state_dict):
    fn = convert_official_detr if name.startswith('detr') else convert_official_deformable_detr
    return fn(state_dict, {})


def test_selected_rows_are_mmdets_coco_classes_in_order():
    names = [COCO_91[i] for i in COCO_CATEGORY_IDS]
    assert tuple(names) == CocoDataset.METAINFO['classes']
    rows = torch.arange(92.0)[:, None]
    picked = select_class_rows(rows, keep_no_object=True)[:, 0].long().tolist()
    assert picked == list(COCO_CATEGORY_IDS) + [91]
    two_stage = select_class_rows(rows[:91], keep_no_object=False, objectness_row=True)
    assert two_stage[0, 0] == 0 and two_stage[1:, 0].long().tolist() == list(COCO_CATEGORY_IDS[1:])
    with pytest.raises(ValueError, match='expected 91 class rows'):
        select_class_rows(torch.zeros(80, 4), keep_no_object=False)


@pytest.mark.parametrize('name', sorted(CASES))
def test_cli_converts_and_loads_strictly(name, tmp_path):
    src, dst = tmp_path / 'official.pth', tmp_path / 'mmdeform.pth'
    args = argparse.Namespace(**{k: v for k, v in _layout(name)['args'].items()
                                 if not isinstance(v, (list, dict))})
    torch.save(dict(model=_random_official(name), args=args, epoch=49), src)
    script = 'official_detr.py' if name.startswith('detr') else 'official_deformable_detr.py'
    proc = run_tool([PYTHON, f'tools/model_converters/{script}', str(src), str(dst)])
    assert 'unmapped 0' in proc.stdout
    checkpoint = load_checkpoint_file(str(dst))
    assert checkpoint['meta']['source_epoch'] == 49
    cfg = Config.fromfile(CASES[name])
    cfg.model.backbone.init_cfg = None
    build_ours(cfg).load_state_dict(checkpoint['state_dict'], strict=True)


def test_deformable_mapping_facts():
    name = 'deformable_detr_refine_two_stage'
    src = _random_official(name)
    out, report, _ = _convert(name, src)
    # decoder: norm2 follows self-attention, norm1 cross-attention, norm3 the FFN
    assert torch.equal(out['decoder.layers.3.norms.0.weight'],
                       src['transformer.decoder.layers.3.norm2.weight'])
    assert torch.equal(out['decoder.layers.3.norms.1.weight'],
                       src['transformer.decoder.layers.3.norm1.weight'])
    assert torch.equal(out['encoder.layers.2.norms.1.bias'],
                       src['transformer.encoder.layers.2.norm2.bias'])
    # C3-C5 projections, then the stride-2 conv on C5
    assert torch.equal(out['neck.convs.2.conv.weight'], src['input_proj.2.0.weight'])
    assert torch.equal(out['neck.extra_convs.0.gn.bias'], src['input_proj.3.1.bias'])
    # two-stage: the proposal branch (index 6) keeps its objectness row 0 first
    assert torch.equal(out['bbox_head.cls_branches.6.weight'][0], src['class_embed.6.weight'][0])
    assert torch.equal(out['bbox_head.cls_branches.6.weight'][1], src['class_embed.6.weight'][2])
    assert torch.equal(out['bbox_head.cls_branches.2.bias'], src['class_embed.2.bias'][
        torch.as_tensor(COCO_CATEGORY_IDS)])
    assert all(k.startswith('transformer.decoder.') for k in report.dropped)
    assert len(report.dropped) == 56
    assert out['backbone.bn1.num_batches_tracked'].item() == 0


def test_detr_mapping_facts():
    src = _random_official('detr_r50')
    out, _, _ = _convert('detr_r50', src)
    assert torch.equal(out['decoder.layers.1.norms.1.weight'],
                       src['transformer.decoder.layers.1.norm2.weight'])
    assert torch.equal(out['decoder.post_norm.weight'], src['transformer.decoder.norm.weight'])
    assert torch.equal(out['decoder.layers.0.cross_attn.attn.in_proj_weight'],
                       src['transformer.decoder.layers.0.multihead_attn.in_proj_weight'])
    assert torch.equal(out['bbox_head.cls_branch.weight'][-1], src['class_embed.weight'][91])
    assert out['bbox_head.cls_branch.weight'].shape == (81, 256)


def test_unknown_keys_are_an_error(tmp_path):
    src = _random_official('detr_r50')
    src['transformer.some_new_thing.weight'] = torch.zeros(3)
    torch.save(dict(model=src), tmp_path / 'x.pth')
    proc = run_tool([PYTHON, 'tools/model_converters/official_detr.py', str(tmp_path / 'x.pth'),
                     str(tmp_path / 'y.pth')], check=False)
    assert proc.returncode != 0
    assert 'transformer.some_new_thing.weight' in proc.stdout + proc.stderr
    assert not (tmp_path / 'y.pth').exists()
