"""Test-only hook for the kill -9 soak: reports progress to a file and, when asked, makes a
checkpoint save slow and observable, so that a kill can land in the middle of it.

``SOAK_PROBE=path``: after every training iteration, append ``N`` (the iteration)
to ``path``, then pause for ``SOAK_ITER_PAUSE`` seconds (default 0): the tiny
model trains a whole epoch in a fraction of a second, and the pause gives a
kill drawn "during iteration N + 1" time to land there.
``SOAK_SLOW_SAVE=1``: checkpoint files are written in two halves; after the first
half is on disk, ``saving`` is appended to the probe file and the write pauses
for a minute. The test kills the process meanwhile, leaving a half-written file.
"""
import os
import time

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
    if not str(filepath).endswith('.pth.partial'):
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
        _report(f'{runner.iter + 1}')
        time.sleep(float(os.environ.get('SOAK_ITER_PAUSE', 0)))
