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
compared. ``--dump-layout FILE`` writes the official key names and shapes.
"""
import argparse
import copy
import json
import os
import sys
import tempfile
import types

import torch


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


def build_official(repo: str, config: str):
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


def stage_outputs(model: torch.nn.Module, x: torch.Tensor, official: bool):
    outs = []
    hooks = [s.register_forward_hook(
        lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o)) for s in model.stages]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repo', required=True, help='checkout of LeapLabTHU/DAT')
    parser.add_argument('--config', required=True, help='its yaml, e.g. configs/dat_tiny.yaml')
    parser.add_argument('--arch', required=True, help='mmdeform arch, e.g. dat_pp_tiny')
    parser.add_argument('--size', type=int, nargs=2, action='append', metavar=('H', 'W'))
    parser.add_argument('--dump-layout', help='write the official state_dict layout as JSON')
    parser.add_argument('--double', action='store_true', help='compare in float64')
    parser.add_argument('--fp64-reference', action='store_true',
                        help='also run the official model in float64 and report how far each '
                        'float32 model is from it (the official code\'s own rounding error '
                        'next to ours)')
    args = parser.parse_args(argv)

    from mmdeform.converters import convert_official_dat
    from mmdeform.converters.common import run_converter
    from mmdeform.models.backbones import DAT
    from mmdeform.utils import register_all_modules
    register_all_modules()

    official = build_official(args.repo, args.config)
    randomise(official)
    state = official.state_dict()
    if args.dump_layout:
        with open(args.dump_layout, 'w') as f:
            json.dump(dict(source=f'LeapLabTHU/DAT {args.config}', arch=args.arch,
                           num_parameters=sum(p.numel() for p in official.parameters()),
                           tensors={k: list(v.shape) for k, v in state.items()}), f, indent=1)
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
