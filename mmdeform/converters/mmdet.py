"""mmdet 3.x DETR, Deformable DETR and DINO checkpoints -> mmdeform.

The transformer, neck, backbone and query keys are the same in both. The heads
differ: mmdet's DETR ``fc_cls`` / ``reg_ffn`` + ``fc_reg`` are mmdeform's
``cls_branch`` / ``reg_branch`` and Deformable DETR's ``reg_branches.{i}.{0,2,4}``
are ``reg_branches.{i}.layers.{0,1,2}`` (3-layer MLPs, named as the official
``bbox_embed``). mmdet's Deformable-DETR input projections have no bias before
their GroupNorm; the official ones do, and so do mmdeform's: the converter
fills zero biases, which leaves the outputs unchanged. DINO's own tensors
(``query_embedding``, ``decoder.ref_point_head``, ``decoder.norm``,
``dn_query_generator.label_embedding``) keep their names; its per-layer
branches load into ``configs/dino_4scale_layerwise_heads.py``.
"""
import re
from typing import Tuple

import torch

from .common import ConversionReport, StateDict, progress, rename_by_prefix

DETR_RULES = [
    ('bbox_head.fc_cls.', 'bbox_head.cls_branch.'),
    ('bbox_head.reg_ffn.layers.0.0.', 'bbox_head.reg_branch.layers.0.'),
    ('bbox_head.reg_ffn.layers.1.', 'bbox_head.reg_branch.layers.1.'),
    ('bbox_head.fc_reg.', 'bbox_head.reg_branch.layers.2.'),
]


_DEFORMABLE_REG = re.compile(r'^bbox_head\.reg_branches\.(\d+)\.([024])\.(weight|bias)$')
_NECK_CONV = re.compile(r'^neck\.(convs|extra_convs)\.(\d+)\.conv\.weight$')


def detect_family(state_dict: StateDict) -> str:
    if 'bbox_head.fc_cls.weight' in state_dict:
        return 'detr'
    if 'dn_query_generator.label_embedding.weight' in state_dict:
        return 'dino'
    if 'bbox_head.cls_branches.0.weight' in state_dict:
        return 'deformable_detr'
    raise KeyError('not an mmdet 3.x DETR, Deformable DETR or DINO checkpoint: neither '
                   'bbox_head.fc_cls.weight nor bbox_head.cls_branches.0.weight is there '
                   f'(bbox_head keys: {[k for k in state_dict if k.startswith("bbox_head")][:8]})')


def _convert_deformable(state_dict: StateDict) -> Tuple[StateDict, ConversionReport]:
    report = ConversionReport()
    out: StateDict = {}
    for key, value in progress(state_dict.items()):
        match = _DEFORMABLE_REG.match(key)
        new_key = key
        if match:
            branch, index, kind = match.groups()
            new_key = f'bbox_head.reg_branches.{branch}.layers.{int(index) // 2}.{kind}'
        out[new_key] = value
        report.mapped[key] = new_key
    for key, value in state_dict.items():
        match = _NECK_CONV.match(key)
        bias_key = key[:-len('weight')] + 'bias'
        if match and bias_key not in state_dict:
            out[bias_key] = torch.zeros(value.shape[0], dtype=value.dtype)
            report.added[bias_key] = 'zero bias of an input projection (mmdet has none)'
    return out, report


def convert_mmdet(state_dict: StateDict, checkpoint: dict) -> Tuple[StateDict, ConversionReport, dict]:
    family = detect_family(state_dict)
    if family == 'detr':
        converted, report = rename_by_prefix(state_dict, DETR_RULES)
    else:
        converted, report = _convert_deformable(state_dict)
    meta = dict(source_format=f'mmdet-3.x {family}')
    source_meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    if 'dataset_meta' in source_meta:
        meta['dataset_meta'] = source_meta['dataset_meta']
    return converted, report, meta

convert_mmdet.source_family = 'mmdet 3.x format'
