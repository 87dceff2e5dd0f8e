"""Save the random number generators' states with each checkpoint and restore them on resume."""
import random
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from mmdeform.registry import HOOKS


def capture_rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states() -> Optional[List[dict]]:
    """Every rank's generator states (a collective: call it on all ranks); None in one process."""
    return all_gather_object(capture_rng_state()) if get_world_size() > 1 else None


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Make a resumed run draw the same random numbers as an uninterrupted one.

    mmengine re-seeds on resume, so dropout (and augmentation in the main
    process) after a resume differs from the run that was not stopped. This
    hook stores the Python, numpy and torch generator states in the checkpoint
    (``checkpoint['rng_state']``; in a distributed run every rank's, gathered by
    the Runner before rank 0 saves, as ``checkpoint['rng_state_per_rank']``)
    and restores them where the uninterrupted run stood: before the first
    epoch after the resume (epoch-based loops, before the data loader draws its
    base seed), or before the first iteration (iteration-based loops, after
    the batches already trained on are skipped).

    Validation during training draws from the generators too (the data
    loader's base seed); it runs after the checkpoint is written, and a
    resumed run does not repeat it. The hook therefore restores the training
    state after each validation, so that validation never shifts training's
    random numbers.

    Data-loader workers seed themselves from the config's seed (mmengine's
    ``worker_init_fn``) each time they start: resumes are exact with
    ``persistent_workers=False``. Persistent workers carry their generators
    across epochs, which no checkpoint holds.
    """
    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None
        self._training_state: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        per_rank = getattr(runner, 'rank_rng_states', None)
        if get_world_size() == 1:
            checkpoint['rng_state'] = capture_rng_state()
        elif per_rank is not None:
            checkpoint['rng_state_per_rank'] = per_rank

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        per_rank = checkpoint.get('rng_state_per_rank')
        if get_world_size() == 1 and 'rng_state' in checkpoint:
            self._pending = checkpoint['rng_state']
        elif per_rank is not None and len(per_rank) == get_world_size():
            self._pending = per_rank[get_rank()]

    def _restore_pending(self) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None

    def before_train_epoch(self, runner) -> None:
        if not isinstance(runner.train_loop, IterBasedTrainLoop):
            self._restore_pending()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._restore_pending()

    def before_val(self, runner) -> None:
        self._training_state = capture_rng_state()

    def after_val(self, runner) -> None:
        if self._training_state is not None:
            restore_rng_state(self._training_state)
            self._training_state = None
