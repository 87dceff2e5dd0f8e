"""The checkpoint trust policy: full unpickling only for resume, inert stand-ins otherwise."""
import argparse
import os

import numpy as np
import torch
from mmengine.logging import MessageHub

from mmdeform.utils.checkpoint import (OpaqueObject, load_checkpoint_file, opaque_objects,
                                       trusted_checkpoints)


class _Exploit:
    """Unpickling this runs os.system: the restricted loader must not."""

    def __reduce__(self):
        return (os.system, ('touch EXPLOITED',))


def _runner_like_checkpoint():
    hub = MessageHub.get_instance('test_checkpoint')
    hub.update_scalar('train/loss', 1.25)
    return dict(meta=dict(seed=np.int64(7), epoch=3, arr=np.arange(4.0)),
                state_dict={'w': torch.arange(6.0).view(2, 3)},
                message_hub=hub.state_dict(),
                args=argparse.Namespace(lr=2e-4, two_stage=True))


def test_untrusted_load_keeps_tensors_numpy_and_namespace(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save(_runner_like_checkpoint(), path)
    ckpt = load_checkpoint_file(str(path))
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(6.0).view(2, 3))
    assert ckpt['meta']['seed'] == 7 and isinstance(ckpt['meta']['seed'], np.integer)
    np.testing.assert_array_equal(ckpt['meta']['arr'], np.arange(4.0))
    assert ckpt['args'].lr == 2e-4 and ckpt['args'].two_stage is True
    # the HistoryBuffer of the message hub is not rebuilt
    opaque = opaque_objects(ckpt)
    assert opaque == {'message_hub.log_scalars.train/loss':
                      'mmengine.logging.history_buffer.HistoryBuffer'}


def test_untrusted_load_executes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({'state_dict': {}, 'payload': _Exploit()}, tmp_path / 'evil.pth')
    ckpt = load_checkpoint_file(str(tmp_path / 'evil.pth'))
    assert not (tmp_path / 'EXPLOITED').exists()
    assert isinstance(ckpt['payload'], OpaqueObject)


def test_trusted_context_unpickles_in_full(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save(_runner_like_checkpoint(), path)
    with trusted_checkpoints():
        ckpt = load_checkpoint_file(str(path))
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert type(buffer).__name__ == 'HistoryBuffer' and buffer.current() == 1.25
    # outside the context the default is untrusted again
    assert isinstance(load_checkpoint_file(str(path))['message_hub']['log_scalars']['train/loss'],
                      OpaqueObject)


class _DictConfig(dict):
    """Like yacs' CfgNode (in the official DAT checkpoints): a dict subclass with attributes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__['immutable'] = True


def test_untrusted_load_replaces_dict_subclasses(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'config': _DictConfig(MODEL={'TYPE': 'dat'})}, path)
    ckpt = load_checkpoint_file(str(path))
    assert torch.equal(ckpt['model']['w'], torch.ones(2))
    assert isinstance(ckpt['config'], OpaqueObject)
    assert ckpt['config'].items == [('MODEL', {'TYPE': 'dat'})]
