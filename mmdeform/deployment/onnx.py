"""Our detectors as ONNX files of standard operators, at any input size.

One file per detector, from a normalised image batch ``images (B, 3, H, W)`` to the
final detections, selected exactly as ``predict`` selects them (the head's
:meth:`~mmdeform.models.dense_heads.DETRHead.detections`):

* ``boxes (B, K, 4)``: xyxy in the pixels of the input (clamped to it),
* ``scores (B, K)``, ``labels (B, K)`` (int64), with ``K = test_cfg.max_per_img``.

The graph comes from ``torch.export`` (non-strict) with ``B``, ``H`` and ``W`` dynamic,
then ``torch.onnx.export(..., dynamo=True)``:

* deformable attention (``torch.ops.mmdeform.ms_deform_attn``) becomes one
  ``GridSample`` per level (:func:`mmdeform.ops.library.ms_deform_attn_onnx`), which
  needs opset 16; the level shapes and starts are computed in the graph from the
  feature maps' shapes, never baked in;
* neighbourhood attention (DAT++) is decomposed into its PyTorch path (slices, a
  replicate pad, products and sums);
* everything else is aten's standard translation.

The file is checked with ``onnx.checker.check_model(full_check=True)`` and must hold
operators of the default domain only (:func:`custom_domains`). The preprocessing a
runtime needs (mean, std, channel order, test scale, class names) is stored in the
file's metadata (:data:`METADATA_KEYS`), which ``demo/onnx_demo.py`` reads.
"""
import json
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmdeform.utils.errors import InputError, ReportedError

MIN_OPSET = 16  # GridSample, the deformable attention's sampling, is an ONNX op from 16 on
DEFAULT_OPSET = 18  # what torch's exporter builds natively (others are converted from it)
DEFORM_CONV_OPSET = 19  # DeformConv, for DCN backbones
MAX_OPSET = 20
INPUT_NAMES = ['images']
OUTPUT_NAMES = ['boxes', 'scores', 'labels']
METADATA_KEYS = ('mmdeform_model', 'mean', 'std', 'bgr_to_rgb', 'test_scale', 'keep_ratio',
                 'classes', 'size_divisor')


class ExportError(ReportedError, RuntimeError):
    """A model or a setting that cannot be exported; the message names the module or value."""


class ExportWrapper(nn.Module):
    """``images (B, 3, H, W)`` -> ``(boxes, scores, labels)`` of a DETR-family detector,
    for a batch of unpadded images of one size (``H x W``).

    The detector's steps are its own (``extract_feat``, ``forward_transformer``, the
    head's forward and :meth:`detections`); only the data samples, which give the
    padding masks, are replaced by one sample saying that no image is padded.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        height, width = images.shape[-2:]
        # what the model reads of its data samples at inference; a plain namespace, as a
        # DetDataSample deep-copies its metainfo, which cannot copy symbolic sizes
        unpadded = [SimpleNamespace(img_shape=(height, width), batch_input_shape=(height, width))]
        head = self.detector.bbox_head
        head_inputs = self.detector.forward_transformer(self.detector.extract_feat(images),
                                                        unpadded)
        outputs = head(head_inputs)
        return head.detections(outputs.all_cls_scores[-1], outputs.all_bbox_preds[-1],
                               height, width)


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise InputError(f'--opset {opset}: deformable attention is exported as ONNX '
                         f'GridSample, an operator from opset {MIN_OPSET} on; use --opset '
                         f'{DEFAULT_OPSET} (the default) or higher')
    if opset < DEFAULT_OPSET:
        raise InputError(f'--opset {opset}: torch {torch.__version__}\'s exporter builds '
                         f'opset {DEFAULT_OPSET}, and onnx\'s version converter cannot take these '
                         f'graphs lower (opset 16 lacks LayerNormalization; at 17 it fails on '
                         f'ReduceMean axes computed in the graph); use --opset {DEFAULT_OPSET} '
                         f'or higher')
    if opset > MAX_OPSET:
        raise InputError(f'--opset {opset}: torch {torch.__version__}\'s exporter and the '
                         f'checked translations go up to opset {MAX_OPSET}')


def export_blockers(model: nn.Module, opset: int = DEFAULT_OPSET) -> List[str]:
    """``'<module path> (<type>): <why>'`` for every module that cannot be exported with
    standard operators at ``opset`` (checked before tracing, so that the user reads the
    module's name rather than a tracer's error)."""
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

    from mmdeform.models.layers.msdeform_attn import MSDeformAttn
    from mmdeform.ops.deform_conv import ModulatedDeformConv2dPack
    blockers = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, ModulatedDeformConv2dPack):
            if opset < DEFORM_CONV_OPSET:
                blockers.append(f'{name} ({kind}): deformable convolution is ONNX DeformConv, '
                                f'an operator from opset {DEFORM_CONV_OPSET} on; use --opset '
                                f'{DEFORM_CONV_OPSET}')
        elif isinstance(module, (ModulatedDeformConv2d, DeformConv2d)):
            blockers.append(f"{name} ({kind}): mmcv's deformable convolution layer has no "
                            "export path; use type='DCNv2' (mmdeform's "
                            'ModulatedDeformConv2dPack), which exports as DeformConv')
        elif isinstance(module, MSDeformAttn) and module.backend not in (None, 'auto', 'cpp'):
            blockers.append(
                f"{name} (MSDeformAttn): backend={module.backend!r} reads the level shapes as "
                "values, which an export cannot follow; set backend=None (the default)")
    return blockers


def custom_domains(model_proto) -> List[str]:
    """The non-standard operator domains of an ONNX model (every function too)."""
    domains = {node.domain for node in model_proto.graph.node}
    for function in model_proto.functions:
        domains |= {node.domain for node in function.node}
    return sorted(d for d in domains if d not in ('', 'ai.onnx'))


def _dynamic_shapes(dynamic: bool):
    """Batch, height and width dynamic. The batch is a named dim (``Dim.DYNAMIC`` lets
    export fix it); height and width are ``Dim.DYNAMIC``, as their valid range depends on
    the model (strides, the two-stage top-k), which export works out itself."""
    if not dynamic:
        return None
    auto = torch.export.Dim.DYNAMIC
    return {'images': {0: torch.export.Dim('batch', min=1, max=1024), 2: auto, 3: auto}}


def _input_dims(model_proto) -> Dict[str, object]:
    dims = model_proto.graph.input[0].type.tensor_type.shape.dim
    return {axis: (d.dim_param or d.dim_value) for axis, d in zip('BCHW', dims)}


def _name_dims(model_proto) -> None:
    """The input's symbolic dims renamed ``batch``, ``height`` and ``width`` in every
    value of the graph that uses them (export calls them ``s14`` and the like)."""
    dims = _input_dims(model_proto)
    names = {dims[a]: n for a, n in zip('BHW', ('batch', 'height', 'width'))
             if isinstance(dims[a], str) and dims[a]}
    graph = model_proto.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def export_onnx(model: nn.Module, out: str, shape: Sequence[int] = (800, 1066),
                batch: Optional[int] = None,
                opset: int = DEFAULT_OPSET, dynamic: bool = True,
                metadata: Optional[Dict[str, object]] = None, verbose: bool = False,
                deploy: bool = True) -> Dict:
    """Write ``model`` (a DETR-family detector) to ``out`` as ONNX.

    A model with ``switch_to_deploy()`` (RT-DETR) is fused first when ``deploy``
    (in place: ``model`` is eval-only afterwards); the summary's ``deployed`` says what
    was fused, or None.

    Args:
        shape: ``(H, W)`` of the example input the graph is traced with.
        batch: its batch size; default 2 when ``dynamic`` (torch.export fixes a dim
            traced at size 1), else 1.
        opset: ONNX opset, :data:`DEFAULT_OPSET` to :data:`MAX_OPSET` (see :func:`check_opset`).
        dynamic: batch, height and width dynamic (else fixed to the example's).
        metadata: extra ``metadata_props`` (values JSON-encoded unless strings).

    Returns a summary: the opset, the operator types used, the input's dims.
    """
    import onnx

    check_opset(opset)
    blockers = export_blockers(model, opset)
    if blockers:
        raise ExportError(f'{type(model).__name__} cannot be exported to ONNX with standard '
                          f'operators: {"; ".join(blockers)}')
    from mmdeform.ops.library import REGISTERED, onnx_translations
    if not REGISTERED:
        raise ExportError('ONNX export needs torch.ops.mmdeform.* (torch>=2.4 and the C++ '
                          f'extension built); torch {torch.__version__}')
    deployed = None
    if deploy and callable(getattr(model, 'switch_to_deploy', None)):
        deployed = model.switch_to_deploy()
    wrapper = ExportWrapper(model.eval()).eval()
    batch = batch or (2 if dynamic else 1)
    images = torch.randn(batch, 3, *shape, device=next(model.parameters()).device)
    with torch.no_grad():
        program = torch.export.export(wrapper, (images, ), dynamic_shapes=_dynamic_shapes(dynamic),
                                      strict=False)
        onnx_program = torch.onnx.export(
            program, (images, ), dynamo=True, opset_version=opset, input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES, custom_translation_table=onnx_translations(opset),
            verbose=verbose, optimize=False)
    proto = onnx_program.model_proto
    built = {o.domain: o.version for o in proto.opset_import}.get('', None)
    if built != opset:
        raise ExportError(f'--opset {opset}: torch {torch.__version__}\'s exporter built the '
                          f'graph at opset {built} and could not convert it')
    for key, value in (metadata or {}).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(
            key=key, value=value if isinstance(value, str) else json.dumps(value)))
    dims = _input_dims(proto)
    if dynamic and not all(isinstance(dims[a], str) and dims[a] for a in 'BHW'):
        raise ExportError(f'the export fixed input dims that should be dynamic ({dims}): a '
                          'size was read as a constant while tracing')
    _name_dims(proto)
    dims = _input_dims(proto)
    domains = custom_domains(proto)
    if domains:
        raise ExportError(f'the ONNX graph uses non-standard operator domains {domains}')
    onnx.save(proto, out)
    onnx.checker.check_model(out, full_check=True)
    return dict(opset=opset, input_dims=dims, deployed=deployed,
                op_types=sorted({n.op_type for n in proto.graph.node}))


def test_scale_of(cfg) -> Tuple[List[int], bool]:
    """``(scale (w, h), keep_ratio)`` of the config's one test ``Resize``."""
    resize = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'].endswith('Resize')]
    if len(resize) != 1:
        raise InputError(f'config: the test pipeline must hold one Resize to export its '
                         f'scale to ONNX metadata, found {len(resize)}')
    scale = resize[0].get('scale')
    if scale is None:
        raise InputError("config: the test pipeline's Resize has no 'scale' (scale_factor "
                         'resizing is not supported by the ONNX demo)')
    return list(scale), bool(resize[0].get('keep_ratio', False))


def config_metadata(cfg, model: nn.Module, classes: Optional[Sequence[str]] = None) -> Dict:
    """What a runtime needs to prepare an image as the config's test pipeline does and to
    name the classes: ``mean``, ``std`` (in the order of the channels the preprocessor
    normalises), ``bgr_to_rgb``, ``test_scale`` (w, h) and ``keep_ratio`` of the test
    ``Resize``, the ``size_divisor`` the preprocessor pads to (the exported graph takes
    unpadded images), and the ``classes``."""
    pre = model.data_preprocessor
    scale, keep_ratio = test_scale_of(cfg)
    if classes is None:
        meta = cfg.test_dataloader.dataset.get('metainfo') or {}
        classes = meta.get('classes')
    if not classes:
        raise InputError('no class names: give a checkpoint with dataset_meta or a config '
                         'whose test_dataloader.dataset.metainfo has classes')
    return dict(mmdeform_model=type(model).__name__, mean=pre.mean.flatten().tolist(),
                std=pre.std.flatten().tolist(), bgr_to_rgb=bool(pre._channel_conversion),
                test_scale=scale, keep_ratio=keep_ratio, classes=list(classes),
                size_divisor=int(getattr(pre, 'pad_size_divisor', 1)))
