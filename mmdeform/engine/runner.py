"""mmengine's Runner with mmdeform's checkpoint trust policy and CPU-only distributed runs."""
import glob
import os
import os.path as osp
import zipfile
from typing import Optional
from datetime import timedelta

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.logging import MMLogger
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner as MMEngineRunner
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
from mmengine.visualization import Visualizer

from mmdeform.registry import RUNNERS
from mmdeform.utils.checkpoint import (CheckpointMismatchError, check_family, checkpoint_mismatch,
                                       describe_mismatch, register_checkpoint_loaders,
                                       trusted_checkpoints)
from mmdeform.utils.errors import CheckpointReadError, ConfigMismatchError
from .compile import check_training_options, compile_detector, compile_options
from .hooks.finite_loss_hook import FiniteLossHook, NonFiniteLossError
from .hooks.rng_state_hook import gather_rng_states

register_checkpoint_loaders()


def is_complete_checkpoint(path: str) -> bool:
    """A file that ``torch.save`` finished: a zip archive with its central directory."""
    return osp.isfile(path) and zipfile.is_zipfile(path)


def latest_checkpoint(work_dir: str, logger=None) -> Optional[str]:
    """The checkpoint that ``last_checkpoint`` names, or, where that file is missing,
    empty or names no complete checkpoint, the newest complete ``*.pth`` in the work dir."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named and is_complete_checkpoint(named):
        return named
    found = sorted((p for p in glob.glob(osp.join(work_dir, '*.pth')) if is_complete_checkpoint(p)),
                   key=osp.getmtime)
    if found and logger is not None:
        why = (f'names {named!r}, which is not a complete checkpoint' if named else
               'is missing or empty')
        logger.warning(f'{pointer} {why}; resuming from the newest complete checkpoint {found[-1]}')
    return found[-1] if found else None


def unwrap(model):
    return model.module if is_model_wrapper(model) else model


@RUNNERS.register_module()
class Runner(MMEngineRunner):
    """:class:`mmengine.runner.Runner` with these changes.

    * Resuming loads the run's own checkpoint in full (trusted); every other
      checkpoint goes through the restricted unpickler (see
      :mod:`mmdeform.utils.checkpoint`). A file that cannot be read, or that
      holds another detector family's weights, is a one-line error naming it.
    * Without CUDA, ``--launcher pytorch`` uses gloo and wraps the model in
      DDP with ``device_ids=None``: mmengine's ``init_dist`` calls
      ``torch.cuda.set_device`` and its DDP wrapper passes
      ``device_ids=[rank]``, both of which fail on a CPU-only machine.
    * Checkpoints in a local directory are written to a temporary name and
      renamed into place, so a crash never leaves a truncated ``epoch_N.pth``;
      with mmdeform's :class:`CheckpointHook`, ``last_checkpoint`` always names
      a complete file. ``--resume`` falls back to the newest complete
      checkpoint if ``last_checkpoint`` does not, and removes the temporary
      files of a save that was killed.
    * In distributed runs every rank's random generator states are gathered
      before rank 0 saves (for :class:`RNGStateHook`).
    * A checkpoint that does not fit the model is reported key by key (missing,
      unexpected, shape); with ``strict_load = True`` in the config (as
      ``tools/test.py`` sets it) that is an error instead of a warning.
    * ``model.bbox_head.num_classes`` must equal the number of classes in the
      dataset's metainfo, and training stops at the first non-finite loss
      (:class:`FiniteLossHook`, added to every run).
    * ``cfg.compile`` (``True`` or a dict of ``torch.compile`` arguments, as in mmengine)
      compiles the detector's forward, for training, validation and testing alike, where
      mmengine 0.10.7 compiles the wrapped model's ``train_step`` in ``train()`` only
      (:mod:`mmdeform.engine.compile` says why); the log says what was compiled.
    * A second Runner built in the same process within the same second gets its
      own logger and message hub: mmengine names them after the config and the
      second the run started, and would hand the second run the first one's
      (the logger's handlers and log file; a stream handler whose stream has
      since been closed then prints "--- Logging error ---" tracebacks).
    * A second Runner in the same process gets its own visualizer: the configs name it
      ``'visualizer'`` and mmengine's registry hands back an existing instance of that
      name, whose backends write the second run's scalars (``vis_data``) into the first
      run's directory.
    """

    def build_logger(self, log_level='INFO', log_file=None, **kwargs):
        if 'name' not in kwargs:
            base, n = self._experiment_name, 1
            while MMLogger.check_instance_created(self._experiment_name):
                n += 1
                self._experiment_name = f'{base}_{n}'
        return super().build_logger(log_level, log_file, **kwargs)

    def build_visualizer(self, visualizer=None):
        if isinstance(visualizer, dict) and 'name' in visualizer:
            base, n = visualizer['name'], 1
            while Visualizer.check_instance_created(visualizer['name']):
                n += 1
                visualizer = dict(visualizer, name=f'{base}_{n}')
        return super().build_visualizer(visualizer)

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
            if self.cfg.get('sync_bn') is not None:  # RT-DETR's configs ask for it
                self.logger.warning(f'sync_bn={self.cfg.sync_bn!r} ignored: SyncBatchNorm needs '
                                    'CUDA; each CPU process normalises its own batch')
                self.cfg.sync_bn = None
        return super().wrap_model(model_wrapper_cfg, model)

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        custom_hooks = list(custom_hooks or [])
        if not any(isinstance(h, FiniteLossHook) or
                   (isinstance(h, dict) and str(h.get('type', '')).endswith('FiniteLossHook'))
                   for h in custom_hooks):
            custom_hooks.append(dict(type='FiniteLossHook'))
        super().register_hooks(default_hooks, custom_hooks)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        self.rank_rng_states = gather_rng_states()  # a collective: every rank calls save
        if not osp.isdir(out_dir):  # a remote backend: its own semantics
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        partial = f'.{filename}.partial'
        super().save_checkpoint(out_dir, partial, *args, **kwargs)
        if self.rank == 0:
            os.replace(osp.join(out_dir, partial), osp.join(out_dir, filename))

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        if not isinstance(checkpoint, dict):
            raise CheckpointReadError(f'checkpoint {filename} holds a {type(checkpoint).__name__}, '
                                      'not a dict of weights')
        model = unwrap(self.model)
        weights = checkpoint.get('state_dict', checkpoint.get('model', checkpoint))
        check_family(filename, model, weights.keys() if isinstance(weights, dict) else [])
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

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        resume_from = None
        if self._resume:
            if self.rank == 0:  # the temporary files of a save that was killed
                for path in glob.glob(osp.join(self.work_dir, '.*.partial')):
                    os.remove(path)
            resume_from = self._load_from
            if resume_from is None:
                resume_from = latest_checkpoint(self.work_dir, self.logger)
                self.logger.info(f'Auto resume from {resume_from}' if resume_from else
                                 'Auto resume: no checkpoint in the work dir; starting from '
                                 'scratch')
        if resume_from is not None:
            self.resume(resume_from)
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from)
        else:
            return
        self._has_loaded = True

    def check_num_classes(self, dataloader, split: str) -> None:
        """``model.bbox_head.num_classes`` must be the number of the dataset's classes."""
        dataset = getattr(dataloader, 'dataset', None)
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        num_classes = getattr(getattr(unwrap(self.model), 'bbox_head', None), 'num_classes', None)
        if classes is None or num_classes is None or len(classes) == num_classes:
            return
        ann_file = getattr(dataset, 'ann_file', '')
        raise ConfigMismatchError(
            f'model.bbox_head.num_classes is {num_classes}, but the {split} dataset '
            f'({type(dataset).__name__}{", " + ann_file if ann_file else ""}) has '
            f'{len(classes)} classes in its metainfo ({", ".join(map(str, classes[:6]))}'
            f'{", ..." if len(classes) > 6 else ""}); set model.bbox_head.num_classes='
            f'{len(classes)} or the dataset\'s metainfo=dict(classes=...)')

    def _maybe_compile(self, target: str = 'forward') -> None:
        """Compile the detector's forward once, whatever ``target`` mmengine names (it
        calls this with ``'train_step'`` in ``train()``; ``val()`` and ``test()`` call it too)."""
        options = compile_options(self.cfg.get('compile'))
        if options is None or getattr(self, '_compiled', False):
            return
        if target == 'train_step':
            check_training_options(options)
        self.logger.info(compile_detector(unwrap(self.model), options))
        self._compiled = True

    def train(self):
        if self._train_loop is not None:
            self.check_num_classes(self.train_loop.dataloader, 'train')
        try:
            return super().train()
        except FloatingPointError as e:
            if isinstance(e, NonFiniteLossError):
                raise
            hook = next((h for h in self.hooks if isinstance(h, FiniteLossHook)), None)
            if hook is None:
                raise
            raise NonFiniteLossError(f'{hook.describe(self)} ({e})') from None

    def val(self):
        if self._val_loop is not None:
            self.check_num_classes(self.val_loop.dataloader, 'val')
        self._maybe_compile()
        return super().val()

    def test(self):
        if self._test_loop is not None:
            self.check_num_classes(self.test_loop.dataloader, 'test')
        self._maybe_compile()
        return super().test()


__all__ = ['Runner', 'latest_checkpoint', 'is_complete_checkpoint']
