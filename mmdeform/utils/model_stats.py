from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def count_parameters(model: nn.Module, exclude_backbone_norms: bool = False) -> int:
    """Number of parameters; optionally without the frozen (``requires_grad=False``)
    parameters of the backbone's normalisation layers, which the official DETR, Deformable
    DETR, DINO and RT-DETR repositories hold as ``FrozenBatchNorm2d`` buffers (trained
    norms, as RT-DETR R18/R34's, are counted)."""
    skip = set()
    if exclude_backbone_norms and hasattr(model, 'backbone'):
        norm_types = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)
        for module in model.backbone.modules():
            if isinstance(module, norm_types):
                skip.update(id(p) for p in module.parameters(recurse=False)
                            if not p.requires_grad)
    seen = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
