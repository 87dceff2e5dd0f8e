"""tools/test.py --deploy on a shapes RT-DETR checkpoint: the fused model's metrics equal
the unfused model's, the log says what was fused; a model without switch_to_deploy is
a one-line error."""
import pickle
import re

import numpy as np
import pytest
from helpers import PYTHON, run_tool, shapes_options, tool_error

CONFIG = 'tests/data/configs/rtdetr_shapes_tiny.py'


@pytest.fixture(scope='module')
def rtdetr_checkpoint(shapes_root, tmp_path_factory):
    """One iteration of tools/train.py (the 16 training images in one batch, one epoch)."""
    work_dir = tmp_path_factory.mktemp('rtdetr_deploy')
    options = shapes_options(shapes_root)
    run_tool([PYTHON, 'tools/train.py', CONFIG, '--work-dir', str(work_dir), '--cfg-options',
              *options, 'train_dataloader.batch_size=16', 'train_cfg.max_epochs=1',
              'default_hooks.checkpoint.interval=1'])
    return str(work_dir / 'epoch_1.pth'), options


def _metrics(proc):
    line = re.search(r'Evaluation of .*?: (coco/bbox_mAP: .*)', proc.stdout)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return line.group(1)


def test_deploy_gives_the_same_metrics(rtdetr_checkpoint, tmp_path):
    checkpoint, options = rtdetr_checkpoint
    runs = {}
    for name, flags in (('plain', []), ('deploy', ['--deploy'])):
        runs[name] = run_tool([PYTHON, 'tools/test.py', CONFIG, checkpoint, *flags,
                               '--work-dir', str(tmp_path / name),
                               '--out', str(tmp_path / f'{name}.pkl'), '--cfg-options', *options])
    plain, deployed = runs['plain'], runs['deploy']
    log = deployed.stdout + deployed.stderr
    # v2-R18: 4 CSPRep layers of 3 RepVGG blocks; BN after every other conv
    assert re.search(r'--deploy: RTDETR fused: 12 RepVGG blocks into one 3x3 conv each, '
                     r'\d+ BatchNorm layers folded into their convs, 0 BatchNorm layers left',
                     log), log[-3000:]
    assert '--deploy' not in plain.stdout + plain.stderr
    # float32: fused scores differ by ~1e-6 (tests/test_models/test_rtdetr_deploy.py),
    # which leaves the 4-decimal COCO metrics as they are
    assert _metrics(deployed) == _metrics(plain)
    # and the detections themselves (1 iteration leaves the metrics near zero)
    dumps = {}
    for name in runs:
        with open(tmp_path / f'{name}.pkl', 'rb') as f:
            dumps[name] = pickle.load(f)
    assert len(dumps['plain']) == len(dumps['deploy']) == 8
    for ref, out in zip(dumps['plain'], dumps['deploy']):
        ref, out = ref['pred_instances'], out['pred_instances']
        np.testing.assert_array_equal(out['labels'].numpy(), ref['labels'].numpy())
        np.testing.assert_allclose(out['scores'].numpy(), ref['scores'].numpy(), rtol=0,
                                   atol=1e-4)
        np.testing.assert_allclose(out['bboxes'].numpy(), ref['bboxes'].numpy(), rtol=0,
                                   atol=1e-3)


def test_deploy_without_switch_to_deploy_names_the_model(rtdetr_checkpoint, capsys):
    checkpoint, options = rtdetr_checkpoint
    # the check runs before the checkpoint is read (before_run), so any file does
    line = tool_error('tools/test.py', ['tests/data/configs/dino_shapes_tiny.py', checkpoint,
                                        '--deploy', '--cfg-options', *options], capsys)
    assert line.endswith('--deploy: DINO has no switch_to_deploy() (RTDETR has one); run '
                         'without --deploy'), line


def test_pytorch2onnx_exports_the_checkpoint_fused(rtdetr_checkpoint, tmp_path):
    import onnx
    checkpoint, _ = rtdetr_checkpoint
    out = tmp_path / 'rtdetr.onnx'
    # a new interpreter: torch.export logs through handlers a forked test process closed
    proc = run_tool([PYTHON, 'tools/deployment/pytorch2onnx.py', CONFIG, checkpoint, '--out',
                     str(out), '--dynamic'], fresh=True)
    assert re.search(r'Exported RTDETR to .* fused first \(12 RepVGG blocks, \d+ BatchNorm '
                     r'layers folded\)', proc.stdout), proc.stdout
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert 'BatchNormalization' not in ops and 'GridSample' in ops
