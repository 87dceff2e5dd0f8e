"""An iteration-based run resumed from its checkpoint of iteration 2 (``--resume CKPT`` in a
new work dir) ends with the weights of the run that went on uninterrupted, bit for bit.

The kill -9 soak (test_kill_resume.py) covers epoch-based runs in fresh processes, resumed
with ``--resume`` from ``last_checkpoint``; here both runs go through ``tools/train.py``'s
``main`` in this process (the Runner re-seeds every generator when it is built, so nothing
random carries over from the first run).
"""
import shutil

import torch
from helpers import shapes_options, train_in_process
from mmengine.config import Config

from mmdeform.utils.checkpoint import load_checkpoint_file

CONFIG = 'tests/data/configs/detr_shapes_tiny.py'  # 4 iterations, a checkpoint every 2
SMALL = ['train_dataloader.dataset.pipeline.3.scale=(64,64)']  # the Resize: 64 px, not 192


def _train(work_dir, root, resume=None):
    args = [CONFIG, '--work-dir', str(work_dir)] + (['--resume', str(resume)] if resume else [])
    train_in_process([*args, '--cfg-options', *shapes_options(root), *SMALL])


def test_resume_reproduces_the_uninterrupted_run(shapes_root, tmp_path):
    full, split = tmp_path / 'full', tmp_path / 'split'
    _train(full, shapes_root)
    split.mkdir()
    shutil.copy(full / 'iter_2.pth', split / 'start.pth')
    _train(split, shapes_root, resume=split / 'start.pth')
    assert f'Resuming from {split / "start.pth"}' in next(split.rglob('*.log')).read_text()
    dumped = Config.fromfile(str(split / 'detr_shapes_tiny.py'))
    assert dumped.train_dataloader.dataset.pipeline[3].scale == (64, 64)
    assert sorted(p.name for p in split.glob('*.pth')) == ['iter_4.pth', 'start.pth']
    at_2 = load_checkpoint_file(str(split / 'start.pth'))['state_dict']
    want = load_checkpoint_file(str(full / 'iter_4.pth'))['state_dict']
    got = load_checkpoint_file(str(split / 'iter_4.pth'))['state_dict']
    # the resumed run did train: iterations 3 and 4 changed the weights
    assert not torch.equal(at_2['query_embedding.weight'], got['query_embedding.weight'])
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
