"""Official DINO checkpoints (IDEA-Research/DINO, ``{'model': ..., 'args': Namespace}``)
-> mmdeform's ``configs/dino_4scale.py`` / ``configs/dino_5scale.py``.

Besides the Deformable-DETR renames (:mod:`.official`):

* the decoder's class Linear and box MLP are shared by its 6 layers, and the
  official state_dict stores each of their 8 tensors under 12 names
  (``class_embed.{0-5}``, ``bbox_embed.{0-5}`` and the same under
  ``transformer.decoder.``): 96 names. mmdeform's shared head keeps them under
  its 6 per-layer names; the 48 ``transformer.decoder.`` names are dropped. The
  copies must be equal (a checkpoint whose layers differ is not a shared-head
  model and is refused).
* the encoder-output heads (``transformer.enc_out_*``) are branch 6 of the head.
* class rows: the 91 rows (COCO category ids) of every class head become the 80
  of mmdet's CocoDataset, in its order; the label embedding (92 rows) keeps its
  last extra row after them (81 rows: ``num_classes + 1``).
* ``ema_model``, if present, is ignored (the ``model`` weights are converted).
"""
import re
from typing import List, Optional, Tuple

import torch

from .common import ConversionReport, StateDict
from .official import (_apply_rules, _deformable_rules, _frozen_bn_counters, _meta,
                       select_class_rows)

_HEAD = re.compile(r'^(class_embed|bbox_embed)\.(\d+)\.(.+)$')


def _dino_rules(num_decoder_layers: int) -> List[Tuple[str, Optional[str], str]]:
    enc = num_decoder_layers
    return [
        (r'transformer\.tgt_embed\.weight', r'query_embedding.weight', ''),
        (r'transformer\.decoder\.norm\.(.+)', r'decoder.norm.\1', ''),
        (r'transformer\.decoder\.ref_point_head\.layers\.(\d)\.(.+)',
         r'decoder.ref_point_head.layers.\1.\2', ''),
        (r'transformer\.enc_out_class_embed\.(.+)', rf'bbox_head.cls_branches.{enc}.\1', ''),
        (r'transformer\.enc_out_bbox_embed\.layers\.(\d)\.(.+)',
         rf'bbox_head.reg_branches.{enc}.layers.\1.\2', ''),
        (r'label_enc\.weight', r'dn_query_generator.label_embedding.weight', ''),
    ]


def _check_tied_heads(state_dict: StateDict) -> None:
    """Every copy of a shared decoder head must hold the same values."""
    first = {}
    for key, value in state_dict.items():
        match = _HEAD.match(key[len('transformer.decoder.'):] if
                            key.startswith('transformer.decoder.') else key)
        if not match:
            continue
        name = f'{match[1]}.{match[3]}'
        if name not in first:
            first[name] = (key, value)
        elif not torch.equal(first[name][1], value):
            raise ValueError(
                f'{key} differs from {first[name][0]}: the decoder layers of this checkpoint '
                'do not share one class/box head (the official dec_pred_*_embed_share=False); '
                'configs/dino_4scale.py needs shared heads')


def convert_official_dino(state_dict: StateDict,
                          checkpoint: dict) -> Tuple[StateDict, ConversionReport, dict]:
    num_levels = 1 + max(int(m[1]) for m in (re.match(r'input_proj\.(\d+)\.', k)
                                              for k in state_dict) if m)
    num_decoder_layers = 1 + max(int(m[1]) for m in (re.match(r'class_embed\.(\d+)\.', k)
                                                      for k in state_dict) if m)
    _check_tied_heads(state_dict)
    report = ConversionReport()
    rules = _dino_rules(num_decoder_layers) + _deformable_rules(num_levels - 1)
    out = _apply_rules(state_dict, rules, report)
    for key in list(report.dropped):
        if key.startswith('transformer.decoder.'):
            report.dropped[key] = ('the decoder\'s copy of the shared class/box head '
                                   '(the same tensor as class_embed/bbox_embed)')
    report.notes.append(f'the tied decoder heads: {_count_tied(state_dict)} names hold 8 '
                        'tensors; kept under bbox_head.{cls,reg}_branches.0-'
                        f'{num_decoder_layers - 1} (one shared module)')
    for key in [k for k in out if k.startswith('bbox_head.cls_branches.')]:
        out[key] = select_class_rows(out[key], keep_no_object=False)
    label_key = 'dn_query_generator.label_embedding.weight'
    if label_key in out:
        out[label_key] = select_class_rows(out[label_key], keep_no_object=True)
    if 'ema_model' in checkpoint:
        report.notes.append('ema_model ignored: the "model" weights are converted')
    _frozen_bn_counters(out, report)
    return out, report, _meta(checkpoint, 'official DINO')


def _count_tied(state_dict: StateDict) -> int:
    return sum(1 for k in state_dict
               if _HEAD.match(k[len('transformer.decoder.'):] if k.startswith('transformer.decoder.')
                              else k))
