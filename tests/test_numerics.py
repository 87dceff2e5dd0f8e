"""Numerics under bad luck: non-finite losses stop training with a clear message and an
intact last checkpoint; more boxes than queries train; images below the coarsest stride."""
import itertools
import os
import re

import pytest
import soak_probe  # noqa: F401  registers BreakAtIteration
import torch
from helpers import (DIST_ENV, ROOT, disable_dropout, load_tool, make_batch, one_thread,
                     preprocess, run_tool, shapes_options)
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.engine import NonFiniteLossError, Runner
from mmdeform.models.task_modules import HungarianAssigner
from mmdeform.utils.checkpoint import load_checkpoint_file

SOAK = 'tests/data/configs/detr_shapes_soak.py'  # 4 iterations per epoch
COSTS = [dict(type='ClassificationCost', weight=1.0), dict(type='BBoxL1Cost', weight=5.0),
         dict(type='IoUCost', weight=2.0)]


def _train_with_fault(shapes_root, work_dir, how):
    train = load_tool('tools/train.py')
    # a checkpoint after every iteration: the one of the faulted step must not be written
    args = train.parse_args([SOAK, '--work-dir', str(work_dir), '--cfg-options',
                             *shapes_options(shapes_root), 'train_dataloader.num_workers=0',
                             'default_hooks.checkpoint.by_epoch=False'])
    cfg = train.build_config(args)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='BreakAtIteration', at=6, how=how)]
    with one_thread(), pytest.raises(NonFiniteLossError) as info:
        Runner.from_cfg(cfg).train()
    return str(info.value)


def _last_good_checkpoint(work_dir, iteration):
    """The checkpoint of the faulted ``iteration`` is absent; that of the one before is the
    last one, complete, with finite weights."""
    assert not any(f'iter_{iteration}.pth' in name for name in os.listdir(work_dir)), \
        os.listdir(work_dir)
    last = work_dir / f'iter_{iteration - 1}.pth'
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(last)
    checkpoint = load_checkpoint_file(str(last))
    assert checkpoint['meta']['iter'] == iteration - 1
    state = checkpoint['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize('how', ['loss', 'weights'])
def test_non_finite_loss_stops_with_iteration_terms_and_images(how, shapes_root, tmp_path):
    message = _train_with_fault(shapes_root, tmp_path, how)
    what = (r'loss terms ([\w.]+=inf, )*loss_bbox=inf' if how == 'loss'
            else r'the predictions')
    images = ', '.join([r'\S+/train/\d+\.png'] * 4)
    assert re.match(rf'non-finite loss at iteration 6 \(epoch 2\), rank 0: {what} not finite; '
                    rf'batch images: {images}\. Training stopped before a checkpoint of this '
                    r'step was written', message), message
    _last_good_checkpoint(tmp_path, 6)


def test_non_finite_loss_on_one_rank_stops_every_rank(shapes_root, tmp_path):
    """2 gloo processes (tools/dist_train.sh), the loss of rank 1 infinite from iteration 2 on:
    both ranks stop there with their own line (rank 0 would otherwise wait in the next
    all-reduce), and no checkpoint of iteration 2 is written."""
    config = tmp_path / 'fault.py'
    config.write_text(f"_base_ = '{ROOT}/{SOAK}'\n"
                      "custom_hooks = [dict(type='RNGStateHook'),\n"
                      "                dict(type='BreakAtIteration', at=2, how='loss', rank=1)]\n")
    work_dir = tmp_path / 'work'
    proc = run_tool(['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir),
                     '--cfg-options', *shapes_options(shapes_root), 'train_dataloader.batch_size=2',
                     'train_dataloader.num_workers=0', 'default_hooks.checkpoint.by_epoch=False'],
                    env=dict(DIST_ENV, PYTHONPATH=f'{ROOT}:{ROOT}/tests'), check=False,
                    timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 2, proc.stderr[-4000:]
    rank_0 = ('error: NonFiniteLossError: non-finite loss at iteration 2 on another rank; this '
              'rank (0) stops too')
    assert rank_0 in errors, errors
    assert re.match(r'error: NonFiniteLossError: non-finite loss at iteration 2 \(epoch 1\), '
                    r'rank 1: loss terms ([\w.]+=inf, )*loss_bbox=inf not finite; batch images: '
                    r'\S+/train/\d+\.png, \S+/train/\d+\.png\. Training stopped',
                    errors[1 - errors.index(rank_0)]), errors
    _last_good_checkpoint(work_dir, 2)


def _brute_force_min(cost):
    """The least total cost of matching every query to a distinct target (queries < targets)."""
    q, g = cost.shape
    return min(sum(cost[i, p[i]] for i in range(q)).item()
               for p in itertools.permutations(range(g), q))


def test_more_boxes_than_queries_matches_each_query_once():
    """3 queries, 6 boxes: 3 pairs, the cheapest of all 120 injective assignments."""
    g = torch.Generator().manual_seed(0)
    assigner = HungarianAssigner(COSTS)
    logits = torch.randn(1, 1, 3, 5, generator=g)
    boxes = torch.rand(1, 1, 3, 4, generator=g) * 0.5 + 0.1
    labels = [torch.randint(0, 4, (6, ), generator=g)]
    gts = [torch.rand(6, 4, generator=g) * 0.5 + 0.1]
    match = assigner.assign(logits, boxes, labels, gts)[0][0]
    assert sorted(match.query_inds.tolist()) == [0, 1, 2]
    assert len(set(match.gt_inds.tolist())) == 3
    cost = sum(c(logits[0, 0], boxes[0, 0], labels[0], gts[0]) for c in assigner.match_costs)
    total = cost[match.query_inds, match.gt_inds].sum().item()
    assert total == pytest.approx(_brute_force_min(cost), abs=1e-5)


def _model(config, **model_options):
    cfg = Config.fromfile(config)
    cfg.model.update(model_options)
    torch.manual_seed(0)
    model = build_ours(cfg)
    model.init_weights()
    return disable_dropout(model).train()


def _loss_and_grads(model, images, samples):
    inputs, samples = preprocess(model, images, samples, training=True)
    losses = model(inputs, samples, mode='loss')
    model.zero_grad()
    sum(losses.values()).backward()
    return losses, [p.grad for p in model.parameters() if p.grad is not None]


def test_150_boxes_with_100_queries_train():
    model = _model('configs/shapes/detr_r18_shapes.py', num_queries=100)
    images, samples = make_batch(sizes=((96, 128), ), boxes_per_image=[150], num_classes=4)
    losses, grads = _loss_and_grads(model, images, samples)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(g).all() for g in grads)
    assert losses['loss_bbox'] > 0


@pytest.mark.parametrize('config,options', [
    ('configs/shapes/detr_r18_shapes.py', {}),
    ('configs/shapes/deformable_detr_refine_two_stage_shapes.py', dict(as_two_stage=False)),
])
def test_images_below_the_coarsest_stride_train(config, options):
    """1x1 and 8x8 pixels (strides up to 16 / 64): every level is one cell; finite losses."""
    model = _model(config, **options)
    for sizes in (((1, 1), (1, 1)), ((8, 8), (5, 7))):
        images, samples = make_batch(sizes=sizes, boxes_per_image=[1, 1], num_classes=4)
        for sample in samples:
            sample.gt_instances.bboxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        losses, grads = _loss_and_grads(model, images, samples)
        assert all(torch.isfinite(v) for v in losses.values()), (sizes, losses)
        assert all(torch.isfinite(g).all() for g in grads)


def test_two_stage_on_an_image_with_fewer_cells_than_queries_is_a_clear_error():
    model = _model('configs/shapes/deformable_detr_refine_two_stage_shapes.py')
    images, samples = make_batch(sizes=((8, 8), (5, 7)), boxes_per_image=[1, 1], num_classes=4)
    with pytest.raises(ValueError, match=r'two-stage DeformableDETR selects num_queries=50 '
                       r'proposals, but the image gives only 3 feature cells over all levels'):
        _loss_and_grads(model, images, samples)
