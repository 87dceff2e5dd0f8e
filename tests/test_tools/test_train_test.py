"""End to end: tools/train.py on the generated dataset, then tools/test.py prints COCO metrics."""
import os
import re

import pytest
from helpers import PYTHON, run_tool, shapes_options

CONFIG = 'configs/shapes/detr_r18_shapes.py'


@pytest.fixture(scope='module')
def trained(shapes_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('e2e')
    options = shapes_options(shapes_root) + [
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1']
    proc = run_tool([PYTHON, 'tools/train.py', CONFIG, '--work-dir', str(work_dir),
                     '--cfg-options', *options], fresh=True)  # as from a shell
    return work_dir, options, proc


def test_train_runs_and_validates(trained):
    work_dir, _, proc = trained
    log = proc.stdout + proc.stderr
    assert re.search(r'Epoch\(train\)\s+\[1\]\[2/2\]', log), log[-3000:]
    assert 'coco/bbox_mAP' in log
    assert (work_dir / 'epoch_1.pth').is_file()
    assert (work_dir / 'last_checkpoint').read_text().strip().endswith('epoch_1.pth')


def test_test_prints_coco_metrics_and_draws(trained, tmp_path):
    work_dir, options, _ = trained
    proc = run_tool([PYTHON, 'tools/test.py', CONFIG, str(work_dir / 'epoch_1.pth'),
                     '--work-dir', str(tmp_path), '--show-dir', str(tmp_path / 'vis'),
                     '--out', str(tmp_path / 'preds.pkl'), '--cfg-options', *options],
                    fresh=True)
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in proc.stdout
    assert re.search(r'Evaluation of .*epoch_1.pth: coco/bbox_mAP: \d\.\d{4}', proc.stdout)
    pngs = [f for f in os.listdir(tmp_path / 'vis') if f.endswith('.png')]
    assert len(pngs) == 8 and all(os.path.getsize(tmp_path / 'vis' / f) > 0 for f in pngs)
    assert (tmp_path / 'preds.pkl').stat().st_size > 0
