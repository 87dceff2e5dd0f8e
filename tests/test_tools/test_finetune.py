"""docs/finetune.md: fine-tune DINO on your own COCO-format dataset (its own class
names and category ids) from a checkpoint with another class count."""
import json
import re

import numpy as np
import torch
from helpers import PYTHON, ROOT, run_tool
from mmdet_reference import build_ours
from mmengine.config import Config
from PIL import Image

from mmdeform.utils.checkpoint import load_checkpoint_file

CLASSES = ('leaf', 'stone')
CATEGORY_IDS = (7, 12)  # not 1..N: the dataset maps names to its own ids


def write_coco(root, split, num_images, rng):
    """Images with a green 'leaf' and/or a grey 'stone' rectangle, and their COCO json."""
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(num_images):
        h, w = 96, 128
        pixels = np.full((h, w, 3), 230, np.uint8)
        for k, (color, cat) in enumerate(zip(((40, 160, 40), (120, 120, 120)), CATEGORY_IDS)):
            if i % 3 == 2 and k == 1:
                continue
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 30))
            bw, bh = int(rng.integers(16, 40)), int(rng.integers(12, 30))
            pixels[y:y + bh, x:x + bw] = color
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=cat,
                                    bbox=[x, y, bw, bh], area=bw * bh, iscrowd=0))
        name = f'{i:04d}.png'
        Image.fromarray(pixels).save(root / split / name)
        images.append(dict(id=i + 1, file_name=name, height=h, width=w))
    categories = [dict(id=c, name=n) for c, n in zip(CATEGORY_IDS, CLASSES)]
    (root / 'annotations').mkdir(exist_ok=True)
    with open(root / 'annotations' / f'{split}.json', 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


FINETUNE_CONFIG = '''
_base_ = '{root}/configs/shapes/dino_shapes.py'
data_root = '{data}/'
metainfo = dict(classes={classes})
model = dict(bbox_head=dict(num_classes=2))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/train.json', data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=False),
                 pipeline={{{{_base_.train_pipeline}}}}))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/val.json', data_prefix=dict(img='val/'), test_mode=True,
                 pipeline={{{{_base_.test_pipeline}}}}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator
load_from = '{checkpoint}'
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=2)
param_scheduler = []
optim_wrapper = dict(optimizer=dict(lr=0.0))  # so the test can compare the loaded weights
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, by_epoch=False))
log_processor = dict(by_epoch=False)
'''


def test_finetune_own_classes_from_a_checkpoint_with_another_class_count(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / 'my_dataset'
    write_coco(data, 'train', 4, rng)
    write_coco(data, 'val', 2, rng)
    # the source model: the shapes DINO, 4 classes
    source_cfg = Config.fromfile(f'{ROOT}/configs/shapes/dino_shapes.py')
    torch.manual_seed(0)
    source = build_ours(source_cfg)
    source.init_weights()
    torch.save(dict(state_dict=source.state_dict(), meta=dict()), tmp_path / 'source.pth')
    config = tmp_path / 'finetune.py'
    config.write_text(FINETUNE_CONFIG.format(root=ROOT, data=data, classes=CLASSES,
                                             checkpoint=tmp_path / 'source.pth'))
    proc = run_tool([PYTHON, 'tools/train.py', str(config), '--work-dir', str(tmp_path / 'work')])
    log = proc.stdout + proc.stderr
    # the log lists what is re-initialised: every class branch and the label embedding
    assert 'does not fit the model of this config' in log
    assert re.search(r'shape of bbox_head\.cls_branches\.0\.weight: checkpoint \(4, 64\), '
                     r'model \(2, 64\)', log)
    assert re.search(r'shape of dn_query_generator\.label_embedding\.weight: checkpoint '
                     r'\(5, 64\), model \(3, 64\)', log)
    assert "those of another shape are not loaded: they keep the model's initialisation" in log
    assert 'coco/bbox_mAP' in log
    checkpoint = load_checkpoint_file(str(tmp_path / 'work' / 'iter_2.pth'))
    assert tuple(checkpoint['meta']['dataset_meta']['classes']) == CLASSES
    tuned = checkpoint['state_dict']
    assert tuned['bbox_head.cls_branches.3.weight'].shape == (2, 64)
    assert tuned['dn_query_generator.label_embedding.weight'].shape == (3, 64)
    # everything else came from the checkpoint (lr 0: the weights did not move)
    src = source.state_dict()
    same = [k for k in src if src[k].shape == tuned[k].shape]
    assert len(same) == len(src) - 2 * 4 - 1  # 4 class branches x (weight, bias) + label rows
    for key in same:
        if not key.endswith(('running_mean', 'running_var', 'num_batches_tracked')):
            assert torch.equal(src[key], tuned[key]), key  # BN statistics do move
