"""mmdet 3.x DETR checkpoints -> mmdeform.

The transformer, neck, backbone and query keys are the same in both; the DETR
head differs: mmdet's ``fc_cls`` / ``reg_ffn`` + ``fc_reg`` are mmdeform's
``cls_branch`` / ``reg_branch`` (a 3-layer MLP, named as in the official DETR).
"""
from typing import Tuple

from .common import ConversionReport, StateDict, rename_by_prefix

DETR_RULES = [
    ('bbox_head.fc_cls.', 'bbox_head.cls_branch.'),
    ('bbox_head.reg_ffn.layers.0.0.', 'bbox_head.reg_branch.layers.0.'),
    ('bbox_head.reg_ffn.layers.1.', 'bbox_head.reg_branch.layers.1.'),
    ('bbox_head.fc_reg.', 'bbox_head.reg_branch.layers.2.'),
]


def detect_family(state_dict: StateDict) -> str:
    if 'bbox_head.fc_cls.weight' in state_dict:
        return 'detr'
    raise KeyError('not an mmdet 3.x DETR checkpoint: bbox_head.fc_cls.weight is missing '
                   f'(bbox_head keys: {[k for k in state_dict if k.startswith("bbox_head")][:8]})')


def convert_mmdet(state_dict: StateDict, checkpoint: dict) -> Tuple[StateDict, ConversionReport, dict]:
    family = detect_family(state_dict)
    converted, report = rename_by_prefix(state_dict, DETR_RULES)
    meta = dict(source_format=f'mmdet-3.x {family}')
    source_meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    if 'dataset_meta' in source_meta:
        meta['dataset_meta'] = source_meta['dataset_meta']
    return converted, report, meta
