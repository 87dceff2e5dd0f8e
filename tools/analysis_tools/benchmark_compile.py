"""``torch.compile(model)`` against the same model run eagerly, in one process.

Called by ``benchmark.py --compile [--config C]``. One model (``--config``, random
weights), two ways of running it, alternating on the same inputs:

* eager: ``model(inputs, samples, mode=...)``;
* compiled: ``torch.compile(model)``, the default backend (inductor), with
  ``torch._inductor.config.freezing = True``: in inference (no gradients) the weights are
  constants of the graph, so inductor folds the frozen batch norms into the convolutions
  (channels-last, weights packed for oneDNN once) and packs the Linear layers' weights.
  Nothing else: what the model needs to compile well it does itself. Its data
  preprocessor marks the image height and width dynamic (``mark_image_sizes_dynamic`` in
  ``base_detr.py``), so the graph has symbolic sizes from the first compilation, and
  inductor runs the frozen Linear layers with oneDNN (with static sizes: MKL's packed
  GEMM, which on this AVX-512 AMD CPU runs at half oneDNN's speed).

Cases: inference at batch 1 (``mode='tensor'`` under ``torch.no_grad()``) for each
``--sizes`` entry, and one training step (forward in ``mode='loss'``, backward, AdamW step;
the set losses and DINO's denoising queries run eagerly inside the compiled forward) at
batch 2 for each ``--train-sizes`` entry.

Before timing, each case is run once eagerly and once compiled: the compiled call's time
is the compile time (cold, unless ``TORCHINDUCTOR_CACHE_DIR`` holds the graphs of an
earlier run), and the largest absolute difference between the two runs' outputs is
reported (inference: every output tensor; training: the losses and every gradient, with
the same seed for DINO's denoising noise, before any optimiser step). With random
weights the largest gradient difference is in a sampling-offset Linear: its initial
offsets put the sampling points exactly on cell centres, where bilinear interpolation
has a kink, so that the float32 rounding of a location decides which side's slope its
gradient takes; eager float32 differs from eager float64 there as much (docs/deployment.md).
``--check-float64`` repeats each inference comparison with a float64 copy of the model
(compiled again, without freezing, whose oneDNN weights have no float64: minutes more), where float32's rounding, and the rank swaps of near-tied
two-stage proposals it causes, no longer hide what the compiled graph computes.
"""
import time
from typing import Dict, Tuple

import torch


def _max_abs_diff(a, b) -> float:
    if isinstance(a, torch.Tensor):
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        return max(_max_abs_diff(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return max([_max_abs_diff(x, y) for x, y in zip(a, b) if x is not None] or [0.0])
    return 0.0


def _worst_gradient(a: Dict, b: Dict) -> str:
    """The name of the gradient with the largest absolute difference."""
    return max(a, key=lambda k: (a[k].double() - b[k].double()).abs().max().item())


def _query_diffs(eager, out) -> Tuple[torch.Tensor, float]:
    """``(B, Q)``: the largest difference of each decoder query's outputs (the fields that
    end in ``(B, Q, channels)``), and the largest difference of the other fields (two-stage
    Deformable DETR's encoder outputs, ``(B, N, channels)``)."""
    queries = eager.all_cls_scores.shape[-2]
    per_query, other = [], 0.0
    for a, b in zip(eager, out):
        if a is None:
            continue
        diff = (a - b).abs()
        if a.shape[-2] == queries:
            per_query.append(diff.flatten(0, -4).amax((0, -1)) if a.dim() > 3 else diff.amax(-1))
        else:
            other = max(other, diff.max().item())
    return torch.stack(per_query).amax(0), other


def _describe_inference_diff(eager, out, tol: float = 1e-4) -> str:
    """The largest output difference; where some queries differ by more than ``tol``, how
    many, and how closely the selected proposals' scores agree. Two-stage models pick
    their queries by the top-k of the encoder's proposal scores, and DINO pairs the k-th
    proposal with the k-th content query: two proposals whose scores are within float32
    rounding of each other can swap ranks, and the queries they seed then differ as
    wholes (and, through the decoder's self-attention, the others a little)."""
    per_query, other = _query_diffs(eager, out)
    text = f'{max(per_query.max().item(), other):.1e}'
    far = per_query > tol
    if far.any():
        text += f' ({int(far.sum())} of {per_query.numel()} queries > {tol:.0e}'
        scores = _sorted_score_diff(eager, out)
        if scores is not None:
            text += f"; the selected proposals' scores, sorted, agree to {scores:.1e}"
        text += ')'
    return text


def _sorted_score_diff(eager, out):
    """How closely the selected proposals' best scores, sorted, agree (None without)."""
    a, b = getattr(eager, 'enc_cls_scores', None), getattr(out, 'enc_cls_scores', None)
    if a is None or b is None or a.shape[-2] != eager.all_cls_scores.shape[-2]:
        return None
    a, b = (x.max(-1).values.sort(-1).values for x in (a, b))
    return (a - b).abs().max().item()


def _compile_inference(model, compiled, inputs, samples) -> Tuple[float, str]:
    """Compile time of the first compiled call and the output difference."""
    model.eval()
    with torch.no_grad():
        eager = model(inputs, samples, mode='tensor')
        start = time.perf_counter()
        out = compiled(inputs, samples, mode='tensor')
        seconds = time.perf_counter() - start
    return seconds, _describe_inference_diff(eager, out)


def _float64_inference_diff(model, inputs, samples) -> str:
    """The same comparison with a float64 copy of the model, compiled afresh: float32's
    rounding differences, and the rank swaps of near-tied proposals they cause, vanish,
    so what is left is any difference in what the compiled graph computes."""
    import copy
    model64 = copy.deepcopy(model).double().eval()
    # without freezing: its oneDNN convolution weights are float32 / bfloat16 / half only
    # ("itensor_view_from_dense expects float/bfloat16/half..." in float64)
    with torch._inductor.config.patch(freezing=False):
        return _compile_inference(model64, torch.compile(model64), inputs.double(),
                                  samples)[1]


def _losses_and_grads(fn, model, inputs, samples) -> Tuple[Dict, Dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # DINO's denoising noise: the same draw in both runs
    losses = fn(inputs, [s.clone() for s in samples], mode='loss')
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


def _compile_training(model, compiled, inputs, samples) -> Tuple[float, float, float, str]:
    """Compile time, the largest difference of the losses and of the gradients, and the
    gradient where it is."""
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager = _losses_and_grads(model, model, inputs, samples)
    model.load_state_dict(state)
    start = time.perf_counter()
    out = _losses_and_grads(compiled, model, inputs, samples)
    seconds = time.perf_counter() - start
    model.load_state_dict(state)
    return (seconds, _max_abs_diff(eager[0], out[0]), _max_abs_diff(eager[1], out[1]),
            _worst_gradient(eager[1], out[1]))


def run_compile_benchmark(args, run_cases, Case, build_model, make_inputs, inference_fn,
                          train_fn, disable_dropout):
    """Rows of (case, eager time, compiled time, speed-up, compile time, max abs diff,
    memory of each); prints them and the markdown table."""
    torch._inductor.config.freezing = True
    model = build_model(args)
    compiled = torch.compile(model)
    cases, notes = [], []

    def evaluating():
        model.eval()

    def training():
        model.train()
        disable_dropout(model)

    for text in args.sizes:
        size = tuple(int(x) for x in text.lower().split('x'))
        inputs, samples = make_inputs(model, size, 1, args.device, training=False)
        seconds, diff = _compile_inference(model, compiled, inputs, samples)
        print(f'inference b1 {text}: compiled in {seconds:.1f} s, max abs diff {diff}',
              flush=True)
        if getattr(args, 'check_float64', False):
            diff64 = _float64_inference_diff(model, inputs, samples)
            print(f'inference b1 {text}, float64: max abs diff {diff64}', flush=True)
            diff = f'{diff}; float64: {diff64}'
        notes.append(dict(compile_s=seconds, diff=diff))
        cases.append(Case(f'inference b1 {text}', dict(
            eager=_tensor_mode(inference_fn, model, inputs, samples),
            compiled=_tensor_mode(inference_fn, compiled, inputs, samples)), evaluating))
    for text in args.train_sizes:
        size = tuple(int(x) for x in text.lower().split('x'))
        inputs, samples = make_inputs(model, size, 2, args.device, training=True)
        training()
        seconds, loss_diff, grad_diff, where = _compile_training(model, compiled, inputs, samples)
        diff = f'losses {loss_diff:.1e}, gradients {grad_diff:.1e} ({where})'
        print(f'train step b2 {text}: compiled in {seconds:.1f} s, max abs diff {diff}',
              flush=True)
        notes.append(dict(compile_s=seconds, diff=diff))
        cases.append(Case(f'train step b2 {text}', dict(
            eager=train_fn(model, inputs, samples),
            compiled=train_fn(compiled, inputs, samples)), training))
    rows = run_cases(cases, args)
    for row, note in zip(rows, notes):
        row.update(note)
    return rows


def _tensor_mode(inference_fn, model, inputs, samples):
    return inference_fn(model, inputs, samples, mode='tensor')


def format_compile_table(rows, args, device_name) -> str:
    from mmdeform.ops.ms_deform_attn import resolve_backend
    backend = resolve_backend(None, on_cuda=args.device.startswith('cuda'), where=args.device)
    lines = [f'Device: {device_name}; torch {torch.__version__}; threads '
             f'{torch.get_num_threads()}; median (best) of {args.repeats} alternating repeats '
             f'after {args.warmup} warm-up runs.',
             f'Model: `{args.config}`, random weights; compiled: `torch.compile(model)`, '
             'inductor, `torch._inductor.config.freezing = True`. '
             f"Deformable attention: '{backend}'.", '',
             '| case | eager (s) | compiled (s) | speed-up | compile (s) | max abs diff | '
             'peak eager (MiB) | peak compiled (MiB) | extra eager (MiB) | '
             'extra compiled (MiB) |',
             '| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |']
    for r in rows:
        lines.append(f"| {r['case']} | {r['eager_s']:.3f} ({r['eager_best_s']:.3f}) | "
                     f"{r['compiled_s']:.3f} ({r['compiled_best_s']:.3f}) | "
                     f"{r['ratio']:.2f}x ({r['eager_best_s'] / r['compiled_best_s']:.2f}x) | "
                     f"{r['compile_s']:.0f} | {r['diff']} | {r['eager_mib']:.0f} | "
                     f"{r['compiled_mib']:.0f} | {r['eager_extra_mib']:.0f} | "
                     f"{r['compiled_extra_mib']:.0f} |")
    return '\n'.join(lines)
