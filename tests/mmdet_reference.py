"""Build mmdet 3.3.0's own models, the independent reference of the parity tests."""
import contextlib
import copy
import os
from typing import Dict

import mmdet
import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmdeform.registry import MODELS

MMDET_CONFIGS = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs')


def mmdet_config(relpath: str) -> Config:
    cfg = Config.fromfile(os.path.join(MMDET_CONFIGS, relpath))
    cfg.model.backbone.init_cfg = None  # no download
    return cfg


def build_mmdet(cfg: Config, seed: int = 0):
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(cfg.model)
    model.init_weights()
    return model


def build_ours(cfg: Config):
    with DefaultScope.overwrite_default_scope('mmdeform'):
        return MODELS.build(cfg.model)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.02) -> None:
    """Add noise to every parameter and running statistic, so that no two rows
    are alike and a swapped or skipped tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=g) * scale
        if name.endswith('running_var'):
            tensor.mul_(1 + noise.abs())
        else:
            tensor.add_(noise)


# Float64 gradient parity: the two models compute the same function with different
# operation orders (fused multiply-adds, other reductions), so their float64 gradients
# differ by rounding, 5e-15 to 1e-13 of a tensor's largest gradient here (the tests print
# it).
# 1e-9 leaves four orders of magnitude for machines that round differently; the tests'
# mutations (a missing or extra detach, look-forward-twice off) move a gradient by 1e-3
# to 1 of its largest value, six orders above it.
GRAD_RTOL = 1e-9
# A gradient that is zero in exact arithmetic (DETR's first decoder self-attention sees
# equal values at every key, so its q/k projections get none) is rounding noise, about
# 1e-18 here; the gradients that matter are 1e-2 to 10.
GRAD_ATOL = 1e-12
# Float64 losses: rounding differences are about 1e-15 of the loss; 1e-10 is as safe.
LOSS_RTOL = 1e-10


def float64_copies(ref: torch.nn.Module, ours: torch.nn.Module):
    """Copies of both models in float64, in training mode without dropout."""
    from helpers import disable_dropout
    copies = tuple(copy.deepcopy(m).double().train() for m in (ref, ours))
    for m in copies:
        disable_dropout(m)
    return copies


def float64_batch(inputs: torch.Tensor, samples: list):
    """The batch of :func:`helpers.preprocess` with the images and the boxes in float64."""
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
    return inputs.double(), samples


def losses_and_backward(model: torch.nn.Module, inputs, samples, seed: int = 7) -> dict:
    """Training losses of ``model`` on a batch, after ``backward()`` of their sum. The seed
    fixes the draws of DINO's denoising noise, so that both models see the same noise.

    It runs with float64 as the default dtype: both models make some constants with
    ``torch.tensor`` / ``new_tensor`` of Python numbers (mmdet's valid ratios and loss
    weights among them), which would otherwise be float32 and move the float64 results
    by 1e-9 to 1e-7."""
    model.zero_grad(set_to_none=False)  # a gradient a mutation cuts off reads as zeros
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        losses = model(inputs, samples, mode='loss')
        sum(losses.values()).backward()
    finally:
        torch.set_default_dtype(default)
    return losses


def assert_losses_match(ref_losses: dict, our_losses: dict) -> None:
    assert set(our_losses) == set(ref_losses)
    for key, value in ref_losses.items():
        assert torch.isfinite(our_losses[key]), key
        assert our_losses[key].item() == pytest.approx(value.item(), rel=LOSS_RTOL,
                                                       abs=1e-12), key


def gradient_differences(ref: torch.nn.Module, ours: torch.nn.Module) -> Dict[str, float]:
    """After ``backward()`` on both models: for every parameter gradient of mmdet's model,
    renamed by the mmdet -> mmdeform converter, ``max |ours - mmdet's| / max |mmdet's|``
    (plus :data:`GRAD_ATOL` / :data:`GRAD_RTOL` in the denominator, so that the test
    ``max |diff| <= GRAD_RTOL * max |grad| + GRAD_ATOL`` is ``value <= GRAD_RTOL``).
    Tensors the converter adds (zero biases mmdet lacks) have no mmdet gradient and are
    skipped; a gradient in only one of the two models is an error."""
    from mmdeform.converters.mmdet import convert_mmdet
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    renamed, report, _ = convert_mmdet(ref_grads, {})
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    compared = {n: g for n, g in renamed.items() if n not in report.added}
    expected = set(our_grads) - set(report.added)
    assert set(compared) == expected, (sorted(set(compared) ^ expected)[:8], 'have a gradient '
                                       'in only one of the two models')
    return {name: ((our_grads[name] - grad).abs().max() /
                   (grad.abs().max() + GRAD_ATOL / GRAD_RTOL)).item()
            for name, grad in compared.items()}


def assert_gradients_match(ref: torch.nn.Module, ours: torch.nn.Module) -> Dict[str, float]:
    """Every gradient within :data:`GRAD_RTOL` of its tensor's largest value (float64)."""
    diffs = gradient_differences(ref, ours)
    bad = sorted(((d, n) for n, d in diffs.items() if d > GRAD_RTOL), reverse=True)
    assert not bad, 'gradients differ (max |diff| / max |grad|):\n' + '\n'.join(
        f'{n}: {d:.3g}' for d, n in bad[:10])
    print(f'{len(diffs)} gradients, worst max |diff| / max |grad| {max(diffs.values()):.2e}')
    return diffs


def assert_mutation_is_caught(ref: torch.nn.Module, ref_losses: dict, ours: torch.nn.Module,
                              inputs, samples, mutation) -> float:
    """After :func:`assert_gradients_match`, run ours again under ``mutation`` (a context
    manager), which leaves the losses as they are but changes the gradients, as a real bug
    of that kind would: the worst gradient difference from mmdet's gradients (still in
    ``ref``) must exceed :data:`GRAD_RTOL` by at least four orders."""
    with mutation:
        mutated = losses_and_backward(ours, inputs, samples)
    assert_losses_match(ref_losses, mutated)  # the mutation is invisible in the losses
    worst = max(gradient_differences(ref, ours).values())
    print(f'with the mutation: worst max |diff| / max |grad| {worst:.2e}')
    assert worst > 1e4 * GRAD_RTOL, worst
    return worst


@contextlib.contextmanager
def detach_output(module: torch.nn.Module):
    """Mutation: ``module``'s output detached (a detach too many): same values, but no
    gradient flows back through it."""
    handle = module.register_forward_hook(lambda m, args, out: out.detach())
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def no_detach_inside(module: torch.nn.Module):
    """Mutation: ``Tensor.detach`` is the identity while ``module`` runs (a missing
    detach): same values, gradients flow where they must not."""
    original = torch.Tensor.detach

    def patch(*_):
        torch.Tensor.detach = lambda t: t

    def restore(*_):
        torch.Tensor.detach = original

    handles = [module.register_forward_pre_hook(patch), module.register_forward_hook(restore)]
    try:
        yield
    finally:
        restore()
        for h in handles:
            h.remove()
