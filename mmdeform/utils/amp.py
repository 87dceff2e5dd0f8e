"""Mixed precision: the parts of a DETR that must stay in float32 inside autocast."""
import functools
from typing import Callable, Optional

import torch
from torch import Tensor


def _device_type(values) -> Optional[str]:
    """The device type of the first tensor among ``values`` (one level into lists)."""
    for value in values:
        if isinstance(value, (list, tuple)):
            value = _device_type(value)
            if value is not None:
                return value
        elif isinstance(value, Tensor):
            return value.device.type
    return None


def _to_fp32(value):
    """fp16 / bf16 tensors (also inside lists, tuples and dicts) as float32; others unchanged."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, tuple) and hasattr(value, '_fields'):  # a NamedTuple
        return type(value)(*(_to_fp32(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


def _autocast_enabled(device: str) -> bool:
    try:
        return torch.is_autocast_enabled(device)
    except (TypeError, RuntimeError):  # torch < 2.4 takes no device; 'meta' has no autocast
        if device == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return device == 'cuda' and torch.is_autocast_enabled()


def fp32_in_autocast(fn: Callable) -> Callable:
    """Run ``fn`` in float32 when it is called inside an autocast region.

    Inside ``torch.autocast`` on the device of ``fn``'s first tensor argument,
    autocast is switched off for the call and every fp16 / bf16 tensor argument
    is cast to float32, so the whole function computes in float32 and returns
    float32. Outside autocast the call is unchanged (a model converted with
    ``.half()`` keeps its dtype). For what numbers such as the matching costs,
    the box losses, ``inverse_sigmoid`` (``x / (1 - x)`` reaches ``1 / eps``,
    above fp16's 65504) and the sampling of deformable attention need: see
    docs/get_started.md, "Mixed precision".
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = _device_type(list(args) + list(kwargs.values()))
        if device is None or not _autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*_to_fp32(args), **_to_fp32(kwargs))

    return wrapper
