"""Compare mmdeform's DAT with the official DAT / DAT++ code, stage by stage.

    python tools/model_converters/compare_official_dat.py --repo DAT_CHECKOUT \\
        --config configs/dat_tiny.yaml --arch dat_pp_tiny --size 224 224 --size 512 640

DAT_CHECKOUT is a checkout of LeapLabTHU/DAT (commit 566a593 for the CVPR 2022
models, HEAD for DAT++); its ``models`` package is imported from there and
needs ``timm`` and ``einops`` (nothing of it is part of mmdeform). DAT++'s
neighbourhood blocks import ``natten.functional``'s 0.14-era functions; when
natten is not installed, a plain PyTorch stand-in written here (row by row,
with NATTEN's window and bias rules) is used instead.

The official model gets random weights (larger than its initialisation, so the
offsets move the sampling points by pixels), is saved as an official file
(``{'model': ..., 'config': <non-tensor>}``), converted with
``tools/model_converters/official_dat.py``'s code, loaded strictly into
``DAT(arch)``, and both models' stage outputs (before the output norms) are
compared.

Instead of comparing, ``--dump-layout FILE`` writes the official key names and
shapes (``tests/data/official_layouts/*.json``), and ``--write-fixture FILE``
gives the official model the weights that :func:`seeded_official_state`
derives from the names and shapes in ``tests/data/official_layouts/ARCH.json``
alone, runs :func:`seeded_input` in float64 and adds the stage outputs'
summaries (:func:`summarise`) under ``--arch`` to FILE; the test
``tests/test_converters/test_official_dat_outputs.py`` rebuilds the same
weights from that layout, without the official code. ``--set KEY=VALUE``
changes a constructor argument of the config (a smaller model for the test).
"""
import argparse
import copy
import json
import math
import os
import sys
import tempfile
import types
from typing import Dict, List, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _natten_stand_in() -> types.ModuleType:
    """``natten.functional`` 0.14's QK+RPB and AV functions, dilation 1, in PyTorch."""

    def windows(length, kernel, device):
        return (torch.arange(length, device=device) - kernel // 2).clamp(0, length - kernel)

    class QKRPB:
        @staticmethod
        def apply(q, k, rpb, kernel, dilation):  # q, k: (B, heads, H, W, hc)
            assert dilation == 1
            B, nh, H, W, _ = q.shape
            starts_w = windows(W, kernel, q.device)
            cols = starts_w[:, None] + torch.arange(kernel, device=q.device)  # W, k
            rows_all = windows(H, kernel, q.device)
            out = []
            for i in range(H):
                r0 = int(rows_all[i])
                keys = k[:, :, r0:r0 + kernel][:, :, :, cols]  # B, nh, k, W, k, hc
                logits = torch.einsum('bnwc,bnawdc->bnwad', q[:, :, i], keys)
                bias_r = rpb[:, kernel - 1 + r0 - i:2 * kernel - 1 + r0 - i]  # nh, k, 2k-1
                idx = (cols - torch.arange(W, device=q.device)[:, None]) + kernel - 1  # W, k
                bias = bias_r[:, :, idx].permute(0, 2, 1, 3)  # nh, W, k, k
                out.append((logits + bias).flatten(-2))
            return torch.stack(out, 2)  # B, nh, H, W, k*k

    class AV:
        @staticmethod
        def apply(attn, v, kernel, dilation):
            B, nh, H, W, _ = attn.shape
            cols = windows(W, kernel, v.device)[:, None] + torch.arange(kernel, device=v.device)
            rows_all = windows(H, kernel, v.device)
            out = []
            for i in range(H):
                r0 = int(rows_all[i])
                vals = v[:, :, r0:r0 + kernel][:, :, :, cols]  # B, nh, k, W, k, hc
                a = attn[:, :, i].view(B, nh, W, kernel, kernel)
                out.append(torch.einsum('bnwad,bnawdc->bnwc', a, vals))
            return torch.stack(out, 2)

    module = types.ModuleType('natten.functional')
    module.NATTEN2DQKRPBFunction, module.NATTEN2DAVFunction = QKRPB, AV
    return module


def build_official(repo: str, config: str, overrides: Sequence[str] = ()):
    """The official ``models.dat.DAT`` of ``config``, each ``key=value`` (YAML) of
    ``overrides`` replacing that constructor argument (a smaller model, say)."""
    try:
        import natten.functional  # noqa: F401
    except ImportError:
        sys.modules['natten'] = types.ModuleType('natten')
        sys.modules['natten.functional'] = _natten_stand_in()
    import yaml
    sys.path.insert(0, repo)
    from models.dat import DAT as OfficialDAT
    with open(os.path.join(repo, config) if not os.path.isabs(config) else config) as f:
        kwargs = yaml.safe_load(f)['MODEL']['DAT']
    for item in overrides:
        key, value = item.split('=', 1)
        if key not in kwargs:
            raise KeyError(f'--set {item}: {config} has no argument {key!r}')
        kwargs[key] = yaml.safe_load(value)
    kwargs['drop_path_rate'] = 0.0
    return OfficialDAT(**kwargs).eval()


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith('conv_offset.3.weight'):
                p.copy_(noise * 0.5)  # offsets of a few pixels
            elif name.endswith(('rpe_table', 'rpb', 'relative_position_bias_table')):
                p.copy_(noise * 0.5)
            elif p.dim() == 1:
                p.add_(noise * 0.1)
            else:
                p.mul_(1 + 0.1 * noise)


# buffers in the official state_dict: recomputed by mmdeform, dropped by the converter
BUFFERS = ('relative_position_index', 'attn_mask')
TABLES = ('rpe_table', 'rpb', 'relative_position_bias_table')


def seeded_official_state(layout: Dict[str, Sequence[int]], seed: int = 0):
    """float64 weights for every parameter in ``layout`` (name -> shape), from the
    names and shapes only: one generator, names in sorted order, uniform noise.

    Weights scale the variance by gain^2 (fan-in scaled uniform noise; gain 0.7,
    and 0.3 for DAT++'s local perception units ``x + DWConv(x)``, which would
    otherwise double the residual stream in every block); norms are 1 +- 0.2,
    biases +- 0.1 and position-bias tables +- 0.5, so every term moves the
    outputs, which stay within tens (stage outputs up to 25 for DAT-T++).
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(layout):
        if name.endswith(BUFFERS):
            continue
        shape = list(layout[name])
        u = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1  # variance 1/3
        if name.endswith(TABLES):
            state[name] = 0.5 * u
        elif name.endswith('norm.weight'):
            state[name] = 1 + 0.2 * u
        elif len(shape) == 1:
            state[name] = 0.1 * u
        else:
            gain = 0.3 if 'local_perception_units' in name else 0.7
            state[name] = gain * (3 / math.prod(shape[1:])) ** 0.5 * u
    return state


def seeded_input(height: int, width: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=g, dtype=torch.float64) * 2 - 1


def sample_indices(shape: Sequence[int], count: int = 512) -> torch.Tensor:
    """``count`` flat indices spread evenly over a tensor of ``shape`` (all if fewer)."""
    numel = math.prod(shape)
    return torch.linspace(0, numel - 1, min(count, numel), dtype=torch.float64).round().long()


def summarise(outputs: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Per stage output (1, C, H, W): the map averaged over channels (H, W), the
    channels averaged over the map (C), and :func:`sample_indices` of it."""
    summary = {}
    for i, out in enumerate(outputs):
        summary[f'stage{i}.channel_mean'] = out[0].mean(0)
        summary[f'stage{i}.spatial_mean'] = out[0].mean((1, 2))
        summary[f'stage{i}.samples'] = out.flatten()[sample_indices(out.shape)]
    return summary


def stage_outputs(model: torch.nn.Module, x: torch.Tensor, official: bool):
    outs = []
    hooks = [s.register_forward_hook(
        lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o)) for s in model.stages]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def official_layout(model: torch.nn.Module) -> Dict[str, List[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def describe_source(args) -> str:
    overrides = f' with {" ".join(args.set)}' if args.set else ''
    return f'LeapLabTHU/DAT@{args.commit} {args.config}{overrides}'


def dump_layout(official: torch.nn.Module, args) -> None:
    with open(args.dump_layout, 'w') as f:
        json.dump(dict(source=f'{describe_source(args)} '
                       '(models.dat.DAT state_dict, built on the CPU)', arch=args.arch,
                       num_parameters=sum(p.numel() for p in official.parameters()),
                       tensors=official_layout(official)), f, indent=1)


def write_fixture(official: torch.nn.Module, args) -> None:
    """Run the official model with :func:`seeded_official_state` on :func:`seeded_input`
    in float64 and store the summaries of its stage outputs under ``args.arch``."""
    import einops
    import timm
    layout_file = os.path.join(ROOT, 'tests', 'data', 'official_layouts', f'{args.arch}.json')
    with open(layout_file) as f:
        layout = json.load(f)['tensors']
    if official_layout(official) != layout:
        raise ValueError(f'{args.config} at {args.repo} does not build the layout in {layout_file}')
    if len(args.size or []) != 1:
        raise ValueError('--write-fixture takes exactly one --size H W')
    official = official.double()
    missing, unexpected = official.load_state_dict(seeded_official_state(layout), strict=False)
    assert not unexpected and all(k.endswith(BUFFERS) for k in missing), (missing, unexpected)
    size = args.size[0]
    # v1's deformable blocks make their offset range [1/Hk, 1/Wk] with torch.tensor, in
    # the default dtype: float32 would round 1/14 and move the outputs by 6e-9
    torch.set_default_dtype(torch.float64)
    try:
        outputs = stage_outputs(official, seeded_input(*size), True)
    finally:
        torch.set_default_dtype(torch.float32)
    natten = sys.modules['natten']
    entry = dict(summarise(outputs), input_size=torch.tensor(size),
                 source=describe_source(args),
                 versions=f'torch {torch.__version__}, timm {timm.__version__}, '
                 f'einops {einops.__version__}, natten '
                 f'{getattr(natten, "__version__", "stand-in of this script")}')
    fixture = torch.load(args.write_fixture, weights_only=True) \
        if os.path.exists(args.write_fixture) else {}
    fixture[args.arch] = entry
    torch.save(fixture, args.write_fixture)
    for i, out in enumerate(outputs):
        print(f'{args.arch} stage {i}: {tuple(out.shape)} max |official| '
              f'{out.abs().max().item():.3g}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repo', required=True, help='checkout of LeapLabTHU/DAT')
    parser.add_argument('--config', required=True, help='its yaml, e.g. configs/dat_tiny.yaml')
    parser.add_argument('--arch', required=True, help='mmdeform arch, e.g. dat_pp_tiny (with '
                        '--write-fixture: the name of the layout and of the entry)')
    parser.add_argument('--size', type=int, nargs=2, action='append', metavar=('H', 'W'))
    parser.add_argument('--set', action='append', default=[], metavar='KEY=YAML',
                        help='replace an argument of the config, e.g. "depths=[2,2,2,2]"')
    parser.add_argument('--commit', default='unknown',
                        help='the commit of --repo, recorded in what the two options below write')
    parser.add_argument('--dump-layout', help='write the official state_dict layout as JSON')
    parser.add_argument('--write-fixture', help='add the seeded float64 outputs of the official '
                        'model to this .pt file (see the module docstring) and stop')
    parser.add_argument('--double', action='store_true', help='compare in float64')
    parser.add_argument('--fp64-reference', action='store_true',
                        help='also run the official model in float64 and report how far each '
                        'float32 model is from it (the official code\'s own rounding error '
                        'next to ours)')
    args = parser.parse_args(argv)

    official = build_official(args.repo, args.config, args.set)
    if args.dump_layout:
        dump_layout(official, args)
    if args.write_fixture:
        write_fixture(official, args)
    if args.dump_layout or args.write_fixture:
        return None

    from mmdeform.converters import convert_official_dat
    from mmdeform.converters.common import run_converter
    from mmdeform.models.backbones import DAT
    from mmdeform.utils import register_all_modules
    register_all_modules()

    randomise(official)
    state = official.state_dict()
    ours = DAT(args.arch, drop_path_rate=0.0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, 'official.pth'), os.path.join(tmp, 'converted.pth')
        # the official files also hold a yacs CfgNode; any non-tensor object stands in for it
        torch.save(dict(model=state, config=argparse.Namespace(arch=args.arch), epoch=299), src)
        run_converter(convert_official_dat, src, dst)
        ours.load_state_dict(torch.load(dst, weights_only=True)['state_dict'], strict=True)
    if args.double:
        official, ours = official.double(), ours.double()
    worst = 0.0
    for size in args.size or [(224, 224)]:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        x = x.to(next(ours.parameters()).dtype)
        pairs = zip(stage_outputs(official, x, True), stage_outputs(ours, x, False))
        exact = None
        if args.fp64_reference and not args.double:
            exact = stage_outputs(copy.deepcopy(official).double(), x.double(), True)
        for i, (a, b) in enumerate(pairs):
            diff = (a - b).abs().max().item()
            worst = max(worst, diff)
            print(f'{args.arch} {size[0]}x{size[1]} stage {i}: {tuple(b.shape)} '
                  f'max |official - ours| = {diff:.3g} (max |official| {a.abs().max().item():.3g})')
            if exact is not None:
                print(f'    float64 official as the reference: max |official fp32 - it| = '
                      f'{(a.double() - exact[i]).abs().max().item():.3g}, max |ours fp32 - it| = '
                      f'{(b.double() - exact[i]).abs().max().item():.3g}')
    print(f'{args.arch}: largest difference {worst:.3g}')
    return worst


if __name__ == '__main__':
    main()
