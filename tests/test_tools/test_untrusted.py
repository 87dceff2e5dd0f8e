"""An untrusted checkpoint stays inert at every entry point that loads a user's file.

The checkpoint holds real weights plus an object whose unpickling would run
``touch EXPLOITED`` (``os.system``); every entry point must load it without
creating that file. ``--resume`` is trusted by design (the run's own state) and
is not among them.
"""
import glob
import os
import pickle

import pytest
import torch
from helpers import load_tool, one_thread, tool_error
from mmengine.config import Config

from mmdeform.engine import Runner
from mmdeform.engine.runner import unwrap
from mmdeform.registry import MODELS
from mmdeform.utils.checkpoint import load_checkpoint_file
from mmdeform.utils.errors import run_tool_main

# What the converters of other formats say about it: they have read it to say so.
READS = {'mmdet_to_mmdeform': 'mmdet 3.x format', 'official_detr': 'official '
         'facebookresearch/detr format', 'official_deformable_detr': 'official fundamentalvision '
         'format', 'official_rtdetr': 'official lyuwenyu/RT-DETR format'}


class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture
def evil(tiny_checkpoint, tmp_path):
    """(a Deformable DETR checkpoint carrying the payload, the file the payload would create,
    its weights)"""
    marker = tmp_path / 'EXPLOITED'
    state = torch.load(tiny_checkpoint[1], weights_only=False)['state_dict']
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=state, meta=dict(epoch=1), payload=_Exploit(marker)), path)
    return str(path), marker, state


@pytest.fixture
def loaded(monkeypatch):
    """The weights of each model that a tool loads a checkpoint into, as they are right
    after the load (the Runner's ``load_or_resume``; the demo's ``init_detector``)."""
    import mmdet.apis
    weights = []

    def record(model):
        weights.append({k: v.detach().clone() for k, v in unwrap(model).state_dict().items()})

    def load_or_resume(self):
        load_or_resume.original(self)
        record(self.model)

    def init_detector(*args, **kwargs):
        model = init_detector.original(*args, **kwargs)
        record(model)
        return model

    load_or_resume.original = Runner.load_or_resume
    init_detector.original = mmdet.apis.init_detector
    monkeypatch.setattr(Runner, 'load_or_resume', load_or_resume)
    monkeypatch.setattr(mmdet.apis, 'init_detector', init_detector)
    return weights


def _assert_same_weights(model_state, state):
    assert model_state.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(model_state[key], value), key


def test_the_payload_does_run_when_fully_unpickled(evil):
    """The check below can fail: a plain unpickle of the file runs the payload."""
    path, marker, _ = evil
    torch.load(path, weights_only=False, pickle_module=pickle)
    assert marker.exists()


def _run(tool, argv, capsys):
    """Run ``tool`` as the command line does; it must succeed. Returns its stdout."""
    capsys.readouterr()
    try:
        with one_thread():
            run_tool_main(load_tool(tool).main, [str(a) for a in argv])
    except SystemExit as e:
        pytest.fail(f'{tool} exited with {e.code}: {capsys.readouterr().err[-2000:]}')
    return capsys.readouterr().out


def test_tools_and_demo_load_it_inertly(evil, loaded, tiny_checkpoint, shapes_root, tmp_path,
                                        capsys):
    path, marker, state = evil
    config, _, options = tiny_checkpoint
    out = _run('tools/test.py', [config, path, '--work-dir', tmp_path / 'test', '--cfg-options',
                                 *options], capsys)
    assert f'Evaluation of {path}: coco/bbox_mAP: ' in out, out[-2000:]
    _assert_same_weights(loaded.pop(), state)
    assert not marker.exists()
    _run('tools/train.py', [config, '--work-dir', tmp_path / 'train', '--cfg-options', *options,
                            f'load_from={path}', 'train_cfg.max_iters=1'], capsys)
    assert f'Load checkpoint from {path}' in open(next((tmp_path / 'train').rglob('*.log'))).read()
    assert (tmp_path / 'train' / 'iter_1.pth').is_file()
    _assert_same_weights(loaded.pop(), state)
    assert not marker.exists()
    val = os.path.join(shapes_root, 'val')
    image = os.path.join(val, sorted(os.listdir(val))[0])
    out = _run('demo/image_demo.py', [image, config, path, '--out-dir', tmp_path / 'demo'], capsys)
    assert f'Wrote 1 image(s) with predictions (score >= 0.3) to {tmp_path / "demo"}' in out, out
    assert os.listdir(tmp_path / 'demo') == [os.path.basename(image)]
    _assert_same_weights(loaded.pop(), state)
    assert not marker.exists() and not loaded


@pytest.mark.parametrize('converter', sorted(READS))
def test_converters_read_it_inertly(converter, evil, tmp_path, capsys):
    """The converters of other formats read the file, tell its family and refuse it."""
    path, marker, _ = evil
    line = tool_error(f'tools/model_converters/{converter}.py', [path, tmp_path / 'out.pth'],
                      capsys)
    assert line == (f'error: CheckpointFamilyError: {path} looks like Deformable DETR '
                    f'(two-stage) weights; this converter reads {READS[converter]} checkpoints')
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


def test_publish_model_reads_it_inertly(evil, tmp_path, capsys):
    path, marker, state = evil
    out = _run('tools/model_converters/publish_model.py', [path, tmp_path / 'out.pth'], capsys)
    published = glob.glob(str(tmp_path / 'out-*.pth'))
    assert len(published) == 1 and f'{path} -> {published[0]}' in out, (published, out)
    assert 'dropped: payload' in out
    _assert_same_weights(load_checkpoint_file(published[0])['state_dict'], state)
    assert not marker.exists()


def test_init_cfg_pretrained_loads_it_inertly(evil, tiny_checkpoint):
    """The usual form, a backbone initialised from the ``backbone.`` weights of a file.
    (At the detector's level, DeformableDETR's ``init_weights`` re-initialises the encoder,
    the decoder and ``level_embed`` after the load, as mmdet's does.)"""
    path, marker, state = evil
    cfg = Config.fromfile(tiny_checkpoint[0])
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path, prefix='backbone.')
    model = MODELS.build(cfg.model)
    model.init_weights()
    _assert_same_weights(model.backbone.state_dict(),
                         {k[len('backbone.'):]: v for k, v in state.items()
                          if k.startswith('backbone.')})
    assert not marker.exists()
