"""``cfg.compile``: ``torch.compile`` of the detector for training, validation and testing.

mmengine 0.10.7's Runner reads ``cfg.compile`` (``True`` or a dict of ``torch.compile``
arguments) in ``train()`` only, and compiles the wrapped model's ``train_step``: the data
preprocessor, the optimiser wrapper's backward and step and the loss parsing are then
traced too (graph breaks at the backward, a recompilation per image size in the
preprocessor), and validation and testing stay eager. mmdeform's Runner compiles the
detector's ``forward`` instead (``nn.Module.compile``), once, in ``train()``, ``val()``
and ``test()``: every mode of the network goes through the compiled code (the losses in
training, the predictions in validation and testing), and what is not the network stays
eager: the data preprocessor, the optimiser, the hooks, and inside the forward the set
losses (Hungarian matching with scipy) and DINO's denoising queries, which are
``torch.compiler.disable``'d (data-dependent shapes).
"""
import inspect
from typing import Optional

import torch
from torch import nn

from mmdeform.utils.errors import InputError


class CompileConfigError(InputError, ValueError):
    """``cfg.compile`` is neither a bool nor a dict of ``torch.compile`` arguments."""


def compile_options(value) -> Optional[dict]:
    """The ``torch.compile`` keyword arguments that the config value ``compile`` asks for,
    or None for no compilation (absent, None or False)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise CompileConfigError(f'config key compile: expected True, False or a dict of '
                                 f'torch.compile arguments, got {value!r}')
    allowed = set(inspect.signature(torch.compile).parameters) - {'model'}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise CompileConfigError(f'config key compile: {", ".join(map(repr, unknown))} '
                                 f'{"is not a" if len(unknown) == 1 else "are not"} '
                                 f'torch.compile argument{"s" * (len(unknown) > 1)} '
                                 f'(expected some of {", ".join(sorted(allowed))})')
    return dict(value)


def check_training_options(options: dict) -> None:
    """Inductor's freezing turns the weights into constants of the compiled graph: the
    validation graph of a training run would keep evaluating the first weights."""
    if (options.get('options') or {}).get('freezing'):
        raise CompileConfigError('config key compile.options.freezing: True makes the weights '
                                 'constants of the compiled graph, which training changes; '
                                 'use it for testing only (tools/test.py --compile sets it)')


def compile_detector(model: nn.Module, options: dict) -> str:
    """Compile ``model``'s forward in place (``nn.Module.compile``: ``model(...)`` then runs
    the compiled code, in every mode) and return a sentence saying what was compiled."""
    from mmdeform.ops import library
    if hasattr(model, 'compile'):
        model.compile(**options)
    else:  # torch<2.2: no nn.Module.compile
        model.forward = torch.compile(model.forward, **options)
    backend = options.get('backend', 'inductor')
    backend = backend if isinstance(backend, str) else getattr(backend, '__name__', 'custom')
    extras = ', '.join(f'{k}={v!r}' for k, v in options.items() if k != 'backend')
    what = (f'torch.compile (backend {backend}{", " + extras if extras else ""}) of '
            f'{type(model).__name__}.forward, every mode: training losses, validation and '
            'test predictions. Eager: the data preprocessor, the optimiser step, the hooks, '
            'and inside the forward the set losses (Hungarian matching) and DINO\'s '
            'denoising queries. The first iterations and each new input size compile.')
    if not library.REGISTERED:
        what += (' Our attention kernels are not torch.library operators here (torch<2.4 '
                 'or no CPU extension): the graph breaks at every attention layer.')
    return what


__all__ = ['compile_options', 'compile_detector', 'check_training_options',
           'CompileConfigError']
