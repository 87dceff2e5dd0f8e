"""tools/dist_train.sh with 2 CPU processes (gloo)."""
import re

from helpers import DIST_ENV, run_tool, shapes_options


def test_dist_train_two_cpu_processes(shapes_root, tmp_path):
    proc = run_tool(['bash', 'tools/dist_train.sh', 'tests/data/configs/detr_shapes_tiny.py', '2',
                     '--work-dir', str(tmp_path), '--cfg-options', *shapes_options(shapes_root),
                     'train_cfg.max_iters=2'],
                    env=DIST_ENV, timeout=300)
    log = proc.stdout + proc.stderr
    assert 'gloo process group, world_size: 2, rank: 1' in log, log[-3000:]
    assert 'Distributed training: True' in log
    assert re.search(r'Iter\(train\)\s+\[2/2\]', log), log[-3000:]
    assert (tmp_path / 'iter_2.pth').is_file()
