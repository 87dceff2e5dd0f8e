"""Parameters and FLOPs of a detector's ``mode='tensor'`` forward on one image.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W] [--cfg-options ...]

Convention: one fused multiply-add = one FLOP (fvcore / detectron2), the
convention of the DETR and Deformable DETR papers' GFLOPs.

The default shape, 800 x 1216, is the papers' test resize (short side 800) with
a long side near the COCO val2017 average after resizing (~1200), rounded to a
multiple of 64 so that every feature level divides evenly. The papers average
over val2017 images of different sizes, so one fixed shape differs somewhat.

Counting:
- regular layers (conv, linear, matmul, norms): mmengine's jit-traced
  ``FlopAnalyzer``; elementwise ops, activations and softmax are not counted,
  as in fvcore;
- attention products of ``nn.MultiheadAttention`` (traced as
  ``aten::scaled_dot_product_attention``, which mmengine does not count):
  ``Nq * Nk * (d_qk + d_v)`` per batch and head;
- ``MSDeformAttn`` sampling, analytically: per query, head, level and point,
  4 multiply-adds per channel for the bilinear taps and 1 for the attention
  weighting, i.e. ``Nq * C * L * K * 5``. Its linear projections are regular
  layers. Its ``grid_sample`` (the CPU path; the CUDA kernel is invisible to the
  tracer) is not counted again by the tracer.

The model is built on the CPU with ``backbone.init_cfg = None``: FLOPs do not
depend on the weights, and nothing is downloaded.
"""
import argparse
import os.path as osp
import sys
from collections import Counter
from typing import Dict, List, Tuple

import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

DEFAULT_SHAPE = (800, 1216)
# Table 1 of Carion et al. 2020 (DETR) and Zhu et al. 2021 (Deformable DETR):
# GFLOPs averaged over COCO val2017 images, keyed by our config file names.
PAPER_GFLOPS = {
    'detr.py': (86, 'DETR R50'),
    'detr_dc5.py': (187, 'DETR-DC5 R50'),
    'detr_r101.py': (152, 'DETR R101'),
    'detr_r101_dc5.py': (253, 'DETR-DC5 R101'),
    'deformable_detr.py': (173, 'Deformable DETR'),
    'deformable_detr_refine.py': (173, '+ iterative box refinement'),
    'deformable_detr_refine_two_stage.py': (173, '++ two-stage Deformable DETR'),
    'deformable_detr_single_scale.py': (78, 'Deformable DETR, single scale'),
    'deformable_detr_single_scale_dc5.py': (128, 'Deformable DETR, single scale DC5'),
}
# DAT (Xia et al. 2022, Table 1) and DAT++ (Xia et al. 2023, Table 2): ImageNet GMACs at 224^2
PAPER_DAT_GMACS = {'dat_tiny': 4.6, 'dat_small': 9.0, 'dat_base': 15.8,
                   'dat_pp_tiny': 4.3, 'dat_pp_small': 9.4, 'dat_pp_base': 16.6}
# multiply-adds per channel and sampling point: 4 bilinear taps + 1 attention weight
MSDA_MACS_PER_POINT = 5
MIN_SIDE = 32  # the backbone's output stride: below it C5 is empty


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=list(DEFAULT_SHAPE),
                        metavar='SIZE', help='input H W (or one value for a square); '
                        f'default {DEFAULT_SHAPE[0]} {DEFAULT_SHAPE[1]}')
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.num_queries=100')
    parser.add_argument('--backbone-only', action='store_true',
                        help='count the backbone alone on a (1, 3, H, W) image')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config file {args.config!r} does not exist')
    if len(args.shape) not in (1, 2):
        parser.error(f'--shape takes H W or one size, got {len(args.shape)} values: {args.shape}')
    if min(args.shape) < MIN_SIDE:
        parser.error(f'--shape {" ".join(map(str, args.shape))}: each side must be at least '
                     f'{MIN_SIDE} px (the backbone\'s stride)')
    args.shape = tuple(args.shape * 2 if len(args.shape) == 1 else args.shape)
    return args


def sdpa_flop_jit(inputs: List, outputs: List) -> int:
    """``aten::scaled_dot_product_attention``: ``Q K^T`` and ``A V`` multiply-adds.

    q ``(..., Nq, d)``, k ``(..., Nk, d)``, v ``(..., Nk, dv)``: the leading
    dimensions (batch, heads) multiply both products.
    """
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def msda_sampling_flops(module, batch: int, num_queries: int) -> int:
    """Multiply-adds of one ``MSDeformAttn`` call outside its linear layers:
    ``B * Nq * M * L * K * (C / M) * 5`` (bilinear taps and weighting)."""
    return (batch * num_queries * module.num_heads * module.num_levels * module.num_points *
            (module.embed_dims // module.num_heads) * MSDA_MACS_PER_POINT)


def dat_analytic_flops(module, x, out) -> int:
    """Multiply-adds of one DAT attention block that the tracer does not see (see above)."""
    from mmdeform.models.backbones.dat_blocks import DeformableAttention, NeighborhoodAttention
    B, C, H, W = x.shape
    if isinstance(module, NeighborhoodAttention):
        k = module.kernel
        return 2 * B * max(H, k) * max(W, k) * C * k * k
    if isinstance(module, DeformableAttention):
        s = module.conv_offset[0].stride[0]
        num_keys = -(-H // s) * -(-W // s)
        return B * num_keys * C * 4 + B * module.num_heads * H * W * num_keys * 4
    return 0


class BackboneForward(nn.Module):
    """``backbone(inputs)`` for ``--backbone-only``."""

    def __init__(self, detector: nn.Module, samples=None) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, inputs):
        return tuple(self.detector.backbone(inputs))


class TensorForward(nn.Module):
    """``detector(inputs, samples, mode='tensor')`` as a module of one tensor,
    returning a tuple of tensors, which is what the jit tracer accepts."""

    def __init__(self, detector: nn.Module, samples) -> None:
        super().__init__()
        self.detector = detector
        self.samples = samples

    def forward(self, inputs):
        return tuple(t for t in self.detector(inputs, self.samples, mode='tensor')
                     if t is not None)


def build_model(cfg):
    from mmdeform.registry import MODELS
    cfg.model.backbone.init_cfg = None
    print('Building the model with model.backbone.init_cfg = None (random weights, no '
          'download): FLOPs and parameter counts do not depend on the weights.')
    return MODELS.build(cfg.model).eval()


def one_image(shape: Tuple[int, int]):
    from mmdet.structures import DetDataSample
    h, w = shape
    sample = DetDataSample()
    # no padding: the padding masks are None, as for a single test image
    sample.set_metainfo(dict(img_shape=(h, w), batch_input_shape=(h, w), pad_shape=(h, w),
                             ori_shape=(h, w), scale_factor=(1.0, 1.0)))
    return torch.zeros(1, 3, h, w), [sample]


def analyze(model: nn.Module, shape: Tuple[int, int], backbone_only: bool = False) -> dict:
    """Count everything; returns the totals, the per-child breakdown and the ops
    the tracer saw but did not count."""
    from mmengine.analysis import FlopAnalyzer

    from mmdeform.models.backbones.dat_blocks import DeformableAttention, NeighborhoodAttention
    from mmdeform.models.layers.msdeform_attn import MSDeformAttn
    inputs, samples = one_image(shape)
    msda_calls: List[Tuple[str, int]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, MSDeformAttn):
            def record(mod, args, kwargs, name=name):
                query = args[0] if args else kwargs['query']
                msda_calls.append((name, msda_sampling_flops(mod, query.shape[0],
                                                             query.shape[1])))
            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
        if isinstance(module, (DeformableAttention, NeighborhoodAttention)):
            def record_dat(mod, args, output, name=name):
                msda_calls.append((name, dat_analytic_flops(mod, args[0], output)))
            handles.append(module.register_forward_hook(record_dat))
    wrapper = BackboneForward if backbone_only else TensorForward
    analyzer = FlopAnalyzer(wrapper(model, samples), (inputs, ))
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit,
                           'aten::grid_sampler', None)  # counted analytically instead
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    try:
        with torch.no_grad():
            traced = analyzer.total()
            by_module = {k[len('detector.'):]: v for k, v in analyzer.by_module().items()
                         if k.startswith('detector.')}
            uncounted = analyzer.unsupported_ops()
    finally:
        for h in handles:
            h.remove()
    msda_total = sum(f for _, f in msda_calls)
    rows: Dict[str, int] = {}
    for child, _ in model.named_children():
        if not backbone_only or child == 'backbone':
            rows[child] = by_module.get(child, 0)
    for name, flops in msda_calls:
        rows[name.split('.')[0]] += flops
    rows['(detector itself)'] = traced + msda_total - sum(rows.values())
    return dict(traced=traced, msda=msda_total, msda_calls=len(msda_calls),
                total=traced + msda_total, rows=rows, uncounted=Counter(uncounted))


def count_params(model: nn.Module) -> Tuple[int, int]:
    from mmdeform.utils import count_parameters
    return count_parameters(model), count_parameters(model, exclude_backbone_norms=True)


def g(flops: int) -> str:
    return f'{flops / 1e9:.3f} G'


def report(args, result: dict, params: Tuple[int, int]) -> None:
    h, w = args.shape
    print(f'Config: {args.config}')
    print(f'Input: 1 x 3 x {h} x {w} (one image, no padding), mode=\'tensor\' forward')
    print('Convention: 1 FLOP = 1 fused multiply-add (fvcore/detectron2, as in the DETR and '
          'Deformable DETR papers); elementwise ops, activations and softmax are not counted')
    print(f'Parameters: {params[0]:,} ({params[0] / 1e6:.2f} M); without the backbone\'s '
          f'frozen norm parameters (requires_grad=False here, FrozenBatchNorm2d buffers in '
          f'the official repos, so the official count): {params[1]:,} '
          f'({params[1] / 1e6:.2f} M)')
    print(f'FLOPs, regular layers (mmengine jit counter): {result["traced"]:,} '
          f'({g(result["traced"])})')
    print(f'FLOPs, deformable sampling and DAT attention (analytic, {result["msda_calls"]} '
          f'calls): {result["msda"]:,} ({g(result["msda"])})')
    print(f'FLOPs, total: {result["total"]:,} ({g(result["total"])})')
    print('Per module:')
    for name, flops in result['rows'].items():
        if flops == 0:  # e.g. the data preprocessor, the losses
            continue
        print(f'  {name:20s} {flops:>18,} ({g(flops)})')
    if result['uncounted']:
        ops = ', '.join(f'{k} x{v}' for k, v in sorted(result['uncounted'].items()))
        print(f'Not counted: {ops}')
        if 'prim::PythonOp' in result['uncounted']:
            print('WARNING: prim::PythonOp are custom autograd functions (e.g. mmcv\'s '
                  'modulated deformable convolution): their FLOPs are missing, the total '
                  'is a lower bound.')
    arch = getattr(args, 'dat_arch', None)
    if arch in PAPER_DAT_GMACS and args.backbone_only:
        print(f'Paper (ImageNet, {arch} at 224 x 224): {PAPER_DAT_GMACS[arch]} GMACs; this '
              f'backbone at {h} x {w}: {result["total"] / 1e9:.2f} GMACs')
        return
    paper = PAPER_GFLOPS.get(osp.basename(args.config))
    if paper is None:
        print(f'Paper: no published figure mapped to {osp.basename(args.config)!r} '
              f'(known: {", ".join(sorted(PAPER_GFLOPS))})')
    else:
        gflops, name = paper
        print(f'Paper (Table 1, {name}): {gflops} GFLOPs averaged over COCO val2017 '
              f'(~800 x ~1200 after resizing); this model at {h} x {w}: '
              f'{result["total"] / 1e9:.1f} GFLOPs ({result["total"] / 1e9 / gflops:.2f}x). '
              'A single fixed shape differs somewhat from the average.')


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config

    from mmdeform.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if 'model' not in cfg or 'backbone' not in cfg.model:
        raise KeyError(f'{args.config}: no model.backbone in the config')
    model = build_model(cfg)
    params = count_params(model)
    arch = cfg.model.backbone.get('arch')
    args.dat_arch = arch if cfg.model.backbone.type == 'DAT' and isinstance(arch, str) else None
    result = analyze(model, args.shape, args.backbone_only)
    report(args, result, params)
    return result


if __name__ == '__main__':
    main()
