"""mmengine's Runner with mmdeform's checkpoint trust policy and CPU-only distributed runs."""
from datetime import timedelta

import os
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner as MMEngineRunner
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

from mmdeform.registry import RUNNERS
from mmdeform.utils.checkpoint import (CheckpointMismatchError, checkpoint_mismatch,
                                       describe_mismatch, register_checkpoint_loaders,
                                       trusted_checkpoints)

register_checkpoint_loaders()


@RUNNERS.register_module()
class Runner(MMEngineRunner):
    """:class:`mmengine.runner.Runner` with four changes.

    * Resuming loads the run's own checkpoint in full (trusted); every other
      checkpoint goes through the restricted unpickler (see
      :mod:`mmdeform.utils.checkpoint`).
    * Without CUDA, ``--launcher pytorch`` uses gloo and wraps the model in
      DDP with ``device_ids=None``: mmengine's ``init_dist`` calls
      ``torch.cuda.set_device`` and its DDP wrapper passes
      ``device_ids=[rank]``, both of which fail on a CPU-only machine.
    * Checkpoints in a local directory are written to a temporary name and
      renamed into place, so a crash never leaves a truncated ``epoch_N.pth``.
    * A checkpoint that does not fit the model is reported key by key (missing,
      unexpected, shape); with ``strict_load = True`` in the config (as
      ``tools/test.py`` sets it) that is an error instead of a warning.
    """

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            if self.launcher != 'pytorch':
                raise RuntimeError(f'launcher {self.launcher!r} without CUDA is not supported; '
                                   'on a CPU-only machine use tools/dist_train.sh (torchrun, '
                                   "launcher 'pytorch') which runs gloo processes")
            timeout = env_cfg.get('dist_cfg', {}).get('timeout', 1800)
            torch_dist.init_process_group(backend='gloo', timeout=timedelta(seconds=timeout))
            print(f'CPU-only distributed run: gloo process group, world_size: '
                  f'{torch_dist.get_world_size()}, rank: {torch_dist.get_rank()}', flush=True)
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available():
            model_wrapper_cfg = dict(model_wrapper_cfg or {})
            model_wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
            model_wrapper_cfg.setdefault('find_unused_parameters',
                                         self.cfg.get('find_unused_parameters', False))
            model_wrapper_cfg['device_ids'] = None
        return super().wrap_model(model_wrapper_cfg, model)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if not osp.isdir(out_dir):  # a remote backend: its own semantics
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        partial = f'.{filename}.partial'
        super().save_checkpoint(out_dir, partial, *args, **kwargs)
        if self.rank == 0:
            os.replace(osp.join(out_dir, partial), osp.join(out_dir, filename))

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        mismatch = checkpoint_mismatch(model, checkpoint, revise_keys)
        if any(mismatch.values()):
            message = describe_mismatch(filename, mismatch, checkpoint)
            if strict or self.cfg.get('strict_load', False):
                raise CheckpointMismatchError(message)
            self.logger.warning(message)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def resume(self, filename: str, *args, **kwargs) -> None:
        self.logger.info(f'Resuming from {filename}: it is this run\'s own training state, '
                         'so it is unpickled in full (trusted)')
        with trusted_checkpoints():
            super().resume(filename, *args, **kwargs)


__all__ = ['Runner']
