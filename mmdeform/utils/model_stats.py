from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def count_parameters(model: nn.Module, exclude_backbone_norms: bool = False) -> int:
    """Number of parameters; optionally without the backbone's normalisation layers,
    which are frozen buffers (FrozenBatchNorm) in the official DETR repositories."""
    skip = set()
    if exclude_backbone_norms and hasattr(model, 'backbone'):
        norm_types = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)
        for module in model.backbone.modules():
            if isinstance(module, norm_types):
                skip.update(id(p) for p in module.parameters(recurse=False))
    seen = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
