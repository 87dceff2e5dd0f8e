"""Save the random number generators' states with each checkpoint and restore them on resume."""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
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

    mmengine re-seeds on resume, so augmentations and dropout after a resume
    differ from the run that was not stopped. This hook stores every
    process's Python, numpy and torch generator states in the checkpoint
    (``checkpoint['rng_states']``, one per rank) and restores them right
    before the first training iteration after the resume, i.e. after an
    iteration-based loop has skipped the batches it already trained on.
    States from a different world size are not restored (logged).
    With ``num_workers > 0`` the data workers keep generators of their own,
    which no checkpoint holds.
    """
    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['rng_states'] = all_gather_object(capture_rng_state())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = checkpoint.get('rng_states')
        if states is None:
            return
        rank, world_size = get_dist_info()
        if len(states) != world_size:
            runner.logger.warning(f'The checkpoint holds RNG states of {len(states)} processes, '
                                  f'this run has {world_size}: they are not restored')
            return
        self._pending = states[rank]

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None
