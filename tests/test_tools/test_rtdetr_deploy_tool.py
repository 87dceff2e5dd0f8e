"""tools/test.py --deploy on a shapes RT-DETR checkpoint: the fused model's metrics equal
the unfused model's, alone and under tools/dist_test.sh; the log says what was fused; a
model without switch_to_deploy is a one-line error."""
import pickle
import re

import numpy as np
import pytest
from helpers import DIST_ENV, PYTHON, run_tool, shapes_options, tool_error

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
    _assert_fused_log(deployed)
    assert '--deploy' not in plain.stdout + plain.stderr
    # float32: fused scores differ by ~1e-6 (tests/test_models/test_rtdetr_deploy.py),
    # which leaves the 4-decimal COCO metrics as they are
    assert _metrics(deployed) == _metrics(plain)
    # and the detections themselves (1 iteration leaves the metrics near zero)
    _assert_same_detections(tmp_path / 'plain.pkl', tmp_path / 'deploy.pkl')


def test_deploy_under_dist_test(rtdetr_checkpoint, tmp_path):
    """Two gloo processes: each rank fuses its own copy inside MMDistributedDataParallel
    (testing calls the module's test_step, past DDP's parameter list), and the collected
    detections, in dataset order, are the single unfused process's."""
    checkpoint, options = rtdetr_checkpoint
    run_tool([PYTHON, 'tools/test.py', CONFIG, checkpoint, '--work-dir', str(tmp_path / 'one'),
              '--out', str(tmp_path / 'one.pkl'), '--cfg-options', *options])
    dist = run_tool(['bash', 'tools/dist_test.sh', CONFIG, checkpoint, '2', '--deploy',
                     '--work-dir', str(tmp_path / 'dist'), '--out', str(tmp_path / 'dist.pkl'),
                     '--cfg-options', *options], env=DIST_ENV, timeout=300)
    log = dist.stdout + dist.stderr
    assert 'gloo process group, world_size: 2, rank: 1' in log, log[-3000:]
    _assert_fused_log(dist)
    _assert_same_detections(tmp_path / 'one.pkl', tmp_path / 'dist.pkl')


def _assert_fused_log(proc):
    log = proc.stdout + proc.stderr
    # v2-R18: 4 CSPRep layers of 3 RepVGG blocks; BN after every other conv
    assert re.search(r'--deploy: RTDETR fused: 12 RepVGG blocks into one 3x3 conv each, '
                     r'\d+ BatchNorm layers folded into their convs, 0 BatchNorm layers left',
                     log), log[-3000:]


def _assert_same_detections(reference_pkl, pkl):
    dumps = []
    for path in (reference_pkl, pkl):
        with open(path, 'rb') as f:
            dumps.append(pickle.load(f))
    assert len(dumps[0]) == len(dumps[1]) == 8
    for ref, out in zip(*dumps):
        assert out['img_id'] == ref['img_id']
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
