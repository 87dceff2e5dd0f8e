"""Build mmdet 3.3.0's own models, the independent reference of the parity tests."""
import os

import mmdet
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


def assert_gradients_match(ref: torch.nn.Module, ours: torch.nn.Module, rtol: float = 5e-3,
                           atol: float = 1e-7) -> int:
    """After ``backward()`` on both models, every parameter gradient of mmdet's
    model, renamed by the mmdet -> mmdeform converter, must equal ours: per
    tensor, ``max |diff| <= rtol * max |grad| + atol``. Tensors the converter
    adds (zero biases mmdet lacks) have no mmdet gradient and are skipped.
    Returns the number of tensors compared."""
    from mmdeform.converters.mmdet import convert_mmdet
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    renamed, report, _ = convert_mmdet(ref_grads, {})
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    compared = {n: g for n, g in renamed.items() if n not in report.added}
    expected = set(our_grads) - set(report.added)
    assert set(compared) == expected, (sorted(set(compared) ^ expected)[:8], 'have a gradient '
                                       'in only one of the two models')
    bad = []
    for name, grad in compared.items():
        diff = (our_grads[name] - grad).abs().max().item()
        if diff > rtol * grad.abs().max().item() + atol:
            bad.append(f'{name}: max |diff| {diff:.3g}, max |grad| {grad.abs().max().item():.3g}')
    assert not bad, 'gradients differ:\n' + '\n'.join(bad[:10])
    return len(compared)
