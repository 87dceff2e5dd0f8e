"""Curves and timing from mmengine's JSON scalar logs.

    python tools/analysis_tools/analyze_logs.py plot_curve LOG_JSON [LOG_JSON ...] \\
        --keys loss coco/bbox_mAP [--legend A B] [--out curve.png] [--title T] [--x-axis time]
    python tools/analysis_tools/analyze_logs.py cal_train_time LOG_JSON [...] [--include-outliers]

A log is ``<work_dir>/<timestamp>/vis_data/<timestamp>.json`` (or ``scalars.json``
next to it): one JSON object per line. Training lines carry ``lr``, ``loss``,
``iter`` (global, from 1) and ``step``; validation lines carry the metrics
(``coco/bbox_mAP`` ...) and ``step``: the epoch in epoch-based runs; in
iteration-based runs the iteration with ``LoggerHook(log_metric_by_epoch=False)``,
else 0 (mmengine writes ``runner.epoch``, which such runs never advance).

``plot_curve`` writes one PNG (matplotlib, Agg) with one subplot per key and one
curve per log: x is the iteration for training keys; for validation keys it is
the epoch in epoch-based runs (training lines with ``epoch``), else the
iteration: ``step`` where it is non-zero, otherwise the iteration of the last
training line logged before the validation (exact when validation falls on a
logging interval). A key found in the training lines is plotted from them.
``--x-axis time`` puts the training time in minutes on x instead, for comparing
models of different iteration costs: the sum of the logged iteration times (each
line's ``time``, the mean over its logging window, times the iterations in that
window), up to the line or, for a validation line, up to the last training line
before it (mmengine logs the last iteration of each epoch). Validation time is not
counted.
The figure is ``FIG_WIDTH`` x ``SUBPLOT_HEIGHT * len(keys)`` inches at ``DPI``:
800 px wide, 300 px per key.

``cal_train_time`` prints the mean and spread of the logged iteration time
(``time``, the window average of each training line), without the first line
(warm-up) unless ``--include-outliers``.
"""
import argparse
import json
import os
import os.path as osp
from typing import Dict, List

FIG_WIDTH = 8.0  # inches
SUBPLOT_HEIGHT = 3.0  # inches per key
DPI = 100


class LogError(ValueError):
    """A log that cannot be read, or a key it does not have."""


def load_log(path: str) -> Dict[str, List[dict]]:
    """``{'train': [...], 'val': [...]}``: the log's lines as dicts, in file order.

    A line with ``iter`` is a training line (mmengine's LogProcessor adds it to
    training scalars only); any other line with ``step`` is a validation line,
    to which ``_after_iter`` (the last training iteration logged before it) is added.
    """
    if not osp.isfile(path):
        raise LogError(f'log file {path!r} does not exist')
    out: Dict[str, List[dict]] = {'train': [], 'val': []}
    last_iter = 0
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LogError(f'{path}:{lineno}: not a JSON object ({e.msg}); expected '
                               "mmengine's vis_data/<timestamp>.json scalar log") from None
            if not isinstance(record, dict):
                raise LogError(f'{path}:{lineno}: expected a JSON object, got '
                               f'{type(record).__name__}')
            if 'iter' in record:
                out['train'].append(record)
                last_iter = record['iter']
            elif 'step' in record:
                out['val'].append(dict(record, _after_iter=last_iter))
    if not out['train'] and not out['val']:
        raise LogError(f'{path}: no scalar lines (with "iter" or "step") found')
    return out


def keys_of(records: List[dict]) -> List[str]:
    skip = {'iter', 'step', 'epoch'}
    return sorted({k for r in records for k, v in r.items()
                   if k not in skip and not k.startswith('_') and isinstance(v, (int, float))})


def training_minutes(log: Dict[str, List[dict]], path: str) -> Dict[int, float]:
    """``{iter: minutes of training up to it}`` for every training line."""
    minutes, total, last = {}, 0.0, 0
    for r in log['train']:
        if 'time' not in r:
            raise LogError(f'{path}: training line at iter {r["iter"]} has no "time"; '
                           '--x-axis time needs the logged iteration times')
        total += r['time'] * (r['iter'] - last) / 60.0
        minutes[r['iter']], last = total, r['iter']
    return minutes


def series(log: Dict[str, List[dict]], key: str, path: str, x_axis: str = 'step'):
    """``(xs, ys, x_label)`` of ``key``; training lines first, then validation."""
    for split in ('train', 'val'):
        records = [r for r in log[split] if key in r]
        if not records:
            continue
        if x_axis == 'time':
            minutes = training_minutes(log, path)
            xs = [minutes.get(r['iter'] if split == 'train' else r['_after_iter'], 0.0)
                  for r in records]
            label = 'training time (min)'
        elif split == 'train':
            xs = [r.get('iter', r['step']) for r in records]
            label = 'iter'
        elif any('epoch' in r for r in log['train']):
            xs = [r['step'] for r in records]
            label = 'epoch'
        else:
            xs = [r['step'] or r['_after_iter'] for r in records]
            label = 'iter'
        return xs, [r[key] for r in records], label
    train_keys = ', '.join(keys_of(log['train'])) or '-'
    val_keys = ', '.join(keys_of(log['val'])) or '-'
    raise LogError(f'{path}: no key {key!r}; training keys: {train_keys}; '
                   f'validation keys: {val_keys}')


def default_name(path: str) -> str:
    """``<work_dir name>/<timestamp>`` for a log under ``vis_data``, else the file name."""
    path = osp.abspath(path)
    parent = osp.dirname(path)
    if osp.basename(parent) == 'vis_data':
        run_dir = osp.dirname(parent)
        return f'{osp.basename(osp.dirname(run_dir))}/{osp.basename(run_dir)}'
    return osp.basename(path)


def plot_curve(args) -> str:
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    logs = [load_log(p) for p in args.json_logs]
    legend = args.legend or [default_name(p) for p in args.json_logs]
    if len(legend) != len(args.json_logs):
        raise LogError(f'--legend has {len(legend)} names for {len(args.json_logs)} logs')
    # look every key up before drawing, so a typo fails before any work
    curves = [[series(log, key, path, args.x_axis) for log, path in zip(logs, args.json_logs)]
              for key in args.keys]
    fig, axes = plt.subplots(len(args.keys), 1, squeeze=False,
                             figsize=(FIG_WIDTH, SUBPLOT_HEIGHT * len(args.keys)), dpi=DPI)
    for ax, key, per_log in zip(axes[:, 0], args.keys, curves):
        for (xs, ys, x_label), name in zip(per_log, legend):
            # a single validation point is invisible as a line
            ax.plot(xs, ys, label=name, marker='o' if len(xs) < 20 else None)
        ax.set_xlabel(per_log[0][2])
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.out, dpi=DPI)
    plt.close(fig)
    print(f'Saved {args.out} ({len(args.keys)} subplot(s), {len(logs)} log(s))')
    return args.out


def cal_train_time(args) -> List[dict]:
    import statistics
    results = []
    for path in args.json_logs:
        times = [r['time'] for r in load_log(path)['train'] if 'time' in r]
        if not args.include_outliers:
            times = times[1:]  # the first window includes the warm-up
        if not times:
            raise LogError(f'{path}: no training lines with "time" (after dropping the '
                           'first; pass --include-outliers to keep it)')
        mean = statistics.mean(times)
        std = statistics.pstdev(times)
        print(f'{path}\n  mean iteration time: {mean:.4f} s over {len(times)} logged windows '
              f'(std {std:.4f} s, min {min(times):.4f} s, max {max(times):.4f} s)')
        results.append(dict(log=path, mean=mean, std=std, count=len(times)))
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Analyse mmengine JSON scalar logs')
    sub = parser.add_subparsers(dest='task', required=True)
    plot = sub.add_parser('plot_curve', help='plot scalars against iteration / epoch')
    plot.add_argument('json_logs', nargs='+', help='vis_data/<timestamp>.json files')
    plot.add_argument('--keys', nargs='+', default=['loss'], help='scalars to plot')
    plot.add_argument('--legend', nargs='+', help='one name per log (default: its work dir)')
    plot.add_argument('--title', help='figure title')
    plot.add_argument('--out', default='curve.png', help='output PNG (default curve.png)')
    plot.add_argument('--x-axis', choices=['step', 'time'], default='step',
                      help='x: iterations / epochs (step, default) or training time in minutes')
    timing = sub.add_parser('cal_train_time', help='mean training iteration time')
    timing.add_argument('json_logs', nargs='+', help='vis_data/<timestamp>.json files')
    timing.add_argument('--include-outliers', action='store_true',
                        help='keep the first logged window (warm-up)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.task == 'plot_curve':
            return plot_curve(args)
        return cal_train_time(args)
    except LogError as e:
        raise SystemExit(f'analyze_logs.py: error: {e}')


if __name__ == '__main__':
    main()
