"""mmengine's AmpOptimWrapper (``tools/train.py --amp``), also on a machine without a GPU."""
from contextlib import contextmanager
from typing import Optional, Union

import torch
from mmengine.device import get_device
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper
from torch import nn

from mmdeform.registry import OPTIM_WRAPPERS

CPU_DTYPES = ('bfloat16', 'float16')


def _scaler_args(loss_scale: Union[str, float, dict]) -> dict:
    """``torch.amp.GradScaler``'s arguments for mmengine's ``loss_scale``."""
    if loss_scale == 'dynamic':
        return {}
    if isinstance(loss_scale, float):
        return dict(init_scale=loss_scale)
    if isinstance(loss_scale, dict):
        return dict(loss_scale)
    raise TypeError(f"AmpOptimWrapper: loss_scale must be 'dynamic', a float or a dict of "
                    f'GradScaler arguments, got {loss_scale!r}')


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(MMEngineAmpOptimWrapper):
    """Automatic mixed precision; on CUDA (and NPU, MLU, MUSA) mmengine's wrapper unchanged.

    mmengine 0.10.7's wrapper asserts a GPU and its CPU autocast takes bfloat16
    only. On the CPU this one instead:

    * autocasts with ``torch.autocast('cpu', dtype)``, ``dtype`` ``'bfloat16'``
      (the default, as mmengine's CPU autocast) or ``'float16'``;
    * for float16 scales the loss with ``torch.amp.GradScaler('cpu')``,
      configured by ``loss_scale`` as mmengine's (``'dynamic'``, a float for a
      static scale, or a dict of GradScaler arguments): float16's smallest
      normal number is 6e-5, and smaller gradients would flush to zero;
    * for bfloat16 scales nothing (``loss_scale`` is ignored): it has
      float32's exponent range. The scaler is then disabled: backward and step
      are the plain ones and its state dict is empty.

    ``tools/train.py --amp`` selects this wrapper with ``loss_scale='dynamic'``;
    set ``optim_wrapper.dtype`` in the config for float16 on the CPU.
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None, use_fsdp: bool = False,
                 **kwargs) -> None:
        self.device_type = get_device()
        if self.device_type != 'cpu':
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if use_fsdp:
            raise ValueError('AmpOptimWrapper: use_fsdp=True needs a GPU (FSDP); this machine '
                             'has none')
        if not hasattr(torch.amp, 'GradScaler'):  # torch < 2.3: bf16-only autocast, no scaler
            raise ValueError(f'AmpOptimWrapper: mixed precision on the CPU needs torch>=2.4, '
                             f'found torch {torch.__version__}; train in fp32 or on a GPU')
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).replace('torch.', '')
        dtype = dtype or 'bfloat16'
        if dtype not in CPU_DTYPES:
            raise ValueError(f'AmpOptimWrapper: dtype on the CPU must be one of {CPU_DTYPES}, '
                             f'got {dtype!r}')
        OptimWrapper.__init__(self, **kwargs)
        self.cast_dtype = getattr(torch, dtype)
        use_scaler = self.cast_dtype == torch.float16
        scaler_args = _scaler_args(loss_scale)
        self._scale_update_param = (loss_scale if use_scaler and isinstance(loss_scale, float)
                                    else None)
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=use_scaler,
                                                **(scaler_args if use_scaler else {}))

    @contextmanager
    def optim_context(self, model: nn.Module):
        if self.device_type != 'cpu':
            with super().optim_context(model):
                yield
            return
        with OptimWrapper.optim_context(self, model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
