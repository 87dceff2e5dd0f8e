"""A run stopped after 2 iterations and resumed ends with the weights of an uninterrupted run."""
import torch
from helpers import PYTHON, run_tool, shapes_options

from mmdeform.utils.checkpoint import load_checkpoint_file

CONFIG = 'tests/data/configs/detr_shapes_tiny.py'


def _train(work_dir, root, max_iters, resume=False):
    args = [PYTHON, 'tools/train.py', CONFIG, '--work-dir', str(work_dir)]
    if resume:
        args.append('--resume')
    args += ['--cfg-options', *shapes_options(root), f'train_cfg.max_iters={max_iters}']
    return run_tool(args)


def test_resume_reproduces_the_uninterrupted_run(shapes_root, tmp_path):
    _train(tmp_path / 'full', shapes_root, 4)
    _train(tmp_path / 'split', shapes_root, 2)
    proc = _train(tmp_path / 'split', shapes_root, 4, resume=True)
    assert 'Resuming from' in proc.stdout + proc.stderr
    full = load_checkpoint_file(str(tmp_path / 'full' / 'iter_4.pth'))['state_dict']
    split = load_checkpoint_file(str(tmp_path / 'split' / 'iter_4.pth'))['state_dict']
    assert full.keys() == split.keys()
    # and the weights did change over the last two iterations
    at_2 = load_checkpoint_file(str(tmp_path / 'split' / 'iter_2.pth'))['state_dict']
    assert not torch.equal(at_2['query_embedding.weight'], split['query_embedding.weight'])
    for key in full:
        torch.testing.assert_close(split[key], full[key], rtol=0, atol=0, msg=key)
