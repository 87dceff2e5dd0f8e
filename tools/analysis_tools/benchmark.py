"""Side-by-side speed of an mmdeform model and mmdet's same model, in one process.

    python tools/analysis_tools/benchmark.py [--config C] [--mmdet-config M] [--threads 2]
    python tools/analysis_tools/benchmark.py --mode op [--threads 2]
    python tools/analysis_tools/benchmark.py --mode na [--threads 2]
    python tools/analysis_tools/benchmark.py --backend onnxruntime [--sizes 800x1066]
    python tools/analysis_tools/benchmark.py --compile [--config C] [--threads 2]

Both models get the same weights (mmdet's random initialisation, converted), run
the same inputs, and alternate: each repeat runs one then the other, swapping
the order every repeat. After warm-up the median of the repeats is reported
with the ratio ours / mmdet and the peak memory of each run (CUDA: the peak
allocated by torch; CPU: the process's peak resident set during the run, via
/proc/self/clear_refs).

Cases: inference at batch 1 for each --sizes entry, and one training step
(forward, loss, backward, AdamW step) at batch 2 for each --train-sizes entry.

On CUDA with an mmcv built without CUDA ops (``tools/install.sh``'s), mmdet's
deformable attention would call mmcv's missing CUDA kernel; it is pointed at mmcv's
PyTorch path instead, the path it takes on the CPU, and the table says so.

``--mode op`` times the deformable-attention op alone (``mmdeform.ops``, our CPU
kernel on the CPU) against mmcv's ``multi_scale_deformable_attn_pytorch``, which is
what mmcv and mmdet run on the CPU: see ``benchmark_op.py``. ``--mode na`` times DAT++'s
neighbourhood-attention block with our CPU kernels against the same block's PyTorch
path (no library has one to compare with). ``--compile`` times ``--config``'s model
eagerly against ``torch.compile(model)`` (inductor, freezing), with the compile time and
the largest output difference: see ``benchmark_compile.py``.

Memory is measured before the timing, with glibc's malloc told to give every block
over 256 KiB its own mapping, so that a run's peak resident set is its own and not
what an earlier run left in the heap (``run_cases``).
"""
import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, List, NamedTuple, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

DEFAULT_PAIR = ('configs/deformable_detr_refine_two_stage.py',
                'deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--mode', choices=['model', 'op', 'na'], default='model',
                   help='model: mmdeform model vs mmdet model; op: the deformable-attention op; '
                   "na: DAT++'s neighbourhood attention, our kernels vs the PyTorch path")
    p.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch',
                   help='onnxruntime: our model exported to ONNX, in onnxruntime, next to our '
                        'eager and compiled model and mmdet (benchmark_onnx.py)')
    p.add_argument('--compile', action='store_true',
                   help='--mode model: eager against torch.compile(model) (inductor, freezing) '
                   'instead of against mmdet; see benchmark_compile.py')
    p.add_argument('--check-float64', action='store_true',
                   help='--compile: also compare eager and compiled inference in float64 '
                   '(a float64 copy, compiled again)')
    p.add_argument('--config', default=DEFAULT_PAIR[0], help='mmdeform config')
    p.add_argument('--mmdet-config', default=DEFAULT_PAIR[1],
                   help="mmdet config, relative to mmdet's packaged configs or a path")
    p.add_argument('--sizes', nargs='*', default=['512x512', '800x1066'],
                   help='inference sizes HxW (batch 1)')
    p.add_argument('--train-sizes', nargs='*', default=['512x512'],
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
    from mmdeform.ops.ms_deform_attn import mmcv_cuda_op_available
    if args.device.startswith('cuda') and not mmcv_cuda_op_available():
        import mmcv.ops.multi_scale_deform_attn as mmcv_msda
        mmcv_msda.IS_CUDA_AVAILABLE = False  # mmdet's layer: mmcv's PyTorch path on CUDA
    return ours.to(args.device), ref.to(args.device)


def build_ours(args):
    """``--config``'s model alone, random weights (its own initialisation)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdeform.registry import MODELS
    from mmdeform.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(args.config)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdeform'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    return model.to(args.device)


def attention_paths(device: str) -> str:
    """Which deformable attention each model runs on ``device``."""
    from mmdeform.ops.ms_deform_attn import mmcv_cuda_op_available, resolve_backend
    ours = resolve_backend(None, on_cuda=device.startswith('cuda'), where=device)
    if not device.startswith('cuda'):
        return f"Deformable attention: ours '{ours}', mmdet mmcv's PyTorch path."
    mmdet = ("mmcv's compiled CUDA op" if mmcv_cuda_op_available() else
             "mmcv's PyTorch path (this mmcv has no CUDA ops)")
    return f"Deformable attention: ours '{ours}', mmdet {mmdet}."


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
        gt.labels = torch.randint(0, model.bbox_head.num_classes, (8, ), generator=g)
        sample.gt_instances = gt
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training)
    return data['inputs'].to(device), [s.to(device) for s in data['data_samples']]


def set_malloc_mmap_threshold(size: int) -> None:
    """glibc: blocks of ``size`` bytes and more get their own mapping, returned to the
    system when freed (this also switches off glibc's adaptive threshold)."""
    import ctypes
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, size)
    libc.mallopt(m_trim_threshold, max(size, 1024 * 1024))
    libc.malloc_trim(0)


@contextmanager
def peak_memory(device: str, out: Dict[str, float]):
    """Peak memory of the block in MiB (CUDA allocator peak, or CPU peak RSS), and the
    memory in use when it started (``base_mib``)."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out['base_mib'] = torch.cuda.memory_allocated() / 2**20
        yield
        torch.cuda.synchronize()
        out['peak_mib'] = torch.cuda.max_memory_allocated() / 2**20
        return
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current RSS
    except OSError:
        pass
    out['base_mib'] = _proc_status_mib('VmRSS')
    yield
    out['peak_mib'] = _proc_status_mib('VmHWM')


def _proc_status_mib(key: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
    return float('nan')


def timed(fn: Callable[[], None], device: str) -> Tuple[float, Dict[str, float]]:
    """Wall time of ``fn()`` and its memory (``peak_mib``, ``base_mib``)."""
    mem: Dict[str, float] = {}
    with peak_memory(device, mem):
        start = time.perf_counter()
        fn()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed, mem


def inference_fn(model, inputs, samples, mode='predict'):
    def run():
        with torch.no_grad():
            model(inputs, samples, mode=mode)
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


class Case(NamedTuple):
    """Two functions to compare (ours first, the reference second) and what puts the
    models in the right mode for them (``eval()`` or ``train()``)."""
    name: str
    fns: Dict[str, Callable[[], None]]
    prepare: Callable[[], None] = lambda: None


def run_cases(cases: List[Case], args) -> List[dict]:
    """Measure every case's memory, then time every case.

    On the CPU, memory comes first, with glibc told to give every block over 256 KiB
    its own mapping (``set_malloc_mmap_threshold``): freed tensors then go back to the
    system, and a run's peak resident set is its own, not what an earlier run left in
    the heap. ``peak`` is the process's peak resident set, ``extra`` that peak minus the
    resident set when the call began. The timing then runs with a 32 MiB threshold,
    where glibc's own adaptive threshold settles after a few large frees, so that the
    timed runs do not pay a page fault for every large tensor.
    """
    rows = [dict(case=case.name) for case in cases]
    if args.device == 'cpu':
        set_malloc_mmap_threshold(256 * 1024)
    for case, row in zip(cases, rows):
        case.prepare()
        for key, fn in case.fns.items():
            fn()  # warm-up, then measured
            _, mem = timed(fn, args.device)
            row[f'{key}_mib'] = mem['peak_mib']
            row[f'{key}_extra_mib'] = mem['peak_mib'] - mem['base_mib']
    if args.device == 'cpu':
        set_malloc_mmap_threshold(32 * 1024 * 1024)
    for case, row in zip(cases, rows):
        row.update(_time_case(case, args))
        ours, ref = case.fns
        print(f"{case.name:28s} {ours} {row[f'{ours}_s']:8.3f} s  {ref} {row[f'{ref}_s']:8.3f} s  "
              f"ratio {row['ratio']:.3f}  peak {ours} {row[f'{ours}_mib']:8.0f} MiB  "
              f"{ref} {row[f'{ref}_mib']:8.0f} MiB", flush=True)
    return rows


def _time_case(case: Case, args) -> dict:
    """Median wall time of each function over alternating repeats, after warm-up."""
    case.prepare()
    for _ in range(args.warmup):
        for fn in case.fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in case.fns}
    order = list(case.fns)
    for r in range(args.repeats):
        for key in (order if r % 2 == 0 else order[::-1]):
            times[key].append(timed(case.fns[key], args.device)[0])
    row = {f'{key}_s': statistics.median(times[key]) for key in order}
    row.update({f'{key}_best_s': min(times[key]) for key in order})
    row['ratio'] = row[f'{order[0]}_s'] / row[f'{order[1]}_s']
    return row


def format_table(rows, args, device_name) -> str:
    lines = [f'Device: {device_name}; torch {torch.__version__}; threads {torch.get_num_threads()}; '
             f'median of {args.repeats} alternating repeats after {args.warmup} warm-up runs.',
             f'Models: `{args.config}` vs mmdet `{args.mmdet_config}` (same weights). '
             f'{attention_paths(args.device)}', '',
             '| case | ours (s) | mmdet (s) | speed-up | peak ours (MiB) | peak mmdet (MiB) | '
             'extra ours (MiB) | extra mmdet (MiB) | extra ours / mmdet |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours_s']:.3f} | {r['mmdet_s']:.3f} | "
                     f"{1 / r['ratio']:.2f}x | {r['ours_mib']:.0f} | {r['mmdet_mib']:.0f} | "
                     f"{r['ours_extra_mib']:.0f} | {r['mmdet_extra_mib']:.0f} | "
                     f"{r['ours_extra_mib'] / r['mmdet_extra_mib']:.2f} |")
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f'benchmark: --device {args.device}, but torch sees no CUDA device')
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    if args.mode == 'op':
        from benchmark_op import run_op_benchmark
        return run_op_benchmark(args, run_cases, Case)
    if args.mode == 'na':
        from benchmark_op import run_na_benchmark
        return run_na_benchmark(args, run_cases, Case)
    if args.backend == 'onnxruntime':
        from benchmark_onnx import run_onnx_benchmark
        return run_onnx_benchmark(args, build_pair, make_inputs, timed,
                                  set_malloc_mmap_threshold)
    if args.compile:
        return compile_main(args)
    ours, ref = build_pair(args)
    device_name = _device_name(args)

    def evaluating():
        for model in (ours, ref):
            model.eval()

    def training():
        for model in (ours, ref):
            model.train()
            disable_dropout(model)  # the same work in both: no random masks

    cases = []
    for text in args.sizes:
        inputs, samples = make_inputs(ref, _size(text), 1, args.device, training=False)
        cases.append(Case(f'inference b1 {text}', dict(
            ours=inference_fn(ours, inputs, samples),
            mmdet=inference_fn(ref, inputs, samples)), evaluating))
    for text in args.train_sizes:
        inputs, samples = make_inputs(ref, _size(text), 2, args.device, training=True)
        cases.append(Case(f'train step b2 {text}', dict(
            ours=train_fn(ours, inputs, samples),
            mmdet=train_fn(ref, inputs, samples)), training))
    rows = run_cases(cases, args)
    table = format_table(rows, args, device_name)
    print('\n' + table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return rows


def compile_main(args):
    from benchmark_compile import format_compile_table, run_compile_benchmark
    rows = run_compile_benchmark(args, run_cases, Case, build_ours, make_inputs, inference_fn,
                                 train_fn, disable_dropout)
    table = format_compile_table(rows, args, _device_name(args))
    print('\n' + table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return rows


def _device_name(args) -> str:
    return (torch.cuda.get_device_name() if args.device.startswith('cuda') else
            f'CPU ({os.cpu_count()} cores)')


if __name__ == '__main__':
    main()
