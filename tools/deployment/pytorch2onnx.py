"""Export a trained detector to ONNX: standard operators only, any input size.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out FILE.onnx
        [--shape H W] [--opset 18] [--dynamic] [--no-deploy] [--device cpu]
        [--cfg-options K=V ...]

The file maps a normalised image batch ``images (B, 3, H, W)`` (the config's
mean/std and channel order applied, not padded) to ``boxes (B, K, 4)`` (xyxy in the
input's pixels), ``scores (B, K)`` and ``labels (B, K)``, ``K = test_cfg.max_per_img``,
selected as ``predict`` selects them. ``--dynamic`` makes B, H and W dynamic
(``batch``, ``height``, ``width``); without it the file takes one image of ``--shape``.
A model with ``switch_to_deploy()`` (RT-DETR) is exported fused (RepVGG blocks merged,
BatchNorm folded into the convs) unless ``--no-deploy``.
``--shape`` defaults to the test ``Resize`` of the config (its short side, and a 4:3
long side within its long side when ``keep_ratio``).

The mean, std, channel order, test scale and class names go into the file's
metadata, which ``demo/onnx_demo.py`` reads. The checkpoint is read by mmdeform's
restricted loader (docs/get_started.md, "Which files are trusted"). See
docs/deployment.md.
"""
import argparse
import os
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmdeform.utils.errors import InputError  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction

    from mmdeform.deployment import DEFAULT_OPSET
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--out', required=True, metavar='FILE.onnx', help='the ONNX file to write')
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='the example input size (default: from the test Resize)')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                   help=f'ONNX opset (default {DEFAULT_OPSET}; 19 for a DCN backbone)')
    p.add_argument('--dynamic', action='store_true',
                   help='batch, height and width dynamic (else one image of --shape)')
    p.add_argument('--no-deploy', action='store_true',
                   help='export a model that has switch_to_deploy() (RT-DETR) unfused')
    p.add_argument('--device', default='cpu', help='device the model is traced on')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. model.test_cfg.max_per_img=100')
    return p.parse_args(argv)


def default_shape(cfg):
    """``(H, W)`` of a typical test input: the test Resize's scale, ``(w, h)`` in mmdet."""
    from mmdeform.deployment.onnx import test_scale_of
    scale, keep_ratio = test_scale_of(cfg)
    if not keep_ratio:
        return scale[1], scale[0]
    short, long = min(scale), max(scale)
    return short, min(long, round(short * 4 / 3))


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file {path!r} does not exist')
    if not args.out.endswith('.onnx'):
        raise InputError(f'--out {args.out!r}: expected a file name ending in .onnx')
    if args.shape is not None and min(args.shape) < 1:
        raise InputError(f'--shape {args.shape[0]} {args.shape[1]}: expected positive H W')

    from mmdet.apis import init_detector

    from mmdeform.deployment import check_opset, config_metadata, export_onnx
    from mmdeform.utils import register_all_modules
    check_opset(args.opset)  # before the model is built: a wrong flag fails fast
    register_all_modules()
    model = init_detector(args.config, args.checkpoint, device=args.device,
                          cfg_options=args.cfg_options)
    shape = tuple(args.shape) if args.shape else default_shape(model.cfg)
    metadata = config_metadata(model.cfg, model, (model.dataset_meta or {}).get('classes'))
    metadata.update(config=osp.basename(args.config), checkpoint=osp.basename(args.checkpoint))
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    start = time.perf_counter()
    summary = export_onnx(model, args.out, shape=shape, opset=args.opset,
                          dynamic=args.dynamic, metadata=metadata,
                          deploy=not args.no_deploy)
    dims = summary['input_dims']
    fused = summary['deployed']
    fused = (f', fused first ({fused["repvgg_blocks"]} RepVGG blocks, {fused["conv_bn"]} '
             f'BatchNorm layers folded)' if fused else '')
    print(f'Exported {type(model).__name__} to {args.out} in {time.perf_counter() - start:.1f} s: '
          f'opset {summary["opset"]}, images ({dims["B"]}, 3, {dims["H"]}, {dims["W"]}), '
          f'{len(summary["op_types"])} operator types, all in the default ONNX domain; '
          f'checked with onnx.checker (full_check){fused}')


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
