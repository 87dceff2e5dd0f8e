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
