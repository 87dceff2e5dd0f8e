"""An untrusted checkpoint stays inert at every entry point that loads a user's file.

The checkpoint holds real weights plus an object whose unpickling would run
``touch EXPLOITED`` (``os.system``); every entry point must load it without
creating that file. ``--resume`` is trusted by design (the run's own state) and
is not among them.
"""
import os
import pickle

import pytest
import torch
from helpers import load_tool
from mmengine.config import Config

from mmdeform.registry import MODELS
from mmdeform.utils.errors import run_tool_main

DETR = 'tests/data/configs/detr_shapes_tiny.py'


class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture
def evil(tiny_checkpoint, tmp_path):
    """(a Deformable DETR checkpoint carrying the payload, the file the payload would create)"""
    marker = tmp_path / 'EXPLOITED'
    checkpoint = torch.load(tiny_checkpoint[1], weights_only=False)
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=checkpoint['state_dict'], meta=dict(epoch=1),
                    payload=_Exploit(marker)), path)
    return str(path), marker


def test_the_payload_does_run_when_fully_unpickled(evil):
    """The check below can fail: a plain unpickle of the file runs the payload."""
    path, marker = evil
    torch.load(path, weights_only=False, pickle_module=pickle)
    assert marker.exists()


def _run(tool, argv):
    try:
        run_tool_main(load_tool(tool).main, [str(a) for a in argv])
    except SystemExit:  # an entry point may refuse the file: fine, as long as nothing ran
        pass


def test_tools_and_demo_load_it_inertly(evil, tiny_checkpoint, shapes_root, tmp_path):
    path, marker = evil
    config, _, options = tiny_checkpoint
    _run('tools/test.py', [config, path, '--work-dir', tmp_path / 'test', '--cfg-options',
                           *options])
    assert (tmp_path / 'test').is_dir() and not marker.exists()
    _run('tools/train.py', [config, '--work-dir', tmp_path / 'train', '--cfg-options', *options,
                            f'load_from={path}', 'train_cfg.max_iters=1'])
    assert 'Load checkpoint from' in open(next((tmp_path / 'train').rglob('*.log'))).read()
    assert not marker.exists()
    image = os.path.join(shapes_root, 'val', sorted(os.listdir(os.path.join(shapes_root, 'val')))[0])
    _run('demo/image_demo.py', [image, config, path, '--out-dir', tmp_path / 'demo'])
    assert len(os.listdir(tmp_path / 'demo')) == 1 and not marker.exists()


@pytest.mark.parametrize('converter', ['mmdet_to_mmdeform', 'official_detr',
                                       'official_deformable_detr', 'publish_model'])
def test_converters_load_it_inertly(converter, evil, tmp_path):
    path, marker = evil
    _run(f'tools/model_converters/{converter}.py', [path, tmp_path / 'out.pth'])
    assert not marker.exists()


def test_init_cfg_pretrained_loads_it_inertly(evil, tmp_path):
    path, marker = evil
    cfg = Config.fromfile(DETR)
    cfg.model.init_cfg = dict(type='Pretrained', checkpoint=path)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert not marker.exists()
