"""Stop training at the first non-finite loss, naming the iteration, the terms and the images."""
import math
from typing import List, Optional

import torch
import torch.distributed as torch_dist
from mmengine.device import get_device
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop

from mmdeform.registry import HOOKS
from mmdeform.utils.errors import ReportedError


class NonFiniteLossError(ReportedError, FloatingPointError):
    """Training produced a NaN or infinite loss (or matching cost)."""


def batch_image_paths(data_batch) -> List[str]:
    """The ``img_path`` of every sample of a batch, as far as the samples record it."""
    samples = (data_batch or {}).get('data_samples', []) if isinstance(data_batch, dict) else []
    return [str(s.metainfo.get('img_path', '?')) for s in samples]


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` after the first iteration whose loss is not finite.

    The message names the iteration, the epoch, every loss term that is NaN or
    infinite and the image paths of the batch. The hook runs before
    :class:`CheckpointHook`, so no checkpoint with the weights of that step is
    written: the last checkpoint on disk is the last good one. In distributed
    runs the ranks agree with one all-reduce of a flag, so that all of them stop
    (a rank alone with a finite loss would otherwise wait for the others).

    The Runner adds this hook to every training run; it also reports the
    iteration and images when the loss cannot even be computed because the
    predictions became non-finite (the matcher raises ``FloatingPointError``).
    """
    priority = 'ABOVE_NORMAL'

    def __init__(self) -> None:
        self.paths: List[str] = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.paths = batch_image_paths(data_batch)

    def describe(self, runner, terms: Optional[List[str]] = None) -> str:
        where = f'iteration {runner.iter + 1}'
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            where += f' (epoch {runner.epoch + 1})'
        what = f'loss terms {", ".join(terms)}' if terms else 'the predictions'
        images = ', '.join(self.paths) if self.paths else 'unknown'
        return (f'non-finite loss at {where}, rank {get_rank()}: {what} not finite; batch images: '
                f'{images}. Training stopped before a checkpoint of this step was written; '
                'lower the lr or clip gradients and resume from the last checkpoint')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        terms = [f'{k}={float(v):g}' for k, v in (outputs or {}).items()
                 if 'loss' in k and not math.isfinite(float(v))]
        if len(terms) > 1:  # the total is not a term of its own
            terms = [t for t in terms if not t.startswith('loss=')]
        if get_world_size() > 1:
            flag = torch.tensor([float(bool(terms))], device=get_device())
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
            if flag.item() and not terms:
                raise NonFiniteLossError(
                    f'non-finite loss at iteration {runner.iter + 1} on another rank; this rank '
                    f'({get_rank()}) stops too')
        if terms:
            raise NonFiniteLossError(self.describe(runner, terms))
