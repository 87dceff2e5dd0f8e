"""Our RT-DETR against the official PyTorch implementation (lyuwenyu/RT-DETR), in one process.

    python tools/analysis_tools/benchmark_rtdetr_official.py --official-root RTDETR_CHECKOUT \\
        [--model rtdetrv2_r18vd] [--size 640] [--threads 2] [--compile] [--out table.md]

The official model is built from its YAML config (as
``tools/model_converters/compare_official_rtdetr.py`` does, whose helpers this
uses), given random weights, saved as an official file and converted into ours
with ``tools/model_converters/official_rtdetr.py``'s code: both run the same
weights on the same random image, batch 1, without post-processing (ours:
``mode='tensor'``; the official model's ``forward``), under ``torch.no_grad()``.
Each repeat runs one model then the other, swapping the order every repeat; the
median after warm-up is reported, with the ratio official / ours (> 1: ours is
faster) and the largest output difference.

Three ways of running each:

* eager: as built;
* deployed: ours ``switch_to_deploy()`` (the detector's if it has one, else each
  submodule's: today the HybridEncoder fuses its RepVGG blocks), the official
  ``deploy()`` (the same fusion, ``convert_to_deploy`` of every module);
* compiled (``--compile``, minutes): ``torch.compile`` of each deployed model,
  inductor with ``torch._inductor.config.freezing = True``, static sizes for both.
  ``--dynamic`` marks our image height and width dynamic, as our data preprocessor
  does; with torch 2.14.1 inductor then failed on the first call of the frozen
  RT-DETR graph (``assert_size_stride`` of a fused oneDNN convolution + activation
  on the 20 x 20 S5 map: inductor expected channels-last strides), so the default
  is static.

A second table splits each eager and deployed model into backbone, encoder
(ours: the neck list, HybridEncoder + the decoder's input projection) and
decoder with heads (the official decoder includes its own input projection), each
timed alone on the outputs of the part before it.

Without ``--official-root`` (or when it is not a checkout) the benchmark is skipped
with a message: the official code is not a dependency.
"""
import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _compare_module():
    path = os.path.join(ROOT, 'tools', 'model_converters', 'compare_official_rtdetr.py')
    spec = importlib.util.spec_from_file_location('compare_official_rtdetr', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--official-root', help='checkout of lyuwenyu/RT-DETR (skipped without it)')
    p.add_argument('--model', default='rtdetrv2_r18vd', help='a name of compare_official_rtdetr.py')
    p.add_argument('--size', type=int, default=640)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--compile', action='store_true', help='also time torch.compile (minutes)')
    p.add_argument('--dynamic', action='store_true',
                   help='with --compile: mark our image height and width dynamic, as our data '
                   'preprocessor does (static by default: see the module docstring)')
    p.add_argument('--no-split', action='store_true', help='skip the per-part table')
    p.add_argument('--out', help='also write the tables (markdown) to this file')
    return p.parse_args(argv)


def alternate(fns: Dict[str, Callable[[], object]], warmup: int,
              repeats: int) -> Dict[str, List[float]]:
    """Run every function once per repeat, in an order rotated every repeat; seconds."""
    names = list(fns)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ms(values: List[float]) -> str:
    return f'{1000 * statistics.median(values):.1f} ({1000 * min(values):.1f})'


def parts_ours(model, x, samples) -> Dict[str, Callable[[], object]]:
    feats = model.backbone(x)
    neck = model.neck(feats)
    return {'backbone': lambda: model.backbone(x),
            'encoder': lambda: model.neck(feats),
            'decoder + heads': lambda: model.bbox_head(model.forward_transformer(neck, samples))}


def parts_official(model, x) -> Dict[str, Callable[[], object]]:
    feats = model.backbone(x)
    enc = model.encoder(feats)
    return {'backbone': lambda: model.backbone(x),
            'encoder': lambda: model.encoder(feats),
            'decoder + heads': lambda: model.decoder(enc)}


def main(argv=None):
    args = parse_args(argv)
    cmp = _compare_module()
    if not args.official_root or not os.path.isdir(os.path.join(args.official_root,
                                                                'rtdetrv2_pytorch')):
        print(f'skipped: --official-root {args.official_root!r} is not a checkout of '
              'lyuwenyu/RT-DETR (with rtdetrv2_pytorch/); the official code is not a '
              'dependency of mmdeform')
        return None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    official = cmp.build_official(args.official_root, args.model)
    cmp.randomise(official)
    ours = cmp.build_ours(cmp.MODELS[args.model][2])
    cmp.convert_into(official, ours)
    size = (args.size, args.size)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    samples = [cmp.sample_for(size)]
    models = {'eager': (ours, official)}
    deployed_ours, deployed_official = copy.deepcopy(ours), copy.deepcopy(official)
    how = cmp.deploy_ours(deployed_ours)
    deployed_official.deploy()
    models['deployed'] = (deployed_ours, deployed_official)
    notes = [f'deployed: ours {how}; official model.deploy()']
    with torch.no_grad():
        if args.compile:
            torch._inductor.config.freezing = True
            compiled_ours = torch.compile(deployed_ours)
            compiled_official = torch.compile(deployed_official)
            xd = x.clone()
            if args.dynamic:
                torch._dynamo.maybe_mark_dynamic(xd, 2)
                torch._dynamo.maybe_mark_dynamic(xd, 3)
            for name, fn in (('ours', lambda: compiled_ours(xd, samples, mode='tensor')),
                             ('official', lambda: compiled_official(x))):
                start = time.perf_counter()
                fn()
                notes.append(f'compiled {name} in {time.perf_counter() - start:.0f} s')
                print(notes[-1], flush=True)
            models['compiled'] = (lambda: compiled_ours(xd, samples, mode='tensor'),
                                  lambda: compiled_official(x))
        rows = []
        for way, (a, b) in models.items():
            run_a = a if way == 'compiled' else (lambda m=a: m(x, samples, mode='tensor'))
            run_b = b if way == 'compiled' else (lambda m=b: m(x))
            out_a, out_b = run_a(), run_b()
            diff = max((out_a.all_cls_scores[-1] - out_b['pred_logits']).abs().max().item(),
                       (out_a.all_bbox_preds[-1] - out_b['pred_boxes']).abs().max().item())
            times = alternate({'ours': run_a, 'official': run_b}, args.warmup, args.repeats)
            ratio = statistics.median(times['official']) / statistics.median(times['ours'])
            rows.append(f'| {way} | {ms(times["ours"])} | {ms(times["official"])} | '
                        f'{ratio:.2f}x | {diff:.1e} |')
            print(rows[-1], flush=True)
        split = []
        if not args.no_split:
            for way in ('eager', 'deployed'):
                a, b = models[way]
                fa, fb = parts_ours(a, x, samples), parts_official(b, x)
                times = alternate({**{f'ours {k}': v for k, v in fa.items()},
                                   **{f'official {k}': v for k, v in fb.items()}},
                                  args.warmup, args.repeats)
                for part in fa:
                    o, t = times[f'ours {part}'], times[f'official {part}']
                    split.append(f'| {way} | {part} | {ms(o)} | {ms(t)} | '
                                 f'{statistics.median(t) / statistics.median(o):.2f}x |')
                    print(split[-1], flush=True)
    load = os.getloadavg()
    header = (f'{args.model}, {args.size}x{args.size}, batch 1, torch {torch.__version__}, '
              f'{torch.get_num_threads()} threads, median (best) of {args.repeats} alternating '
              f'repeats after {args.warmup} warm-up runs; load average at the end '
              f'{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}. ' + '; '.join(notes) + '.')
    table = '\n'.join([header, '', '| way | ours (ms) | official (ms) | official / ours | '
                       'max output diff |', '| --- | ---: | ---: | ---: | ---: |', *rows])
    if split:
        table += '\n\n' + '\n'.join(['| way | part | ours (ms) | official (ms) | official / ours |',
                                     '| --- | --- | ---: | ---: | ---: |', *split])
    print('\n' + table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return table


if __name__ == '__main__':
    main()
