"""Official DETR (facebookresearch/detr) and Deformable-DETR (fundamentalvision)
checkpoints -> mmdeform.

What the conversion does besides renaming:

* class rows: the official COCO models have 91 rows indexed by COCO category id
  (DETR adds the no-object row 91). The 80 rows of mmdet's ``CocoDataset``
  classes are selected in its order (DETR keeps no-object last). In two-stage
  Deformable DETR the encoder's proposal branch (the last class branch) was
  trained class-agnostically on row 0, and mmdeform's query selection reads
  row 0: that row stays in place.
* the decoder's references to the head's branches (``transformer.decoder.
  bbox_embed`` / ``class_embed`` in refinement and two-stage) are dropped;
  they are the same tensors as ``bbox_embed`` / ``class_embed``.
* FrozenBatchNorm2d buffers become the ResNet's BN weights and statistics, and
  each BN gets ``num_batches_tracked = 0``.
* profiling buffers (``total_ops``, ``total_params``) are dropped.
"""
import re
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .coco import COCO_CATEGORY_IDS, NUM_OFFICIAL_CLASSES
from .common import ConversionReport, StateDict, progress

def _apply_rules(state_dict: StateDict, rules: List[Tuple[str, Optional[str], str]],
                 report: ConversionReport) -> StateDict:
    """Rename each key by the first matching ``(pattern, replacement, reason)`` rule.

    ``replacement`` is an ``re.sub`` template or function; ``None`` drops the key
    with ``reason``. A key no rule matches is reported as unmapped.
    """
    compiled = [(re.compile(p), r, why) for p, r, why in rules]
    out: StateDict = {}
    for key, value in progress(state_dict.items()):
        for pattern, replacement, why in compiled:
            if pattern.fullmatch(key):
                if replacement is None:
                    report.dropped[key] = why
                else:
                    new_key = pattern.sub(replacement, key)
                    out[new_key] = value
                    report.mapped[key] = new_key
                break
        else:
            report.unmapped.append(key)
    return out


BACKBONE_RULES = [
    (r'backbone\.0\.body\.(.+)', r'backbone.\1', ''),
]
COMMON_DROPS = [
    (r'.*\.(total_ops|total_params)', None, 'profiling buffer'),
    (r'.*\.num_batches_tracked', None, 'FrozenBatchNorm2d keeps no counter; recreated as 0'),
]


def _frozen_bn_counters(out: StateDict, report: ConversionReport) -> None:
    """mmdet's ResNet uses BatchNorm2d, which also has ``num_batches_tracked``."""
    for key in list(out):
        if key.startswith('backbone.') and key.endswith('.running_var'):
            counter = key[:-len('running_var')] + 'num_batches_tracked'
            out[counter] = torch.tensor(0, dtype=torch.long)
            report.added[counter] = 'BatchNorm counter (FrozenBatchNorm2d has none)'


def select_class_rows(weight: Tensor, keep_no_object: bool,
                      objectness_row: bool = False) -> Tensor:
    """The rows of the 80 COCO classes (in mmdet's order) of a 91- or 92-row tensor.

    ``keep_no_object``: append row 91 (DETR's no-object class).
    ``objectness_row``: put the original row 0 first (two-stage proposal branch).
    """
    expected = NUM_OFFICIAL_CLASSES + int(keep_no_object)
    if weight.shape[0] != expected:
        raise ValueError(f'expected {expected} class rows (COCO category ids'
                         f'{" + no-object" if keep_no_object else ""}), got {weight.shape[0]}')
    rows = list(COCO_CATEGORY_IDS)
    if objectness_row:
        rows[0] = 0
    if keep_no_object:
        rows.append(NUM_OFFICIAL_CLASSES)
    return weight[torch.as_tensor(rows)].clone()


# ----------------------------------------------------------------------- DETR
DETR_RULES = BACKBONE_RULES + COMMON_DROPS + [
    (r'input_proj\.(weight|bias)', r'neck.convs.0.conv.\1', ''),
    (r'query_embed\.weight', r'query_embedding.weight', ''),
    (r'transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)', r'encoder.layers.\1.self_attn.attn.\2',
     ''),
    (r'transformer\.decoder\.layers\.(\d+)\.self_attn\.(.+)', r'decoder.layers.\1.self_attn.attn.\2',
     ''),
    (r'transformer\.decoder\.layers\.(\d+)\.multihead_attn\.(.+)',
     r'decoder.layers.\1.cross_attn.attn.\2', ''),
    (r'transformer\.(encoder|decoder)\.layers\.(\d+)\.linear1\.(.+)', r'\1.layers.\2.ffn.layers.0.0.\3',
     ''),
    (r'transformer\.(encoder|decoder)\.layers\.(\d+)\.linear2\.(.+)', r'\1.layers.\2.ffn.layers.1.\3',
     ''),
    # DETR layers keep their order: norm1 after self-attention, then norm2 (after the
    # FFN in the encoder, the cross-attention in the decoder), then norm3
    (r'transformer\.(encoder|decoder)\.layers\.(\d+)\.norm([123])\.(.+)',
     lambda m: f'{m[1]}.layers.{m[2]}.norms.{int(m[3]) - 1}.{m[4]}', ''),
    (r'transformer\.decoder\.norm\.(.+)', r'decoder.post_norm.\1', ''),
    (r'class_embed\.(weight|bias)', r'bbox_head.cls_branch.\1', ''),
    (r'bbox_embed\.layers\.(\d)\.(.+)', r'bbox_head.reg_branch.layers.\1.\2', ''),
]


def convert_official_detr(state_dict: StateDict,
                          checkpoint: dict) -> Tuple[StateDict, ConversionReport, dict]:
    report = ConversionReport()
    out = _apply_rules(state_dict, DETR_RULES, report)
    for name in ('weight', 'bias'):
        key = f'bbox_head.cls_branch.{name}'
        if key in out:
            out[key] = select_class_rows(out[key], keep_no_object=True)
    _frozen_bn_counters(out, report)
    return out, report, _meta(checkpoint, 'official DETR')


# ------------------------------------------------------------ Deformable DETR
def _deformable_rules(num_backbone_levels: int) -> List[Tuple[str, Optional[str], str]]:
    duplicate = 'the decoder\'s reference to the head branch of the same index (same tensor)'
    return BACKBONE_RULES + COMMON_DROPS + [
        (r'transformer\.decoder\.(bbox_embed|class_embed)\..+', None, duplicate),
        (r'transformer\.level_embed', r'level_embed', ''),
        (r'transformer\.reference_points\.(.+)', r'reference_points_fc.\1', ''),
        (r'transformer\.enc_output\.(.+)', r'memory_trans_fc.\1', ''),
        (r'transformer\.enc_output_norm\.(.+)', r'memory_trans_norm.\1', ''),
        (r'transformer\.pos_trans\.(.+)', r'pos_trans_fc.\1', ''),
        (r'transformer\.pos_trans_norm\.(.+)', r'pos_trans_norm.\1', ''),
        (r'query_embed\.weight', r'query_embedding.weight', ''),
        (r'transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)', r'encoder.layers.\1.self_attn.\2', ''),
        (r'transformer\.decoder\.layers\.(\d+)\.cross_attn\.(.+)', r'decoder.layers.\1.cross_attn.\2',
         ''),
        (r'transformer\.decoder\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj_bias)',
         r'decoder.layers.\1.self_attn.attn.\2', ''),
        (r'transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)',
         r'decoder.layers.\1.self_attn.attn.out_proj.\2', ''),
        (r'transformer\.(encoder|decoder)\.layers\.(\d+)\.linear1\.(.+)',
         r'\1.layers.\2.ffn.layers.0.0.\3', ''),
        (r'transformer\.(encoder|decoder)\.layers\.(\d+)\.linear2\.(.+)',
         r'\1.layers.\2.ffn.layers.1.\3', ''),
        # encoder: norm1 after self-attention, norm2 after the FFN
        (r'transformer\.encoder\.layers\.(\d+)\.norm1\.(.+)', r'encoder.layers.\1.norms.0.\2', ''),
        (r'transformer\.encoder\.layers\.(\d+)\.norm2\.(.+)', r'encoder.layers.\1.norms.1.\2', ''),
        # decoder: norm2 after self-attention, norm1 after cross-attention, norm3 after the FFN
        (r'transformer\.decoder\.layers\.(\d+)\.norm2\.(.+)', r'decoder.layers.\1.norms.0.\2', ''),
        (r'transformer\.decoder\.layers\.(\d+)\.norm1\.(.+)', r'decoder.layers.\1.norms.1.\2', ''),
        (r'transformer\.decoder\.layers\.(\d+)\.norm3\.(.+)', r'decoder.layers.\1.norms.2.\2', ''),
        # input projections: one per backbone level (ChannelMapper.convs), then the
        # stride-2 convs on C5 (ChannelMapper.extra_convs)
        (r'input_proj\.(\d+)\.0\.(.+)', lambda m: _proj(m, num_backbone_levels, 'conv'), ''),
        (r'input_proj\.(\d+)\.1\.(.+)', lambda m: _proj(m, num_backbone_levels, 'gn'), ''),
        (r'class_embed\.(\d+)\.(weight|bias)', r'bbox_head.cls_branches.\1.\2', ''),
        (r'bbox_embed\.(\d+)\.layers\.(\d)\.(.+)', r'bbox_head.reg_branches.\1.layers.\2.\3', ''),
    ]


def _proj(match: 're.Match', num_backbone_levels: int, part: str) -> str:
    level, name = int(match.group(1)), match.group(2)
    if level < num_backbone_levels:
        return f'neck.convs.{level}.{part}.{name}'
    return f'neck.extra_convs.{level - num_backbone_levels}.{part}.{name}'


def convert_official_deformable_detr(
        state_dict: StateDict, checkpoint: dict) -> Tuple[StateDict, ConversionReport, dict]:
    # C3-C5 feed the multi-scale model (4 levels with the extra conv); single scale uses C5
    num_levels = 1 + max(int(m.group(1)) for m in
                         (re.match(r'input_proj\.(\d+)\.', k) for k in state_dict) if m)
    num_backbone_levels = 3 if num_levels > 1 else 1
    report = ConversionReport()
    out = _apply_rules(state_dict, _deformable_rules(num_backbone_levels), report)
    branches = sorted({int(k.split('.')[2]) for k in out if k.startswith('bbox_head.cls_branches.')})
    two_stage = 'memory_trans_fc.weight' in out
    for i in branches:
        for name in ('weight', 'bias'):
            key = f'bbox_head.cls_branches.{i}.{name}'
            out[key] = select_class_rows(out[key], keep_no_object=False,
                                         objectness_row=two_stage and i == branches[-1])
    _frozen_bn_counters(out, report)
    return out, report, _meta(checkpoint, 'official Deformable DETR')


def _meta(checkpoint: dict, source: str) -> dict:
    meta = dict(source_format=source)
    args = checkpoint.get('args')
    if args is not None and hasattr(args, '__dict__'):
        meta['source_args'] = {k: v for k, v in vars(args).items()
                               if isinstance(v, (int, float, str, bool, type(None)))}
    for key in ('epoch', ):
        if isinstance(checkpoint.get(key), int):
            meta[f'source_{key}'] = checkpoint[key]
    return meta


convert_official_detr.source_family = 'official facebookresearch/detr format'

convert_official_deformable_detr.source_family = 'official fundamentalvision format'

__all__ = ['convert_official_detr', 'convert_official_deformable_detr', 'select_class_rows']
