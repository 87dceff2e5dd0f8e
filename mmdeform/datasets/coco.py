"""mmdet's CocoDataset with every questionable annotation reported, not silently skipped."""
import logging
import os.path as osp
from collections import Counter
from typing import List, Optional, Union

from mmdet.datasets import CocoDataset as MMDetCocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmengine.logging import print_log

from mmdeform.registry import DATASETS
from mmdeform.utils.errors import AnnotationError

MAX_LOGGED = 10  # problems logged one per line; the rest are counted in the summary


class CheckedCOCO(COCO):
    """mmdet's COCO API, refusing duplicate image ids: pycocotools keeps the last
    image of an id and gives it the annotations of all of them."""

    def createIndex(self):
        images = self.dataset.get('images', [])
        counts = Counter(img['id'] for img in images)
        duplicates = [i for i, n in counts.items() if n > 1]
        if duplicates:
            first = duplicates[0]
            names = [img.get('file_name', '?') for img in images if img['id'] == first]
            raise AnnotationError(
                f'{self.annotation_file}: {len(duplicates)} image ids are used more than once, '
                f'e.g. id {first} by {", ".join(names)}; their annotations cannot be told apart. '
                'Give every image a unique id')
        super().createIndex()

    def __init__(self, annotation_file=None):
        self.annotation_file = annotation_file
        super().__init__(annotation_file)


@DATASETS.register_module()
class CocoDataset(MMDetCocoDataset):
    """mmdet's :class:`~mmdet.datasets.CocoDataset` (same arguments), registered under
    the same name in mmdeform's scope, that says what it does with bad annotations.

    mmdet skips them without a word. Here each one is logged as a warning naming
    the annotation id, the image and what was done (the first ten one per line,
    then a count), and kept in :attr:`annotation_problems`:

    * a box partly outside its image is **fixed**: clipped to the image (mmdet
      keeps it, and its ``Resize`` clips it later; clipping here does the same
      earlier, so the targets are unchanged);
    * a box entirely outside its image, a width or height below 1 pixel
      (negative sizes included) or an area of 0 or less is **dropped**;
    * a ``category_id`` that the file's ``categories`` do not list is **dropped**.
      Categories listed in the file but not in ``metainfo.classes`` are dropped
      as in mmdet (training on a subset of classes) and only counted.

    Duplicate image ids are an :class:`AnnotationError`: there is no way to tell
    which annotations belong to which image.

    Each image records ``dataset_index``, its position in the annotation file, so
    that an image that cannot be decoded is named by the same index whatever
    subset ``indices`` or filtering leave (:class:`LoadImageFromFile`).
    """
    COCOAPI = CheckedCOCO

    def load_data_list(self) -> List[dict]:
        self.annotation_problems: List[str] = []
        self._actions: Counter = Counter()
        self._unselected = 0
        data_list = super().load_data_list()
        for index, data_info in enumerate(data_list):  # kept through indices= and filtering
            data_info['dataset_index'] = index
        problems = self.annotation_problems
        for message in problems[:MAX_LOGGED]:
            print_log(message, logger='current', level=logging.WARNING)
        if problems:
            more = (f' (the first {MAX_LOGGED} are listed above)' if len(problems) > MAX_LOGGED
                    else '')
            print_log(f'{self.ann_file}: {len(problems)} broken annotations: '
                      f'{self._actions["dropped"]} dropped, {self._actions["fixed"]} fixed{more}',
                      logger='current', level=logging.WARNING)
        if self._unselected:
            print_log(f'{self.ann_file}: {self._unselected} annotations of categories outside '
                      'metainfo.classes are not used', logger='current')
        return data_list

    def _problem(self, ann: dict, img_info: dict, what: str, action: str) -> None:
        self._actions[action.split(':')[0]] += 1
        self.annotation_problems.append(
            f'{osp.basename(self.ann_file)}: annotation id {ann.get("id", "?")} (image '
            f'{img_info.get("file_name", img_info.get("id"))}, {img_info["width"]}x'
            f'{img_info["height"]}): {what}; {action}')

    def _check(self, ann: dict, img_info: dict) -> Optional[dict]:
        """The annotation as it is used (clipped), or None where it is dropped."""
        width, height = img_info['width'], img_info['height']
        x, y, w, h = ann['bbox']
        box = f'bbox [{x:g}, {y:g}, {w:g}, {h:g}] (x, y, w, h)'
        if ann['category_id'] not in self.coco.cats:
            self._problem(ann, img_info, f'category_id {ann["category_id"]} is not in the file\'s '
                          'categories', 'dropped')
            return None
        if w < 1 or h < 1 or ann.get('area', 1) <= 0:
            self._problem(ann, img_info, f'{box} has a width or height below 1 px or an area of '
                          f'{ann.get("area")}', 'dropped')
            return None
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            self._problem(ann, img_info, f'{box} lies entirely outside the image', 'dropped')
            return None
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            clipped = f'[{x1:g}, {y1:g}, {x2 - x1:g}, {y2 - y1:g}]'
            if x2 - x1 < 1 or y2 - y1 < 1:
                self._problem(ann, img_info, f'{box} extends outside the image and is under 1 px '
                              f'inside it ({clipped})', 'dropped')
                return None
            self._problem(ann, img_info, f'{box} extends outside the image',
                          f'fixed: clipped to {clipped}')
            ann = dict(ann, bbox=[x1, y1, x2 - x1, y2 - y1])
        if ann['category_id'] not in self.cat_ids:
            self._unselected += 1
        return ann

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        img_info = raw_data_info['raw_img_info']
        checked = (ann if ann.get('ignore', False) else self._check(ann, img_info)
                   for ann in raw_data_info['raw_ann_info'])
        kept = [ann for ann in checked if ann is not None]
        return super().parse_data_info(dict(raw_data_info, raw_ann_info=kept))
