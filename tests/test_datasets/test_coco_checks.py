"""Broken COCO annotations: each one named, with what was done to it; duplicate image ids refused."""
import json
import logging

import pytest
from mmengine.logging import MMLogger

from mmdeform.registry import DATASETS

CATEGORIES = [dict(id=1, name='rectangle'), dict(id=2, name='ellipse'),
              dict(id=3, name='triangle'), dict(id=4, name='cross')]


def _write(tmp_path, images, annotations):
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(dict(images=images, annotations=annotations,
                                    categories=CATEGORIES)))
    return str(path)


def _build(ann_file):
    return DATASETS.build(dict(type='CocoDataset', ann_file=ann_file, data_prefix=dict(img=''),
                               metainfo=dict(classes=('rectangle', 'ellipse', 'triangle')),
                               filter_cfg=dict(filter_empty_gt=False), pipeline=[]))


def _ann(id, bbox, category=1, image=1, area=None):
    return dict(id=id, image_id=image, category_id=category, bbox=bbox, iscrowd=0,
                area=bbox[2] * bbox[3] if area is None else area)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_each_broken_annotation_is_named_with_what_was_done(tmp_path):
    images = [dict(id=1, file_name='a.png', width=100, height=80),
              dict(id=2, file_name='b.png', width=50, height=50)]
    anns = [_ann(10, [10, 10, 20, 20]),                  # fine
            _ann(11, [90, 70, 30, 20]),                  # partly outside -> clipped
            _ann(12, [-5, 10, 20, 10]),                  # partly outside on the left -> clipped
            _ann(13, [200, 10, 10, 10]),                 # entirely outside -> dropped
            _ann(14, [10, 10, -4, 10]),                  # negative width -> dropped
            _ann(15, [10, 10, 10, 10], category=7),      # unknown category -> dropped
            _ann(16, [10, 10, 10, 10], category=4),      # a class not selected: as in mmdet
            _ann(17, [49.5, 1, 10, 10], image=2),        # clipped to under 1 px -> dropped
            _ann(18, [1, 1, 10, 10], image=2, area=0)]   # zero area -> dropped
    logger, records = MMLogger.get_current_instance(), _Records()
    logger.addHandler(records)
    try:
        dataset = _build(_write(tmp_path, images, anns))
    finally:
        logger.removeHandler(records)
    assert dataset.annotation_problems == [
        'ann.json: annotation id 11 (image a.png, 100x80): bbox [90, 70, 30, 20] (x, y, w, h) '
        'extends outside the image; fixed: clipped to [90, 70, 10, 10]',
        'ann.json: annotation id 12 (image a.png, 100x80): bbox [-5, 10, 20, 10] (x, y, w, h) '
        'extends outside the image; fixed: clipped to [0, 10, 15, 10]',
        'ann.json: annotation id 13 (image a.png, 100x80): bbox [200, 10, 10, 10] (x, y, w, h) '
        'lies entirely outside the image; dropped',
        'ann.json: annotation id 14 (image a.png, 100x80): bbox [10, 10, -4, 10] (x, y, w, h) '
        'has a width or height below 1 px or an area of -40; dropped',
        "ann.json: annotation id 15 (image a.png, 100x80): category_id 7 is not in the file's "
        'categories; dropped',
        'ann.json: annotation id 17 (image b.png, 50x50): bbox [49.5, 1, 10, 10] (x, y, w, h) '
        'extends outside the image and is under 1 px inside it ([49.5, 1, 0.5, 10]); dropped',
        'ann.json: annotation id 18 (image b.png, 50x50): bbox [1, 1, 10, 10] (x, y, w, h) has a '
        'width or height below 1 px or an area of 0; dropped']
    out = '\n'.join(records.lines)
    assert 'annotation id 13 (image a.png, 100x80)' in out
    assert '7 broken annotations: 5 dropped, 2 fixed' in out
    assert '1 annotations of categories outside metainfo.classes are not used' in out
    # what training sees: the clipped boxes (x1, y1, x2, y2), nothing of the dropped ones
    boxes = [inst['bbox'] for inst in dataset.get_data_info(0)['instances']]
    assert boxes == [[10, 10, 30, 30], [90, 70, 100, 80], [0, 10, 15, 20]]
    assert dataset.get_data_info(1)['instances'] == []


def test_duplicate_image_ids_are_refused(tmp_path):
    images = [dict(id=1, file_name='a.png', width=100, height=80),
              dict(id=1, file_name='b.png', width=50, height=50)]
    ann_file = _write(tmp_path, images, [_ann(10, [10, 10, 20, 20])])
    with pytest.raises(ValueError, match=r'ann.json: 1 image ids are used more than once, e.g. '
                                         r'id 1 by a.png, b.png; their annotations cannot be told '
                                         r'apart'):
        _build(ann_file)


def test_duplicate_annotation_ids_keep_mmdets_error(tmp_path):
    images = [dict(id=1, file_name='a.png', width=100, height=80)]
    ann_file = _write(tmp_path, images, [_ann(10, [10, 10, 20, 20]), _ann(10, [1, 1, 5, 5])])
    with pytest.raises(AssertionError, match=r"Annotation ids in '.*ann.json' are not unique"):
        _build(ann_file)
