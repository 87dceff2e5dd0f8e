"""Bad input gives a clear error, and degenerate targets train without NaN."""
import pytest
import torch
from helpers import PYTHON, disable_dropout, make_batch, preprocess, run_tool
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.registry import MODELS
from mmdeform.utils import check_dataset_paths


def _coco_cfg(data_root):
    cfg = Config.fromfile('configs/detr.py')
    cfg.train_dataloader.dataset.data_root = data_root
    return cfg


def test_missing_data_root_is_named(tmp_path):
    missing = str(tmp_path / 'no_such_coco') + '/'
    with pytest.raises(FileNotFoundError, match='no_such_coco'):
        check_dataset_paths(_coco_cfg(missing), splits=('train_dataloader', ))


def test_missing_annotation_file_is_named(tmp_path):
    cfg = _coco_cfg(str(tmp_path) + '/')
    with pytest.raises(FileNotFoundError,
                       match='annotations/instances_train2017.json'):
        check_dataset_paths(cfg, splits=('train_dataloader', ))


def test_train_tool_reports_the_missing_path(tmp_path):
    proc = run_tool([PYTHON, 'tools/train.py', 'configs/detr.py', '--work-dir', str(tmp_path),
                     '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path}/nowhere/'],
                    check=False, timeout=300)
    assert proc.returncode != 0
    assert f'{tmp_path}/nowhere/' in proc.stderr and 'FileNotFoundError' in proc.stderr


def test_unknown_type_names_the_type_and_the_scope():
    cfg = Config.fromfile('configs/detr.py')
    cfg.model.bbox_head.type = 'NoSuchHead'
    with pytest.raises(KeyError, match=r'NoSuchHead is not in the mmdeform::model registry'):
        MODELS.build(cfg.model)


def _tiny_detr():
    cfg = Config.fromfile('configs/shapes/detr_r18_shapes.py')
    torch.manual_seed(0)
    model = build_ours(cfg)
    model.init_weights()
    return disable_dropout(model).train()


def _loss_and_grads(model, images, samples):
    inputs, samples = preprocess(model, images, samples, training=True)
    losses = model(inputs, samples, mode='loss')
    total = sum(losses.values())
    model.zero_grad()
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return losses, grads


def test_images_without_boxes_train():
    model = _tiny_detr()
    images, samples = make_batch(boxes_per_image=[0, 0], num_classes=4)
    losses, grads = _loss_and_grads(model, images, samples)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses['loss_bbox'].item() == 0 and losses['loss_iou'].item() == 0
    assert losses['loss_cls'].item() > 0  # every query is pushed to "no object"
    assert all(torch.isfinite(g).all() for g in grads)
    # a batch mixing an empty image with a non-empty one
    images, samples = make_batch(boxes_per_image=[0, 3], num_classes=4)
    losses, grads = _loss_and_grads(model, images, samples)
    assert losses['loss_bbox'].item() > 0
    assert all(torch.isfinite(g).all() for g in grads)


def test_zero_area_boxes_give_no_nan():
    model = _tiny_detr()
    images, samples = make_batch(boxes_per_image=[3, 2], num_classes=4)
    boxes = samples[0].gt_instances.bboxes
    boxes[0, 2] = boxes[0, 0]  # zero width
    boxes[1, 2:] = boxes[1, :2]  # a point
    losses, grads = _loss_and_grads(model, images, samples)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(g).all() for g in grads)
