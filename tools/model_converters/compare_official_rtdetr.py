"""Compare mmdeform's RT-DETR / RT-DETRv2 with the official code (lyuwenyu/RT-DETR), end to end.

    python tools/model_converters/compare_official_rtdetr.py --official-root RTDETR_CHECKOUT \\
        --model rtdetrv2_r18vd --model rtdetr_r18vd_dec3

RTDETR_CHECKOUT is a checkout of lyuwenyu/RT-DETR (read at commit 068dfde);
the model code of its ``rtdetrv2_pytorch`` (v2) or ``rtdetr_pytorch`` (v1) is
imported from there and built from its YAML config with the backbone's
pretrained download off (nothing of it is part of mmdeform). The official model
gets random weights (every parameter and BN statistic moved, the zero-initialised
box heads too), is saved as an official file (``{'model': ..., 'ema': {'module':
...}}``), converted with ``tools/model_converters/official_rtdetr.py``'s code,
loaded strictly into the model of the matching config of configs/rtdetr/, and
both are run in eval mode on one random 640 x 640 image: the last decoder
layer's class logits and boxes (normalised cxcywh) are compared.

``--deploy`` also compares the deployed models (the official ``deploy()``, our
``switch_to_deploy()``). ``--dump-layout`` writes the official state-dict names
and shapes to ``tests/data/official_layouts/MODEL.json`` instead (the tests build
their random official checkpoints from those files).

Each official config is built in its own process: the official ``load_config``
has a mutable default argument, so a second config in one process would inherit
the first one's keys.
"""
import argparse
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import tempfile
import types
from typing import Dict, Tuple

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYOUTS = os.path.join(ROOT, 'tests', 'data', 'official_layouts')

#: name -> (official subdirectory, its YAML config, our config); the names are the checkpoints'
MODELS: Dict[str, Tuple[str, str, str]] = {
    'rtdetr_r18vd_dec3': ('rtdetr_pytorch', 'configs/rtdetr/rtdetr_r18vd_6x_coco.yml',
                          'configs/rtdetr/rtdetr_r18vd_dec3_6x_coco.py'),
    'rtdetr_r34vd_dec4': ('rtdetr_pytorch', 'configs/rtdetr/rtdetr_r34vd_6x_coco.yml',
                          'configs/rtdetr/rtdetr_r34vd_dec4_6x_coco.py'),
    'rtdetr_r50vd_m': ('rtdetr_pytorch', 'configs/rtdetr/rtdetr_r50vd_m_6x_coco.yml',
                       'configs/rtdetr/rtdetr_r50vd_m_6x_coco.py'),
    'rtdetr_r50vd': ('rtdetr_pytorch', 'configs/rtdetr/rtdetr_r50vd_6x_coco.yml',
                     'configs/rtdetr/rtdetr_r50vd_6x_coco.py'),
    'rtdetr_r101vd': ('rtdetr_pytorch', 'configs/rtdetr/rtdetr_r101vd_6x_coco.yml',
                      'configs/rtdetr/rtdetr_r101vd_6x_coco.py'),
    'rtdetrv2_r18vd': ('rtdetrv2_pytorch', 'configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml',
                       'configs/rtdetr/rtdetrv2_r18vd_120e_coco.py'),
    'rtdetrv2_r34vd': ('rtdetrv2_pytorch', 'configs/rtdetrv2/rtdetrv2_r34vd_120e_coco.yml',
                       'configs/rtdetr/rtdetrv2_r34vd_120e_coco.py'),
    'rtdetrv2_r50vd_m': ('rtdetrv2_pytorch', 'configs/rtdetrv2/rtdetrv2_r50vd_m_7x_coco.yml',
                         'configs/rtdetr/rtdetrv2_r50vd_m_7x_coco.py'),
    'rtdetrv2_r50vd': ('rtdetrv2_pytorch', 'configs/rtdetrv2/rtdetrv2_r50vd_6x_coco.yml',
                       'configs/rtdetr/rtdetrv2_r50vd_6x_coco.py'),
    'rtdetrv2_r101vd': ('rtdetrv2_pytorch', 'configs/rtdetrv2/rtdetrv2_r101vd_6x_coco.yml',
                        'configs/rtdetr/rtdetrv2_r101vd_6x_coco.py'),
}
#: the official buffers that are computed, not learnt: left as the official model makes them
COMPUTED_BUFFERS = ('anchors', 'valid_mask', 'num_points_scale')

# Imported by the official package but not on the model's path: tensorboard (its
# training logger), faster_coco_eval (its evaluator), transformers (v1's data code).
# They are replaced by empty modules whose attributes are empty classes.
_STUBBED = ('tensorboard', 'torch.utils.tensorboard', 'faster_coco_eval', 'transformers')


class _StubModule(types.ModuleType):
    __path__: list = []

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return type(name, (), {'__init__': lambda self, *args, **kwargs: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):

    def find_spec(self, name, path, target=None):
        if any(name == s or name.startswith(s + '.') for s in _STUBBED):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def build_official(official_root: str, name: str) -> nn.Module:
    """The official model ``name`` (a key of :data:`MODELS`), eval mode, its own init."""
    subdir, yml, _ = MODELS[name]
    code = os.path.join(official_root, subdir)
    if not os.path.isfile(os.path.join(code, yml)):
        raise FileNotFoundError(f'{os.path.join(code, yml)} does not exist: --official-root '
                                'must be a checkout of lyuwenyu/RT-DETR')
    if 'src' in sys.modules:
        raise RuntimeError('one official model per process (the official load_config keeps '
                           'state between calls)')
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, code)
    if subdir == 'rtdetr_pytorch':
        # v1's src/__init__.py imports its data code, which imports torchvision.datapoints
        # (removed from torchvision): import the model packages under a bare `src`
        package = types.ModuleType('src')
        package.__path__ = [os.path.join(code, 'src')]
        sys.modules['src'] = package
        for sub in ('core', 'nn', 'zoo'):
            importlib.import_module(f'src.{sub}')
    from src.core import YAMLConfig
    cwd = os.getcwd()
    os.chdir(code)  # the YAML includes are relative to the official directory
    try:
        model = YAMLConfig(yml, PResNet={'pretrained': False}).model
    finally:
        os.chdir(cwd)
    return model.eval()


def official_layout(model: nn.Module) -> Dict[str, list]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Move every parameter and BN statistic (the zero box heads too), keep the computed
    buffers: a swapped or missing tensor then changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or name.split('.')[-1] in COMPUTED_BUFFERS:
            continue
        noise = torch.randn(tensor.shape, generator=g) * scale
        if name.endswith('running_var'):
            tensor.mul_(1 + noise.abs())
        else:
            tensor.add_(noise)


def build_ours(config: str) -> nn.Module:
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdeform.registry import MODELS as REGISTRY
    from mmdeform.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(os.path.join(ROOT, config))
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdeform'):
        return REGISTRY.build(cfg.model).eval()


def convert_into(official: nn.Module, ours: nn.Module) -> None:
    """Save ``official`` as an official file, convert it, load the result strictly."""
    from mmdeform.converters import convert_official_rtdetr, run_converter
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, 'official.pth'), os.path.join(tmp, 'converted.pth')
        state = official.state_dict()
        torch.save(dict(model={k: torch.zeros_like(v) for k, v in state.items()},
                        ema=dict(module=state, updates=1000), last_epoch=1), src)
        run_converter(convert_official_rtdetr, src, dst)
        ours.load_state_dict(torch.load(dst, weights_only=True)['state_dict'], strict=True)


def sample_for(size: Tuple[int, int]):
    from mmdet.structures import DetDataSample
    return DetDataSample(metainfo=dict(img_shape=size, batch_input_shape=size, ori_shape=size,
                                       pad_shape=size, scale_factor=(1.0, 1.0)))


@torch.no_grad()
def run_ours(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The last decoder layer's (B, Q, classes) logits and (B, Q, 4) cxcywh boxes."""
    out = model._forward(x, [sample_for(tuple(x.shape[-2:])) for _ in range(len(x))])
    return out.all_cls_scores[-1], out.all_bbox_preds[-1]


@torch.no_grad()
def run_official(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return out['pred_logits'], out['pred_boxes']


def match_queries(logits_a, boxes_a, logits_b, boxes_b, tol=1e-4) -> Tuple[float, int]:
    """Order-free comparison of two (Q, C) logits + (Q, 4) boxes sets: each query of ``a``
    is paired with its nearest of ``b`` (max-norm over logits and box). In float32 two anchors
    whose scores differ by ~1e-6 can swap places in the top-k, which permutes the queries
    (and at the 300th place swaps one for another) without any weight being wrong.

    Returns the largest distance of a query within ``tol`` of its pair, and how many
    queries are farther than ``tol`` from every query of ``b``."""
    a, b = torch.cat([logits_a, boxes_a], -1), torch.cat([logits_b, boxes_b], -1)
    nearest = (a[:, None] - b[None]).abs().amax(-1).amin(1)
    close = nearest <= tol
    return (nearest[close].max().item() if close.any() else float('nan'),
            int((~close).sum()))


def deploy_ours(model: nn.Module) -> str:
    """Our deployed form: the detector's ``switch_to_deploy`` if it has one, else every
    submodule's (today the HybridEncoder's RepVGG fusion)."""
    if hasattr(model, 'switch_to_deploy'):
        model.switch_to_deploy()
        return 'model.switch_to_deploy()'
    done = []
    for name, module in model.named_modules():
        inside = any(name.startswith(f'{outer}.') for outer in done)
        if name and not inside and hasattr(module, 'switch_to_deploy'):
            module.switch_to_deploy()
            done.append(name)
    return ', '.join(f'{name}.switch_to_deploy()' for name in done) or 'nothing to deploy'


def compare_one(args) -> float:
    torch.manual_seed(args.seed)  # the official initialisation, before randomise() moves it
    official = build_official(args.official_root, args.model[0])
    if args.dump_layout:
        path = os.path.join(LAYOUTS, f'{args.model[0]}.json')
        with open(path, 'w') as f:
            json.dump(dict(source=f'lyuwenyu/RT-DETR@{args.commit} '
                           f'{"/".join(MODELS[args.model[0]][:2])}; model built on the CPU '
                           '(PResNet pretrained off), state_dict names and shapes',
                           num_parameters=sum(p.numel() for p in official.parameters()),
                           tensors=official_layout(official)), f, indent=1)
        print(f'wrote {path}')
        return 0.0
    randomise(official, args.seed)
    ours = build_ours(MODELS[args.model[0]][2])
    convert_into(official, ours)
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(args.seed + 1))
    if args.double:
        official, ours, x = official.double(), ours.double(), x.double()
    worst = 0.0
    stages = [('eval', None)] + ([('deploy', None)] if args.deploy else [])
    for stage, _ in stages:
        if stage == 'deploy':
            official.deploy()
            how = deploy_ours(ours)
            print(f'deployed: official model.deploy(), ours {how}')
        (la, ba), (lb, bb) = run_official(official, x), run_ours(ours, x)
        dl, db = (la - lb).abs().max().item(), (ba - bb).abs().max().item()
        worst = max(worst, dl, db)
        matched, unmatched = match_queries(la[0], ba[0], lb[0], bb[0])
        print(f'{args.model[0]} 640x640 {x.dtype} {stage}: logits {tuple(lb.shape)} max '
              f'|official - ours| = {dl:.3g} (max |official| {la.abs().max().item():.3g}); boxes '
              f'{db:.3g}; query by query after matching: {matched:.3g}, {unmatched} official '
              'queries without a counterpart within 1e-4')
    print(f'{args.model[0]}: largest difference {worst:.3g}')
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--official-root', required=True, help='checkout of lyuwenyu/RT-DETR')
    parser.add_argument('--model', action='append', choices=sorted(MODELS),
                        help='official model name (repeatable; default rtdetrv2_r18vd and '
                        'rtdetr_r18vd_dec3)')
    parser.add_argument('--all', action='store_true', help='every model of the table')
    parser.add_argument('--deploy', action='store_true', help='also compare the deployed models')
    parser.add_argument('--double', action='store_true', help='compare in float64 (no top-k '
                        'place swaps from float32 rounding)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--commit', default='068dfde', help='the commit of --official-root, '
                        'recorded by --dump-layout')
    parser.add_argument('--dump-layout', action='store_true',
                        help='write tests/data/official_layouts/MODEL.json and stop')
    args = parser.parse_args(argv)
    names = sorted(MODELS) if args.all else (args.model or ['rtdetrv2_r18vd', 'rtdetr_r18vd_dec3'])
    if len(names) == 1:
        args.model = names
        return compare_one(args)
    failed = []
    for name in names:  # one process per official config (see the module docstring)
        cmd = [sys.executable, os.path.abspath(__file__), '--official-root', args.official_root,
               '--model', name, '--seed', str(args.seed), '--commit', args.commit]
        cmd += ['--deploy'] * args.deploy + ['--dump-layout'] * args.dump_layout
        cmd += ['--double'] * args.double
        if subprocess.run(cmd).returncode:
            failed.append(name)
    if failed:
        sys.exit(f'failed: {failed}')
    return None


if __name__ == '__main__':
    main()
