"""onnxruntime, our eager model, our compiled model and mmdet's, side by side, in one process.

Called by ``benchmark.py --backend onnxruntime [--config C --mmdet-config M --sizes 800x1066]``.
The two PyTorch models get the same weights (``benchmark.build_pair``); ours is exported
with ``export_onnx`` at each size (fixed shape, batch 1, opset 18) and run by
onnxruntime's CPU provider with ``--threads`` intra-op threads; the compiled model is
``torch.compile(model)`` with ``torch._inductor.config.freezing = True`` (tensor mode).

Each repeat runs the four in turn, the order rotating every repeat; the median is reported
with each one's speed-up over our eager model and over mmdet, and the extra memory of a
call (peak resident set minus the resident set when it began, measured first, as
``benchmark.run_cases`` does). The detections of onnxruntime and of our eager ``predict``
are compared: the largest score difference is printed.
"""
import os
import statistics
import tempfile
import time

import torch


def run_onnx_benchmark(args, build_pair, make_inputs, timed, set_malloc_mmap_threshold):
    import onnxruntime as ort

    from mmdeform.deployment import export_onnx
    if args.device != 'cpu':
        raise SystemExit('benchmark --backend onnxruntime runs on the CPU (--device cpu)')
    ours, ref = build_pair(args)
    ours.eval()
    ref.eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    torch._inductor.config.freezing = True
    compiled = torch.compile(ours)
    rows = []
    for text in args.sizes:
        h, w = (int(v) for v in text.lower().split('x'))
        inputs, samples = make_inputs(ref, (h, w), 1, 'cpu', training=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'model.onnx')
            start = time.perf_counter()
            export_onnx(ours, path, shape=inputs.shape[-2:], dynamic=False)
            export_s = time.perf_counter() - start
            session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        feed = {'images': inputs.numpy()}

        def run_ort():
            return session.run(None, feed)

        def predict(model):
            def run():
                with torch.no_grad():
                    return model(inputs, samples, mode='predict')
            return run

        def run_compiled():
            with torch.no_grad():
                return compiled(inputs, samples, mode='tensor')

        fns = dict(eager=predict(ours), compiled=run_compiled, onnxruntime=run_ort,
                   mmdet=predict(ref))
        start = time.perf_counter()
        run_compiled()
        compile_s = time.perf_counter() - start
        scores = run_ort()[1][0]
        eager_scores = predict(ours)()[0].pred_instances.scores.numpy()
        score_diff = float(abs(scores - eager_scores).max())
        row = dict(case=f'inference b1 {text}', export_s=export_s, compile_s=compile_s,
                   score_diff=score_diff)
        set_malloc_mmap_threshold(256 * 1024)
        for key, fn in fns.items():
            fn()
            _, mem = timed(fn, 'cpu')
            row[f'{key}_extra_mib'] = mem['peak_mib'] - mem['base_mib']
        set_malloc_mmap_threshold(32 * 1024 * 1024)
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        times = {k: [] for k in fns}
        order = list(fns)
        for r in range(args.repeats):
            for key in order[r % len(order):] + order[:r % len(order)]:
                times[key].append(timed(fns[key], 'cpu')[0])
        row.update({f'{k}_s': statistics.median(v) for k, v in times.items()})
        print(row, flush=True)
        rows.append(row)
    table = format_onnx_table(rows, args)
    print('\n' + table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return rows


def format_onnx_table(rows, args) -> str:
    lines = [f'CPU ({os.cpu_count()} cores), torch {torch.__version__}, {args.threads} threads '
             f'(torch and onnxruntime); median of {args.repeats} rotating repeats after '
             f'{args.warmup} warm-up runs. Models: `{args.config}` vs mmdet '
             f'`{args.mmdet_config}` (same weights).', '',
             '| case | runtime | time (s) | vs our eager | vs mmdet | extra memory (MiB) |',
             '| --- | --- | ---: | ---: | ---: | ---: |']
    for r in rows:
        for key in ('eager', 'compiled', 'onnxruntime', 'mmdet'):
            lines.append(f"| {r['case']} | {key} | {r[f'{key}_s']:.3f} | "
                         f"{r['eager_s'] / r[f'{key}_s']:.2f}x | "
                         f"{r['mmdet_s'] / r[f'{key}_s']:.2f}x | {r[f'{key}_extra_mib']:.0f} |")
        lines.append(f"| {r['case']} | export {r['export_s']:.0f} s, compile "
                     f"{r['compile_s']:.0f} s; onnxruntime vs eager scores: max diff "
                     f"{r['score_diff']:.1e} | | | | |")
    return '\n'.join(lines)
