"""DAT end to end on the generated shapes dataset: DINO on DAT++ and Deformable DETR on
DAT (v1) through tools/train.py and tools/test.py; the DAT keys picture; DAT FLOPs."""
import json
import os
import re

import pytest
from helpers import PYTHON, run_tool, shapes_options

DINO_DAT = 'tests/data/configs/dino_dat_shapes_tiny.py'
DDETR_DAT_V1 = 'tests/data/configs/ddetr_dat_v1_shapes_tiny.py'


@pytest.fixture(scope='module')
def trained(shapes_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('dino_dat_e2e')
    options = shapes_options(shapes_root)
    proc = run_tool([PYTHON, 'tools/train.py', DINO_DAT, '--work-dir', str(work_dir),
                     '--cfg-options', *options])
    return work_dir, options, proc


def _last_train_line(proc):
    log = proc.stdout + proc.stderr
    line = re.search(r'Iter\(train\) \[2/2\].*', log)
    assert line, log[-3000:]
    return line[0]


def test_dino_trains_and_tests_on_dat_pp(trained, tmp_path):
    work_dir, options, proc = trained
    line = _last_train_line(proc)
    assert re.search(r'(^|\s)d0.dn_loss_cls: \d+\.\d+', line) and 'nan' not in line
    proc = run_tool([PYTHON, 'tools/test.py', DINO_DAT, str(work_dir / 'iter_2.pth'),
                     '--work-dir', str(tmp_path), '--cfg-options', *options])
    assert re.search(r'Evaluation of .*iter_2.pth: coco/bbox_mAP: \d\.\d{4}', proc.stdout)


def test_deformable_detr_trains_on_dat_v1_with_checkpointing(shapes_root, tmp_path):
    proc = run_tool([PYTHON, 'tools/train.py', DDETR_DAT_V1, '--work-dir', str(tmp_path),
                     '--cfg-options', *shapes_options(shapes_root)])
    line = _last_train_line(proc)
    assert re.search(r'(^|\s)enc_loss_bbox: \d+\.\d+', line) and 'nan' not in line


def test_dat_sampling_points_picture(trained, shapes_root, tmp_path):
    work_dir, _, _ = trained
    img = os.path.join(shapes_root, 'val', '000001.png')
    run_tool([PYTHON, 'tools/analysis_tools/visualize_sampling_points.py', img, DINO_DAT,
              str(work_dir / 'iter_2.pth'), '--dat-stage', '2', '--dat-block', '1',
              '--out-dir', str(tmp_path)])
    with open(tmp_path / 'dat_sampling_points.json') as f:
        dump = json.load(f)
    groups, hk, wk = 2, *dump['key_grid']  # stage 2 of the shapes DAT++: 2 groups, stride 2
    assert [hk, wk] == [-(-s // 2) for s in dump['map_size']]
    assert len(dump['points']) == groups and len(dump['points'][0]) == hk
    assert os.path.getsize(dump['png']) > 0
    proc = run_tool([PYTHON, 'tools/analysis_tools/visualize_sampling_points.py', img, DINO_DAT,
                     str(work_dir / 'iter_2.pth'), '--dat-stage', '2', '--dat-block', '0',
                     '--out-dir', str(tmp_path)], check=False)
    assert proc.returncode != 0 and 'deformable blocks of stage 2 are [1]' in proc.stderr


def test_get_flops_counts_dat_at_the_papers_size():
    proc = run_tool([PYTHON, 'tools/analysis_tools/get_flops.py',
                     'configs/dat/dino_4scale_dat_pp_tiny.py', '--shape', '224', '--backbone-only',
                     '--cfg-options', 'model.backbone.out_indices=(0,1,2,3)'])
    # 14 deformable + 12 neighbourhood blocks, counted analytically
    assert 'analytic, 26 calls' in proc.stdout
    gmacs = float(re.search(r'this backbone at 224 x 224: (\d+\.\d+) GMACs', proc.stdout)[1])
    assert abs(gmacs - 4.3) < 0.05  # the DAT++ paper's 4.3 GMACs for DAT-T++
