"""A progress bar over validation and test iterations."""
import sys
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from mmdeform.registry import HOOKS


@HOOKS.register_module()
class EvalProgressBarHook(Hook):
    """Show how far evaluation has got (rank 0, only when the output is a terminal,
    so log files keep their plain lines). Training progress is in the logger's ETA."""
    priority = 'VERY_LOW'

    def __init__(self, only_tty: bool = True) -> None:
        self.only_tty = only_tty
        self._bar: Optional[ProgressBar] = None

    def _start(self, runner, dataloader) -> None:
        if not is_main_process() or (self.only_tty and not sys.stdout.isatty()):
            return
        self._bar = ProgressBar(len(dataloader))

    def _step(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def _stop(self) -> None:
        if self._bar is not None:
            sys.stdout.write('\n')
            self._bar = None

    def before_val_epoch(self, runner) -> None:
        self._start(runner, runner.val_loop.dataloader)

    def before_test_epoch(self, runner) -> None:
        self._start(runner, runner.test_loop.dataloader)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._step()

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._step()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._stop()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._stop()
