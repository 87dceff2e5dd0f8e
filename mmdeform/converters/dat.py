"""Official DAT / DAT++ ImageNet checkpoints (LeapLabTHU/DAT) -> the mmdeform DAT backbone.

The official files are ``{'model': state_dict, 'optimizer': ..., 'config': <yacs CfgNode>, ...}``;
they are read with the restricted unpickler (the ``config`` object stays an
inert placeholder). mmdeform's ``DAT`` keeps the official module names, so the
conversion only

* drops the classifier (``cls_norm``, ``cls_head``): not part of a backbone;
* drops the buffers that mmdeform recomputes for the actual input size
  (``relative_position_index``, the shifted windows' ``attn_mask``);
* adds the detection backbone's output norms ``norms.{0..3}`` as identity
  LayerNorms (weight 1, bias 0: PyTorch's initialisation, as in the official
  detection code, where they start untrained);
* and fails on any key that is not part of a DAT model.
"""
import re
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mmdeform.utils.checkpoint import (CheckpointMismatchError, checkpoint_mismatch,
                                       describe_mismatch)
from .common import ConversionReport, StateDict

_W = r'(weight|bias)'
BACKBONE_KEY_PATTERNS = [re.compile(p) for p in (
    rf'patch_proj\.\d\.{_W}',
    rf'patch_proj\.\d\.norm\.{_W}',
    rf'stages\.\d\.layer_norms\.\d+\.norm\.{_W}',
    rf'stages\.\d\.attns\.\d+\.(proj_qkv|proj_out|qkv|proj|proj_q|proj_k|proj_v)\.{_W}',
    r'stages\.\d\.attns\.\d+\.(relative_position_bias_table|rpb|rpe_table)',
    rf'stages\.\d\.attns\.\d+\.conv_offset\.(0\.{_W}|1\.norm\.{_W}|3\.weight)',
    rf'stages\.\d\.mlps\.\d+\.(chunk\.linear[12]|linear1\.0|linear2\.0|dwc)\.{_W}',
    rf'stages\.\d\.local_perception_units\.\d+\.{_W}',
    r'down_projs\.\d\.0\.weight',
    rf'down_projs\.\d\.1\.norm\.{_W}',
    rf'norms\.\d\.norm\.{_W}',
)]
DROPS = [
    (re.compile(r'cls_(norm|head)\..+'),
     'ImageNet classifier (cls_norm, cls_head): not part of a backbone'),
    (re.compile(r'stages\.\d\.attns\.\d+\.(relative_position_index|attn_mask)'),
     'buffer that mmdeform recomputes for the input size'),
]


def convert_official_dat(state_dict: StateDict,
                         checkpoint: dict) -> Tuple[StateDict, ConversionReport, dict]:
    """Official classification (or detection-backbone) weights -> DAT backbone weights."""
    report = ConversionReport()
    out: StateDict = {}
    for key, value in state_dict.items():
        key_ = key[len('module.'):] if key.startswith('module.') else key
        drop = next((why for pattern, why in DROPS if pattern.fullmatch(key_)), None)
        if drop:
            report.dropped[key] = drop
        elif any(p.fullmatch(key_) for p in BACKBONE_KEY_PATTERNS):
            out[key_] = value
            report.mapped[key] = key_
        else:
            report.unmapped.append(key)
    for i in range(4):
        source = f'stages.{i}.layer_norms.0.norm.weight'
        if source in out and f'norms.{i}.norm.weight' not in out:
            dim = out[source].shape[0]
            out[f'norms.{i}.norm.weight'] = torch.ones(dim)
            out[f'norms.{i}.norm.bias'] = torch.zeros(dim)
            for name in ('weight', 'bias'):
                report.added[f'norms.{i}.norm.{name}'] = \
                    'output LayerNorm of the detection backbone (identity, untrained)'
    meta = dict(source_format='official DAT' + ('++' if _is_pp(out) else ''))
    if isinstance(checkpoint.get('epoch'), int):
        meta['source_epoch'] = checkpoint['epoch']
    if isinstance(checkpoint.get('max_accuracy'), (int, float)):
        meta['source_max_accuracy'] = float(checkpoint['max_accuracy'])
    return out, report, meta


def _is_pp(state_dict: StateDict) -> bool:
    return any('local_perception_units' in k for k in state_dict)


def _unwrap(checkpoint, filename: str) -> StateDict:
    if not isinstance(checkpoint, dict):
        raise TypeError(f'{filename}: expected a dict checkpoint, got {type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise KeyError(f'{filename}: found no weights; expected a "state_dict" or "model" entry, '
                   f'or a flat dict of tensors (top-level keys: {sorted(checkpoint)[:10]})')


def load_dat_pretrained(model: nn.Module, filename: str, logger='current') -> ConversionReport:
    """Load a DAT checkpoint into ``model`` (a :class:`DAT`) strictly.

    Accepts an official file (``{'model': ...}``), a converted backbone file, or
    a detector checkpoint (its ``backbone.`` keys). The position-bias tables
    are resized bicubically when the file was trained at another size; output
    norms of stages not in ``out_indices`` are ignored. Anything else that
    does not fit raises :class:`CheckpointMismatchError`, key by key.
    """
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location='cpu')
    state = _unwrap(checkpoint, filename)
    if any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    state, report, _ = convert_official_dat(state,
                                            checkpoint if isinstance(checkpoint, dict) else {})
    if report.unmapped:
        raise CheckpointMismatchError(f'{filename}: {len(report.unmapped)} keys are not part of a '
                                      f'DAT backbone: {report.unmapped[:10]}')
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith('norms.') and k not in own)}
    for key, value in list(state.items()):
        if (key.endswith(('rpe_table', 'relative_position_bias_table')) and key in own
                and value.shape != own[key].shape):
            state[key] = _resize_table(key, value, own[key].shape)
            print_log(f'{filename}: resized {key} {tuple(value.shape)} -> '
                      f'{tuple(own[key].shape)} (bicubic)', logger=logger)
    mismatch = checkpoint_mismatch(model, state)
    if any(mismatch.values()):
        raise CheckpointMismatchError(describe_mismatch(filename, mismatch, {}))
    model.load_state_dict(state, strict=True)
    print_log(f'loaded DAT weights from {filename}: {report.summary()}', logger=logger)
    return report


def _resize_table(key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if key.endswith('rpe_table'):  # (heads, 2H-1, 2W-1)
        return F.interpolate(value[None], shape[1:], mode='bicubic', align_corners=True)[0]
    n, heads = value.shape  # ((2w-1)^2, heads)
    side, new_side = int(round(n**0.5)), int(round(shape[0]**0.5))
    grid = value.T.reshape(1, heads, side, side)
    grid = F.interpolate(grid, (new_side, new_side), mode='bicubic', align_corners=True)
    return grid.reshape(heads, -1).T.contiguous()


__all__ = ['convert_official_dat', 'load_dat_pretrained', 'BACKBONE_KEY_PATTERNS']
