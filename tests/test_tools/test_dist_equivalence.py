"""2 gloo processes x batch 2 train like 1 process x batch 4 (tools/dist_train.sh).

Both runs see the same 4 images per iteration (the sampler gives rank r the
indices r, r + 2, ... of the same permutation), the same pixels (every image is
resized to 64 x 64: no padding differs) and normalise the losses by the number
of boxes over all processes; BatchNorm is frozen and there is no dropout. What
remains is the order of floating-point additions (per process, then the
all-reduce). docs/reliability.md derives the tolerance used here:

    |update_2proc - update_1proc| <= T * n * u * max|update_1proc| + 2 u max|w|

per tensor, with T = 3 SGD steps, n = 4096 (the longest reduction: the stem's
gradient over 4 images x 32 x 32 positions) and u = 2^-24.
"""
import torch
from helpers import DIST_ENV, run_tool, shapes_options, train_in_process
from mmengine.config import Config

from mmdeform.registry import MODELS
from mmdeform.utils.checkpoint import load_checkpoint_file

CONFIG = 'tests/data/configs/ddetr_shapes_equivalence.py'
T, N, U = 3, 4 * 32 * 32, 2.0**-24
RTOL = T * N * U  # 7.3e-4


def _weights(work_dir, name):
    return load_checkpoint_file(str(work_dir / name))['state_dict']


def test_two_processes_match_one_with_the_same_total_batch(shapes_root, tmp_path):
    start = _initial_weights(tmp_path / 'init.pth')
    options = ['--cfg-options', *shapes_options(shapes_root), f'load_from={tmp_path}/init.pth']
    one, two = tmp_path / 'one', tmp_path / 'two'
    train_in_process([CONFIG, '--work-dir', one, *options])
    run_tool(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', str(two), *options,
              'train_dataloader.batch_size=2'],
             env=DIST_ENV, timeout=300)
    w1, w2 = _weights(one, 'iter_3.pth'), _weights(two, 'iter_3.pth')
    relative = {}
    for key, w0 in start.items():
        if not w0.is_floating_point():
            continue
        u1, u2 = w1[key] - w0, w2[key] - w0
        bound = RTOL * u1.abs().max() + 2 * U * w0.abs().max()
        diff = (u1 - u2).abs().max()
        assert diff <= bound, (key, diff.item(), bound.item())
        if u1.abs().max() > 0:
            relative[key] = (diff / u1.abs().max()).item()
    worst = sorted(relative.items(), key=lambda kv: -kv[1])[:3]
    print('largest differences of the 3-step update, relative to the tensor\'s largest '
          f'update (tolerance {RTOL:.1e}): ' + ', '.join(f'{k} {v:.1e}' for k, v in worst))
    # and training did move the weights
    assert not torch.equal(w1['bbox_head.cls_branches.0.weight'],
                     start['bbox_head.cls_branches.0.weight'])


def _initial_weights(path):
    """Weights both runs start from (``load_from``), whatever their seeding does."""
    cfg = Config.fromfile(CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    state = model.state_dict()
    torch.save(dict(state_dict=state, meta=dict()), path)
    return state
