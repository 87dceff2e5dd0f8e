"""Official RT-DETR (v1) and RT-DETRv2 checkpoints (lyuwenyu/RT-DETR) -> ``configs/rtdetr/``.

The official files hold ``{'model': ..., 'ema': {'module': ..., 'updates': ...}, ...}``
(the ``*_from_paddle`` ones may hold only one of them); the EMA weights are
the ones the official evaluation uses, so ``ema.module`` is converted when it
is there, ``model`` otherwise.

Names (``backbone.`` PResNet, ``encoder.`` HybridEncoder, ``decoder.`` the
RT-DETR transformer with its heads) -> mmdeform's mmdet-style names:

* the backbone becomes mmdet's ``ResNetV1d`` (:class:`PResNet`): ``conv1.conv1_{1,2,3}``
  -> ``stem.{0,1|3,4|6,7}``, ``res_layers.K.blocks.J.branch2{a,b,c}`` ->
  ``layer{K+1}.J.conv{1,2,3}`` / ``bn{1,2,3}``, the shortcut ``short(.conv)`` ->
  ``downsample.{1,2}``. The R50/R101 ``FrozenBatchNorm2d`` keeps no
  ``num_batches_tracked``; it is recreated as 0.
* ``encoder.`` -> ``neck.0.`` (:class:`HybridEncoder`); v1 names the input
  projection ``input_proj.N.{0,1}``, v2 ``input_proj.N.{conv,norm}``.
* ``decoder.input_proj`` -> ``neck.1.convs`` (the ChannelMapper);
  ``decoder.enc_output`` (v1 ``.{0,1}``, v2 ``.{proj,norm}``) ->
  ``memory_trans_{fc,norm}``; the per-layer and encoder-output heads ->
  ``bbox_head.{cls,reg}_branches.{0..L-1 | L}``; ``query_pos_head`` ->
  ``decoder.ref_point_head``; ``denoising_class_embed`` ->
  ``dn_query_generator.label_embedding``.
* dropped, with a note: the buffers mmdeform recomputes in every forward pass
  (v2's ``decoder.anchors`` and ``decoder.valid_mask``, cached for 640 x 640,
  and each layer's ``cross_attn.num_points_scale``).

The 80 class rows are the contiguous COCO classes in category-id order, as
mmdet's ``CocoDataset``: they are copied unchanged. Any other key is an error.
"""
import re
from typing import Callable, List, Optional, Tuple, Union

import torch

from .common import ConversionReport, StateDict
from .official import _apply_rules

Replacement = Union[str, Callable[[re.Match], str], None]
_CONV = {'a': '1', 'b': '2', 'c': '3'}
_STEM = {'1': ('0', '1'), '2': ('3', '4'), '3': ('6', '7')}
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_W = r'(weight|bias)'
BUFFER_NOTE = 'buffer that mmdeform recomputes from the input size in every forward pass'


def _block(match: re.Match) -> str:
    stage, block, branch, kind, name = match.groups()
    layer = f'backbone.layer{int(stage) + 1}.{block}'
    return f'{layer}.conv{_CONV[branch]}.{name}' if kind == 'conv' else \
        f'{layer}.bn{_CONV[branch]}.{name}'


def _stem(match: re.Match) -> str:
    conv, kind, name = match.groups()
    return f'backbone.stem.{_STEM[conv][0 if kind == "conv" else 1]}.{name}'


def _shortcut(match: re.Match) -> str:
    stage, block, kind, name = match.groups()
    return f'backbone.layer{int(stage) + 1}.{block}.downsample.' \
        f'{1 if kind == "conv" else 2}.{name}'


def _backbone_rules() -> List[Tuple[str, Replacement, str]]:
    blocks = r'backbone\.res_layers\.(\d)\.blocks\.(\d+)'
    return [
        (rf'backbone\.conv1\.conv1_([123])\.(conv|norm)\.{_BN}', _stem, ''),
        (rf'{blocks}\.branch2([abc])\.(conv|norm)\.{_BN}', _block, ''),
        # the stride-1 shortcut is ``short.{conv,norm}``, the stride-2 one
        # ``short.conv.{conv,norm}`` (after its AvgPool2d, which has no weights)
        (rf'{blocks}\.short(?:\.conv)?\.(conv|norm)\.{_BN}', _shortcut, ''),
    ]


def _conv_norm(prefix: str, target: str) -> List[Tuple[str, Replacement, str]]:
    """A ConvNormLayer ``prefix.{conv,norm}`` -> mmcv's ``target.{conv,bn}``."""
    groups = re.compile(prefix).groups
    return [(rf'{prefix}\.conv\.weight', f'{target}.conv.weight', ''),
            (rf'{prefix}\.norm\.{_BN}', f'{target}.bn.\\{groups + 1}', '')]


def _encoder_rules() -> List[Tuple[str, Replacement, str]]:
    aifi = r'encoder\.encoder\.(\d)\.layers\.(\d)'
    csp = r'encoder\.(fpn_blocks|pan_blocks)\.(\d)'
    return [
        # v1: input_proj.N.{0,1}; v2: input_proj.N.{conv,norm}
        (r'encoder\.input_proj\.(\d)\.(?:0|conv)\.weight', r'neck.0.input_proj.\1.conv.weight', ''),
        (rf'encoder\.input_proj\.(\d)\.(?:1|norm)\.{_BN}', r'neck.0.input_proj.\1.bn.\2', ''),
        (rf'{aifi}\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)',
         r'neck.0.encoder.\1.layers.\2.self_attn.attn.\3', ''),
        (rf'{aifi}\.linear1\.{_W}', r'neck.0.encoder.\1.layers.\2.ffn.layers.0.0.\3', ''),
        (rf'{aifi}\.linear2\.{_W}', r'neck.0.encoder.\1.layers.\2.ffn.layers.1.\3', ''),
        (rf'{aifi}\.norm([12])\.{_W}',
         lambda m: f'neck.0.encoder.{m[1]}.layers.{m[2]}.norms.{int(m[3]) - 1}.{m[4]}', ''),
        *_conv_norm(r'encoder\.(lateral_convs|downsample_convs)\.(\d)', r'neck.0.\1.\2'),
        *_conv_norm(rf'{csp}\.(conv[123])', r'neck.0.\1.\2.\3'),
        *_conv_norm(rf'{csp}\.bottlenecks\.(\d)\.(conv[12])', r'neck.0.\1.\2.blocks.\3.\4'),
    ]


def _decoder_rules(num_layers: int) -> List[Tuple[str, Replacement, str]]:
    layer = r'decoder\.decoder\.layers\.(\d+)'
    deform = r'(sampling_offsets|attention_weights|value_proj|output_proj)'
    return [
        *_conv_norm(r'decoder\.input_proj\.(\d)', r'neck.1.convs.\1'),
        (rf'{layer}\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)',
         r'decoder.layers.\1.self_attn.attn.\2', ''),
        (rf'{layer}\.cross_attn\.{deform}\.{_W}', r'decoder.layers.\1.cross_attn.\2.\3', ''),
        (rf'{layer}\.cross_attn\.num_points_scale', None, BUFFER_NOTE),
        (rf'{layer}\.linear1\.{_W}', r'decoder.layers.\1.ffn.layers.0.0.\2', ''),
        (rf'{layer}\.linear2\.{_W}', r'decoder.layers.\1.ffn.layers.1.\2', ''),
        (rf'{layer}\.norm([123])\.{_W}',
         lambda m: f'decoder.layers.{m[1]}.norms.{int(m[2]) - 1}.{m[3]}', ''),
        (rf'decoder\.query_pos_head\.layers\.(\d)\.{_W}', r'decoder.ref_point_head.layers.\1.\2',
         ''),
        (rf'decoder\.enc_output\.(?:0|proj)\.{_W}', r'memory_trans_fc.\1', ''),
        (rf'decoder\.enc_output\.(?:1|norm)\.{_W}', r'memory_trans_norm.\1', ''),
        (rf'decoder\.enc_score_head\.{_W}', rf'bbox_head.cls_branches.{num_layers}.\1', ''),
        (rf'decoder\.enc_bbox_head\.layers\.(\d)\.{_W}',
         rf'bbox_head.reg_branches.{num_layers}.layers.\1.\2', ''),
        (rf'decoder\.dec_score_head\.(\d+)\.{_W}', r'bbox_head.cls_branches.\1.\2', ''),
        (rf'decoder\.dec_bbox_head\.(\d+)\.layers\.(\d)\.{_W}',
         r'bbox_head.reg_branches.\1.layers.\2.\3', ''),
        (r'decoder\.denoising_class_embed\.weight', r'dn_query_generator.label_embedding.weight',
         ''),
        (r'decoder\.(anchors|valid_mask)', None, BUFFER_NOTE),
    ]


def official_rtdetr_rules(num_decoder_layers: int) -> List[Tuple[str, Replacement, str]]:
    """``(pattern, replacement, drop reason)`` for every official key; a ``None``
    replacement drops the key. ``num_decoder_layers``: the layers the official
    model builds (the encoder-output head follows them)."""
    return _backbone_rules() + _encoder_rules() + _decoder_rules(num_decoder_layers)


def official_rtdetr_version(keys) -> Optional[str]:
    """``'v1'`` or ``'v2'`` by the names only v2 uses, None if not an RT-DETR layout."""
    keys = set(keys)
    if 'decoder.enc_score_head.weight' not in keys:
        return None
    if 'decoder.enc_output.proj.weight' in keys or any(
            k.startswith('encoder.input_proj.') and '.conv.' in k for k in keys):
        return 'v2'
    return 'v1'


def rename_official_rtdetr(state_dict: StateDict) -> Tuple[StateDict, ConversionReport]:
    """Official names -> mmdeform names; nothing but the names changes."""
    layers = [int(m[1]) for m in (re.match(r'decoder\.dec_score_head\.(\d+)\.', k)
                                  for k in state_dict) if m]
    if not layers:
        return {}, ConversionReport(unmapped=sorted(state_dict))
    report = ConversionReport()
    out = _apply_rules(state_dict, official_rtdetr_rules(max(layers) + 1), report)
    return out, report


def convert_official_rtdetr(state_dict: StateDict,
                            checkpoint: dict) -> Tuple[StateDict, ConversionReport, dict]:
    """``run_converter``'s interface: ``state_dict`` is the first of
    ``convert_official_rtdetr.weights_entries`` that the file holds (``ema.module``,
    else ``model``)."""
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    version = official_rtdetr_version(state_dict)
    out, report = rename_official_rtdetr(state_dict)
    for key in list(out):  # FrozenBatchNorm2d (R50/R101) has no counter
        if key.startswith('backbone.') and key.endswith('.running_var'):
            counter = key[:-len('running_var')] + 'num_batches_tracked'
            if counter not in out:
                out[counter] = torch.tensor(0, dtype=torch.long)
                report.added[counter] = 'BatchNorm counter (FrozenBatchNorm2d has none)'
    entry = 'ema.module' if isinstance(checkpoint.get('ema'), dict) and \
        isinstance(checkpoint['ema'].get('module'), dict) else 'model'
    report.notes.append(f'converted the "{entry}" weights ({version or "unknown"} layout)')
    meta = dict(source_format=f'official RT-DETR{"v2" if version == "v2" else ""}',
                source_weights=entry)
    for key in ('last_epoch', 'epoch'):
        if isinstance(checkpoint.get(key), int):
            meta['source_epoch'] = checkpoint[key]
    return out, report, meta


#: where ``run_converter`` looks for the weights, in order (dotted: nested dicts); a
#: ``state_dict`` (an mmdet/mmdeform file) is read to say which family it is and refuse it
convert_official_rtdetr.weights_entries = ('ema.module', 'model', 'state_dict')
convert_official_rtdetr.source_family = 'official lyuwenyu/RT-DETR format'
