"""Save the random number generators' states with each checkpoint and restore them on resume."""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook

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


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Make a resumed run draw the same random numbers as an uninterrupted one.

    mmengine re-seeds on resume, so dropout (and augmentation) after a resume
    differs from the run that was not stopped. In a single-process run this
    hook stores the Python, numpy and torch generator states in the checkpoint
    (``checkpoint['rng_state']``) and restores them right before the first
    training iteration after the resume, i.e. after an iteration-based loop
    has skipped the batches it already trained on.

    Distributed runs are left as mmengine makes them: the Runner saves
    checkpoints on rank 0 alone, so the other ranks' states cannot be stored.
    With ``num_workers > 0`` the data workers keep generators of their own,
    which no checkpoint holds.
    """
    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if get_world_size() == 1:
            checkpoint['rng_state'] = capture_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'rng_state' in checkpoint and get_world_size() == 1:
            self._pending = checkpoint['rng_state']

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None
