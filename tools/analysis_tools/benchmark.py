"""Side-by-side speed of an mmdeform model and mmdet's same model, in one process.

    python tools/analysis_tools/benchmark.py [--config C] [--mmdet-config M] [--threads 2]

Both models get the same weights (mmdet's random initialisation, converted), run
the same inputs, and alternate: each repeat runs one then the other, swapping
the order every repeat. After warm-up the median of the repeats is reported
with the ratio ours / mmdet and the peak memory of each run (CUDA: the peak
allocated by torch; CPU: the process's peak resident set during the run, via
/proc/self/clear_refs).

Cases: inference at batch 1 for each --sizes entry, and one training step
(forward, loss, backward, AdamW step) at batch 2 for each --train-sizes entry.
"""
import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

DEFAULT_PAIR = ('configs/deformable_detr_refine_two_stage.py',
                'deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=DEFAULT_PAIR[0], help='mmdeform config')
    p.add_argument('--mmdet-config', default=DEFAULT_PAIR[1],
                   help="mmdet config, relative to mmdet's packaged configs or a path")
    p.add_argument('--sizes', nargs='+', default=['512x512', '800x1066'],
                   help='inference sizes HxW (batch 1)')
    p.add_argument('--train-sizes', nargs='+', default=['512x512'],
                   help='training-step sizes HxW (batch 2)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=2, help='torch intra-op threads (CPU)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out', help='also write the table (markdown) to this file')
    return p.parse_args(argv)


def _size(text: str) -> Tuple[int, int]:
    h, w = text.lower().split('x')
    return int(h), int(w)


def build_pair(args):
    import mmdet
    import mmdet.utils
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdeform.converters import convert_mmdet
    from mmdeform.registry import MODELS
    from mmdeform.utils import register_all_modules

    mmdet.utils.register_all_modules(init_default_scope=False)
    register_all_modules(init_default_scope=False)
    mmdet_path = args.mmdet_config
    if not os.path.isfile(mmdet_path):
        mmdet_path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', mmdet_path)
    ref_cfg = Config.fromfile(mmdet_path)
    our_cfg = Config.fromfile(args.config)
    for cfg in (ref_cfg, our_cfg):
        cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        ref = MMDET_MODELS.build(ref_cfg.model)
    ref.init_weights()
    with DefaultScope.overwrite_default_scope('mmdeform'):
        ours = MODELS.build(our_cfg.model)
    state_dict, report, _ = convert_mmdet(ref.state_dict(), {})
    ours.load_state_dict(state_dict, strict=True)
    return ours.to(args.device), ref.to(args.device)


def make_inputs(model, size, batch, device, training):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    h, w = size
    images, samples = [], []
    for i in range(batch):
        # the second image is smaller, so the batch is padded as in real training
        hi, wi = (h, w) if i == 0 else (int(h * 0.8), int(w * 0.9))
        images.append(torch.randint(0, 256, (3, hi, wi), generator=g, dtype=torch.uint8))
        sample = DetDataSample()
        sample.set_metainfo(dict(img_shape=(hi, wi), ori_shape=(hi, wi), scale_factor=(1., 1.)))
        gt = InstanceData()
        xy = torch.rand(8, 2, generator=g) * torch.tensor([wi * 0.6, hi * 0.6])
        gt.bboxes = torch.cat([xy, xy + 16 + torch.rand(8, 2, generator=g) * 100], 1)
        gt.labels = torch.randint(0, 80, (8, ), generator=g)
        sample.gt_instances = gt
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training)
    return data['inputs'].to(device), [s.to(device) for s in data['data_samples']]


@contextmanager
def peak_memory(device: str, out: Dict[str, float]):
    """Peak memory of the block in MiB (CUDA allocator peak, or CPU peak RSS)."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        out['peak_mib'] = torch.cuda.max_memory_allocated() / 2**20
        return
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current RSS
    except OSError:
        pass
    yield
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                out['peak_mib'] = int(line.split()[1]) / 1024


def timed(fn: Callable[[], None], device: str) -> Tuple[float, float]:
    mem: Dict[str, float] = {}
    with peak_memory(device, mem):
        start = time.perf_counter()
        fn()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed, mem.get('peak_mib', float('nan'))


def inference_fn(model, inputs, samples):
    def run():
        with torch.no_grad():
            model(inputs, samples, mode='predict')
    return run


def train_fn(model, inputs, samples):
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def run():
        losses = model(inputs, [s.clone() for s in samples], mode='loss')
        total = sum(v for v in losses.values())
        optim.zero_grad()
        total.backward()
        optim.step()
    return run


def disable_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0


def run_case(name, fns: Dict[str, Callable[[], None]], args) -> dict:
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    peaks: Dict[str, List[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(args.repeats):
        for key in (order if r % 2 == 0 else order[::-1]):
            t, m = timed(fns[key], args.device)
            times[key].append(t)
            peaks[key].append(m)
    row = dict(case=name)
    for key in fns:
        row[f'{key}_s'] = statistics.median(times[key])
        row[f'{key}_mib'] = max(peaks[key])
    row['ratio'] = row['ours_s'] / row['mmdet_s']
    print(f"{name:28s} ours {row['ours_s']:8.3f} s  mmdet {row['mmdet_s']:8.3f} s  "
          f"ratio {row['ratio']:.3f}  peak ours {row['ours_mib']:8.0f} MiB  "
          f"mmdet {row['mmdet_mib']:8.0f} MiB", flush=True)
    return row


def format_table(rows, args, device_name) -> str:
    lines = [f'Device: {device_name}; torch {torch.__version__}; threads {torch.get_num_threads()}; '
             f'median of {args.repeats} alternating repeats after {args.warmup} warm-up runs.',
             f'Models: `{args.config}` vs mmdet `{args.mmdet_config}` (same weights).', '',
             '| case | ours (s) | mmdet (s) | ours / mmdet | peak ours (MiB) | peak mmdet (MiB) |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours_s']:.3f} | {r['mmdet_s']:.3f} | "
                     f"{r['ratio']:.3f} | {r['ours_mib']:.0f} | {r['mmdet_mib']:.0f} |")
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    ours, ref = build_pair(args)
    device_name = (torch.cuda.get_device_name() if args.device.startswith('cuda') else
                   f'CPU ({os.cpu_count()} cores)')
    rows = []
    for model in (ours, ref):
        model.eval()
    for text in args.sizes:
        size = _size(text)
        inputs, samples = make_inputs(ref, size, 1, args.device, training=False)
        rows.append(run_case(f'inference b1 {text}', dict(
            ours=inference_fn(ours, inputs, samples),
            mmdet=inference_fn(ref, inputs, samples)), args))
    for model in (ours, ref):
        model.train()
        disable_dropout(model)  # the same work in both: no random masks
    for text in args.train_sizes:
        size = _size(text)
        inputs, samples = make_inputs(ref, size, 2, args.device, training=True)
        rows.append(run_case(f'train step b2 {text}', dict(
            ours=train_fn(ours, inputs, samples),
            mmdet=train_fn(ref, inputs, samples)), args))
    table = format_table(rows, args, device_name)
    print('\n' + table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return rows


if __name__ == '__main__':
    main()
