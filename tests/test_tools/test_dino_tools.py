"""DINO end to end on the generated shapes dataset: tools/train.py, tools/test.py, and
the sampling-point and gradient-norm tools on the trained checkpoint."""
import json
import os
import re

import pytest
from helpers import PYTHON, run_tool, shapes_options

CONFIG = 'tests/data/configs/dino_shapes_tiny.py'


@pytest.fixture(scope='module')
def trained(shapes_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('dino_e2e')
    options = shapes_options(shapes_root)
    proc = run_tool([PYTHON, 'tools/train.py', CONFIG, '--work-dir', str(work_dir),
                     '--cfg-options', *options])
    return work_dir, options, proc


def test_train_logs_every_dino_loss(trained):
    work_dir, _, proc = trained
    log = proc.stdout + proc.stderr
    line = re.search(r'Iter\(train\) \[2/2\].*', log)
    assert line, log[-3000:]
    # 3 decoder layers, 3 denoising layers and the encoder proposals
    for key in ('d1.loss_cls', 'loss_iou', 'enc_loss_bbox', 'd0.dn_loss_cls', 'dn_loss_iou'):
        assert re.search(rf'(^|\s){re.escape(key)}: \d+\.\d+', line[0]), key
    assert 'nan' not in line[0]
    assert (work_dir / 'iter_2.pth').is_file()


def test_test_prints_coco_metrics(trained, tmp_path):
    work_dir, options, _ = trained
    proc = run_tool([PYTHON, 'tools/test.py', CONFIG, str(work_dir / 'iter_2.pth'),
                     '--work-dir', str(tmp_path), '--cfg-options', *options])
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in proc.stdout
    assert re.search(r'Evaluation of .*iter_2.pth: coco/bbox_mAP: \d\.\d{4}', proc.stdout)


def test_sampling_points_and_gradient_norms_on_a_dino_checkpoint(trained, shapes_root, tmp_path):
    work_dir, _, _ = trained
    img = os.path.join(shapes_root, 'val', '000001.png')
    ckpt = str(work_dir / 'iter_2.pth')
    run_tool([PYTHON, 'tools/analysis_tools/visualize_sampling_points.py', img, CONFIG, ckpt,
              '--topk', '2', '--pixel', '40', '30', '--out-dir', str(tmp_path / 'points')])
    with open(tmp_path / 'points' / 'sampling_points.json') as f:
        dump = json.load(f)
    assert len(dump['objects']) == 2
    for entry in dump['objects']:
        points = entry['points']
        assert len(points) == 8 and len(points[0]) == 3 and len(points[0][0]) == 4  # heads, levels, points
        assert os.path.getsize(entry['png']) > 0
    run_tool([PYTHON, 'tools/analysis_tools/gradient_norm_map.py', img, CONFIG, ckpt,
              '--topk', '2', '--out-dir', str(tmp_path / 'grad')])
    assert sorted(os.listdir(tmp_path / 'grad')) == ['000001_obj0.png', '000001_obj1.png']
