"""The generated dataset: deterministic, valid COCO, with empty images and varied sizes."""
import hashlib
import json
import os

import numpy as np
from pycocotools.coco import COCO

from mmdeform.datasets import SHAPES_CLASSES, ShapesDataset, ShapesSpec, generate_shapes_dataset

SPEC = ShapesSpec(num_train=40, num_val=10)


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(os.path.join(dirpath, name), 'rb') as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path):
    a = generate_shapes_dataset(str(tmp_path / 'a'), SPEC)
    b = generate_shapes_dataset(str(tmp_path / 'b'), SPEC)
    assert _digest(a) == _digest(b)
    # a second call finds the complete dataset and writes nothing
    before = os.path.getmtime(os.path.join(a, 'annotations', 'instances_train.json'))
    generate_shapes_dataset(a, SPEC)
    assert os.path.getmtime(os.path.join(a, 'annotations', 'instances_train.json')) == before


def test_annotations_are_valid_coco(tmp_path):
    root = generate_shapes_dataset(str(tmp_path / 's'), SPEC)
    coco = COCO(os.path.join(root, 'annotations', 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CLASSES)
    sizes, empty, areas = set(), 0, []
    for img in coco.loadImgs(coco.getImgIds()):
        assert os.path.isfile(os.path.join(root, 'train', img['file_name']))
        sizes.add((img['height'], img['width']))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
        empty += not anns
        for ann in anns:
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and x + w <= img['width'] and y + h <= img['height']
            assert w >= 1 and h >= 1 and ann['area'] == w * h
            areas.append(w * h)
    assert empty >= 1  # images without objects are part of the task
    assert len(sizes) > 10  # varied sizes, so batches get padded
    assert min(areas) < 32 ** 2 and max(areas) > 96 ** 2  # small and large objects


def test_dataset_keeps_empty_images_and_generates_on_first_use(tmp_path):
    root = str(tmp_path / 'fresh')
    ds = ShapesDataset(data_root=root, ann_file='annotations/instances_train.json',
                       data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=False),
                       spec=SPEC.__dict__, pipeline=[])
    assert len(ds) == SPEC.num_train
    assert any(len(info['instances']) == 0 for info in (ds.get_data_info(i) for i in range(len(ds))))
    with open(os.path.join(root, '.generated')) as f:
        assert json.load(f)['num_train'] == SPEC.num_train
    assert np.isclose(SPEC.empty_fraction, 0.08)


def test_outdated_copy_is_replaced_and_foreign_dirs_are_refused(tmp_path, capsys):
    import pytest
    root = generate_shapes_dataset(str(tmp_path / 's'), SPEC)
    other = ShapesSpec(num_train=5, num_val=2)
    capsys.readouterr()
    generate_shapes_dataset(root, other)
    assert 'num_train: 40 -> 5, num_val: 10 -> 2' in capsys.readouterr().out
    assert len(os.listdir(os.path.join(root, 'train'))) == 5
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'precious.txt').write_text('keep')
    with pytest.raises(FileExistsError, match='not a generated shapes dataset'):
        generate_shapes_dataset(str(foreign), SPEC)
    assert (foreign / 'precious.txt').read_text() == 'keep'
