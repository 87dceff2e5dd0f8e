"""Test-only hooks for training runs that tests start as processes of their own.

``SoakProbe``, for the kill -9 soak: reports progress to a file and, when asked, makes a
checkpoint save slow and observable, so that a kill can land in the middle of it.

``SOAK_PROBE=path``: after every training iteration, rank 0 appends ``N`` (the
iteration) to ``path``, then pause for ``SOAK_ITER_PAUSE`` seconds (default 0): the tiny
model trains a whole epoch in a fraction of a second, and the pause gives a
kill drawn "during iteration N + 1" time to land there.
``SOAK_SLOW_SAVE=NAME`` (e.g. ``epoch_2.pth``): that checkpoint is written in two
halves; after the first half is on disk, ``saving`` is appended to the probe file and
the write pauses for a minute. The test kills the process meanwhile, leaving a
half-written file.

``BreakAtIteration``: a fault that makes the loss or the weights non-finite (for
:class:`~mmdeform.engine.hooks.finite_loss_hook.FiniteLossHook`).
"""
import os
import time

import torch
from mmengine.dist import get_rank
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook

from mmdeform.registry import HOOKS


def _report(line: str) -> None:
    path = os.environ.get('SOAK_PROBE')
    if path:
        with open(path, 'a') as f:
            f.write(line + '\n')


_put = LocalBackend.put


def _put_slowly(self, obj: bytes, filepath) -> None:
    if os.path.basename(filepath) != f'.{os.environ["SOAK_SLOW_SAVE"]}.partial':
        return _put(self, obj, filepath)
    with open(filepath, 'wb') as f:
        f.write(obj[:len(obj) // 2])
        f.flush()
        os.fsync(f.fileno())
        _report('saving')
        time.sleep(60)
        f.write(obj[len(obj) // 2:])


@HOOKS.register_module()
class SoakProbe(Hook):
    priority = 'LOWEST'

    def __init__(self) -> None:
        if os.environ.get('SOAK_SLOW_SAVE'):
            LocalBackend.put = _put_slowly

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if get_rank() == 0:  # the ranks go in step (every iteration all-reduces)
            _report(f'{runner.iter + 1}')
        time.sleep(float(os.environ.get('SOAK_ITER_PAUSE', 0)))


@HOOKS.register_module()
class BreakAtIteration(Hook):
    """From iteration ``at`` (1-based) on, on rank ``rank`` (every rank if None), make the
    loss (``how='loss'``: an infinite L1 weight) or the weights (``how='weights'``: NaN
    queries) non-finite."""

    def __init__(self, at: int, how: str, rank=None) -> None:
        assert how in ('loss', 'weights'), how
        self.at, self.how, self.rank = at, how, rank

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 < self.at or self.rank not in (None, get_rank()):
            return
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        if self.how == 'loss':
            model.bbox_head.loss_bbox.loss_weight = float('inf')
        else:
            with torch.no_grad():
                model.query_embedding.weight.fill_(float('nan'))
