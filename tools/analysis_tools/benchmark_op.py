"""The deformable-attention op alone: ``mmdeform.ops`` against mmcv's PyTorch path.

Called by ``benchmark.py --mode op``. Shapes are those of Deformable DETR and DINO on
an 800x1066 image (strides 8-64: levels 100x134, 50x67, 25x34, 13x17, Nv = 17,821;
8 heads of 32 channels, 4 points per level):

* encoder: one query per value position (Nq = 17,821), 2-d reference points at the
  cell centres moved by offsets of about 2 cells, as a trained encoder samples;
* decoder: 300 queries (Deformable DETR) and 900 (DINO) around random boxes.

On CUDA (``--device cuda``) ours is the Triton kernel (``backend='triton'``) and the
reference mmcv's compiled CUDA op where mmcv was built with CUDA, else its PyTorch path
(``tools/install.sh`` builds mmcv CPU-only); the table says which.

Attention weights are a softmax over levels x points. Forward runs under
``torch.no_grad()``; forward + backward differentiates value, locations and weights.
"Extra" memory is the peak resident set during the call minus the resident set before
it (the inputs), so it counts the output, the gradients and everything in between.
"""
import functools
import os
from unittest import mock

import torch
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)

from mmdeform.ops import cpu_kernel_isa, multi_scale_deformable_attn
from mmdeform.ops.ms_deform_attn import mmcv_cuda_op_available

LEVELS_800x1066 = [[100, 134], [50, 67], [25, 34], [13, 17]]


def make_op_inputs(num_queries=None, batch=1, heads=8, dims=32, points=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(LEVELS_800x1066)
    levels = len(shapes)
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    nv = int(shapes.prod(1).sum())
    value = torch.randn(batch, nv, heads, dims, generator=g)
    wh = torch.stack([shapes[:, 1], shapes[:, 0]], -1).float()  # (L, 2)
    if num_queries is None:  # encoder: every cell of every level is a query
        centres = [torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w,
                                              (torch.arange(h) + 0.5) / h, indexing='xy'), -1)
                   .reshape(-1, 2) for h, w in shapes.tolist()]
        ref = torch.cat(centres)[None].expand(batch, -1, -1)        # (B, Nq, 2)
        num_queries = ref.shape[1]
        offsets = torch.randn(batch, num_queries, heads, levels, points, 2, generator=g) * 2
        loc = ref[:, :, None, None, None] + offsets / wh[None, None, None, :, None]
    else:  # decoder: points spread over boxes of 5-30 % of the image
        boxes = torch.rand(batch, num_queries, 4, generator=g)
        boxes = torch.cat([0.1 + 0.8 * boxes[..., :2], 0.05 + 0.25 * boxes[..., 2:]], -1)
        offsets = torch.randn(batch, num_queries, heads, levels, points, 2, generator=g) * 2
        loc = (boxes[:, :, None, None, None, :2] +
               offsets / points * boxes[:, :, None, None, None, 2:] * 0.5)
    weights = torch.randn(batch, num_queries, heads, levels * points, generator=g).softmax(-1)
    weights = weights.view(batch, num_queries, heads, levels, points)
    return value, shapes, start, loc.contiguous(), weights


def _forward(op, value, shapes, start, loc, weights):
    def run():
        with torch.no_grad():
            op(value, shapes, start, loc, weights)
    return run


def _forward_backward(op, value, shapes, start, loc, weights):
    def run():
        inputs = [t.detach().requires_grad_() for t in (value, loc, weights)]
        out = op(inputs[0], shapes, start, inputs[1], inputs[2])
        out.backward(torch.ones_like(out))
    return run


def _mmcv(value, shapes, start, loc, weights):
    return multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)


def _mmcv_cuda(value, shapes, start, loc, weights):
    return MultiScaleDeformableAttnFunction.apply(value, shapes, start, loc, weights, 64)


def op_pair(device: str):
    """(ours, its label, the reference, its label) on ``device``."""
    if not device.startswith('cuda'):
        return (multi_scale_deformable_attn, f'CPU kernel, {cpu_kernel_isa()}', _mmcv,
                "mmcv's multi_scale_deformable_attn_pytorch")
    ours = functools.partial(multi_scale_deformable_attn, backend='triton')
    if mmcv_cuda_op_available():
        return ours, 'Triton', _mmcv_cuda, "mmcv's compiled CUDA op"
    return (ours, 'Triton', _mmcv, "mmcv's multi_scale_deformable_attn_pytorch (this mmcv "
            'has no CUDA ops)')


def _emit(table: str, args) -> None:
    """Print the markdown table and, with ``--out``, write it there."""
    print('\n' + table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')


def run_op_benchmark(args, run_cases, Case):
    """Rows of (case, our time, mmcv's time, speed-up, extra memory of each)."""
    ours, ours_label, ref, ref_label = op_pair(args.device)
    cases, diffs = [], []
    for label, nq in (('encoder 800x1066', None), ('decoder 300 queries', 300),
                      ('decoder 900 queries', 900)):
        inputs = [t.to(args.device) for t in make_op_inputs(nq)]
        with torch.no_grad():
            diff = (ours(*inputs) - ref(*inputs)).abs().max().item()
        for kind, make in (('forward', _forward), ('forward + backward', _forward_backward)):
            cases.append(Case(f'{label}, {kind}', dict(ours=make(ours, *inputs),
                                                       mmcv=make(ref, *inputs))))
            diffs.append(diff)
    rows = run_cases(cases, args)
    where = (torch.cuda.get_device_name() if args.device.startswith('cuda') else
             f'{torch.get_num_threads()} threads')
    lines = [f'Op: mmdeform.ops.multi_scale_deformable_attn ({ours_label}) vs {ref_label}; '
             f'torch {torch.__version__}; {where}; median of {args.repeats} '
             f'alternating repeats after {args.warmup} warm-up runs.', '',
             '| case | ours (ms) | mmcv (ms) | speed-up | extra memory ours (MiB) | '
             'extra memory mmcv (MiB) | ours / mmcv memory | max abs diff |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r, diff in zip(rows, diffs):
        lines.append(f"| {r['case']} | {1e3 * r['ours_s']:.1f} | {1e3 * r['mmcv_s']:.1f} | "
                     f"{r['mmcv_s'] / r['ours_s']:.1f}x | {r['ours_extra_mib']:.1f} | "
                     f"{r['mmcv_extra_mib']:.1f} | {r['ours_extra_mib'] / r['mmcv_extra_mib']:.3f} | "
                     f'{diff:.1e} |')
    _emit('\n'.join(lines), args)
    return rows


# (label, batch, channels, H, W, heads): the shapes DAT++ demo's stages 1-3 and DAT-T++'s
# first stage on an 800x1066 image (stride 4)
NA_CASES = [('shapes DAT++ stage 1', 8, 16, 48, 48, 1), ('shapes DAT++ stage 2', 8, 32, 24, 24, 2),
            ('shapes DAT++ stage 3', 8, 64, 12, 12, 4), ('DAT-T++ stage 1, 800x1066', 1, 64, 200, 267, 2)]


def run_na_benchmark(args, run_cases, Case):
    """DAT++'s NeighborhoodAttention block (qkv, 7x7 windows, bias, softmax, proj),
    forward + backward: our CPU kernels against the block's own PyTorch path."""
    import mmdeform.models.backbones.dat_blocks as blocks
    from mmdeform.ops import NA_KERNEL_AVAILABLE
    if not NA_KERNEL_AVAILABLE:
        raise SystemExit('benchmark --mode na: the CPU kernel is not built')

    def backend(name):
        return mock.patch.dict(os.environ, MMDEFORM_NA_BACKEND=name)

    cases, diffs = [], []
    for label, b, c, h, w, heads in NA_CASES:
        torch.manual_seed(0)
        block = blocks.NeighborhoodAttention(c, heads, 7)
        x = torch.randn(b, c, h, w, requires_grad=True)

        def run(name, block=block, x=x):
            def fn():
                with backend(name):
                    block(x).sum().backward()
            return fn

        with torch.no_grad():
            with backend('cpp'):
                out = block(x)
            with backend('pytorch'):
                diffs.append((out - block(x)).abs().max().item())
        cases.append(Case(f'{label} ({b}x{c}x{h}x{w}, {heads} heads), forward + backward',
                          dict(ours=run('cpp'), pytorch=run('pytorch'))))
    rows = run_cases(cases, args)
    lines = [f"Block: DAT++'s NeighborhoodAttention, our CPU kernels vs its PyTorch path; torch "
             f'{torch.__version__}; {torch.get_num_threads()} threads; median of {args.repeats} '
             f'alternating repeats after {args.warmup} warm-up runs.', '',
             '| case | ours (ms) | PyTorch path (ms) | speed-up | extra memory ours (MiB) | '
             'extra memory PyTorch (MiB) | max abs diff |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r, diff in zip(rows, diffs):
        lines.append(f"| {r['case']} | {1e3 * r['ours_s']:.1f} | {1e3 * r['pytorch_s']:.1f} | "
                     f"{r['pytorch_s'] / r['ours_s']:.1f}x | {r['ours_extra_mib']:.0f} | "
                     f"{r['pytorch_extra_mib']:.0f} | {diff:.1e} |")
    _emit('\n'.join(lines), args)
    return rows
