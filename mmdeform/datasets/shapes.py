"""The built-in dataset: generated images of shapes with COCO annotations.

Nothing can be downloaded in CI, so the demo and the tests train and evaluate
on images this module draws. Generation is deterministic: image ``i`` of a
split is drawn from ``numpy.random.default_rng((seed, split_index, i))``, so
every machine writes the same files.

Layout under ``data_root`` (``data/shapes`` by default)::

    train/000000.png ...   annotations/instances_train.json
    val/000000.png ...     annotations/instances_val.json

Four classes (rectangle, ellipse, triangle, cross) of random colour, size
(the square root of the area from 12 px, about the smallest at which the four
shapes can be told apart by eye, to 60% of the image side), aspect ratio and
position; shapes overlap, but none hides more than 30% of another, and each
box is the extent of the object's visible pixels (as in COCO); image sizes
vary, so batches are padded; about 8% of images hold no object. About half of
the objects are "small" by COCO's definition (area below 32 x 32).
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Tuple

import cv2
import numpy as np
from .coco import CocoDataset
from mmengine.utils import ProgressBar

from mmdeform.registry import DATASETS

CLASSES = ('rectangle', 'ellipse', 'triangle', 'cross')
PALETTE = [(220, 20, 60), (0, 130, 200), (60, 180, 75), (245, 130, 48)]
SPLITS = ('train', 'val')
DONE_MARKER = '.generated'
# Bump when the drawing changes: a dataset written by another version is replaced.
GENERATOR_VERSION = 3


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate; the defaults are the built-in dataset."""
    num_train: int = 2000
    num_val: int = 200
    min_size: int = 128
    max_size: int = 192
    max_objects: int = 6
    empty_fraction: float = 0.08
    max_occlusion: float = 0.3
    min_object_size: int = 12
    seed: int = 0

    def num_images(self, split: str) -> int:
        return self.num_train if split == 'train' else self.num_val


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth two-colour gradient with mild noise."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xs / w + np.sin(angle) * ys / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> Tuple[int, ...]:
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - mean).sum() > 150:
            break
    return tuple(int(c) for c in colour)


def _shape_mask(cls: int, box: np.ndarray, h: int, w: int,
                rng: np.random.Generator) -> np.ndarray:
    """A ``(h, w)`` uint8 mask of shape ``cls`` filling ``box`` (x1, y1, x2, y2)."""
    mask = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    if CLASSES[cls] == 'rectangle':
        cv2.rectangle(mask, (x1, y1), (x2 - 1, y2 - 1), 255, thickness=-1)
    elif CLASSES[cls] == 'ellipse':
        cv2.ellipse(mask, ((x1 + x2 - 1) // 2, (y1 + y2 - 1) // 2),
                    (max(1, (bw - 1) // 2), max(1, (bh - 1) // 2)), 0, 0, 360, 255, thickness=-1)
    elif CLASSES[cls] == 'triangle':
        apex = x1 + int(rng.uniform(0, 1) * (bw - 1))
        pts = np.array([[apex, y1], [x1, y2 - 1], [x2 - 1, y2 - 1]], dtype=np.int32)
        if rng.uniform() < 0.5:  # point down
            pts[:, 1] = y1 + y2 - 1 - pts[:, 1]
        cv2.fillPoly(mask, [pts], 255)
    else:  # cross: a horizontal and a vertical bar, each a third of the box wide
        tw, th = max(1, bw // 3), max(1, bh // 3)
        cx, cy = x1 + (bw - tw) // 2, y1 + (bh - th) // 2
        cv2.rectangle(mask, (cx, y1), (cx + tw - 1, y2 - 1), 255, thickness=-1)
        cv2.rectangle(mask, (x1, cy), (x2 - 1, cy + th - 1), 255, thickness=-1)
    return mask


def _tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def _sample_box(rng: np.random.Generator, h: int, w: int, min_size: int) -> np.ndarray:
    # log-uniform scale: many small objects, some large ones
    side = np.exp(rng.uniform(np.log(min_size), np.log(0.6 * min(h, w))))
    aspect = np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
    bw = int(np.clip(round(side * np.sqrt(aspect)), 4, w))
    bh = int(np.clip(round(side / np.sqrt(aspect)), 4, h))
    x1 = int(rng.integers(0, w - bw + 1))
    y1 = int(rng.integers(0, h - bh + 1))
    return np.array([x1, y1, x1 + bw, y1 + bh], dtype=np.float64)


def draw_image(spec: ShapesSpec, split: str, index: int) -> Tuple[np.ndarray, List[Dict]]:
    """Image ``index`` of ``split``: a BGR uint8 array and its objects
    (``category`` index and ``bbox`` xyxy in pixels).

    Shapes are drawn one over the other. A new shape is rejected if it would
    hide more than ``max_occlusion`` of any earlier shape, so every object stays
    recognisable; each box is the extent of the object's visible pixels, as in
    COCO.
    """
    rng = np.random.default_rng((spec.seed, SPLITS.index(split), index))
    h, w = (int(v) for v in rng.integers(spec.min_size, spec.max_size + 1, size=2))
    img = _background(rng, h, w)
    num = 0 if rng.uniform() < spec.empty_fraction else int(rng.integers(1, spec.max_objects + 1))
    classes, full_areas, visible = [], [], []
    for _ in range(num):
        for _attempt in range(10):
            cls = int(rng.integers(len(CLASSES)))
            mask = _shape_mask(cls, _sample_box(rng, h, w, spec.min_object_size), h, w, rng) > 0
            if all((vis & ~mask).sum() >= (1 - spec.max_occlusion) * area
                   for vis, area in zip(visible, full_areas)):
                break
        else:
            continue
        img[mask] = _contrasting_colour(rng, img)
        visible = [vis & ~mask for vis in visible] + [mask]
        classes.append(cls)
        full_areas.append(int(mask.sum()))
    objects = [dict(category=cls, bbox=_tight_box(vis)) for cls, vis in zip(classes, visible)]
    return img, objects


def _write_split(spec: ShapesSpec, root: str, split: str) -> None:
    os.makedirs(os.path.join(root, split))
    images, annotations = [], []
    bar = ProgressBar(spec.num_images(split))
    for index in range(spec.num_images(split)):
        img, objects = draw_image(spec, split, index)
        file_name = f'{index:06d}.png'
        cv2.imwrite(os.path.join(root, split, file_name), img)
        images.append(dict(id=index + 1, file_name=file_name, height=img.shape[0],
                           width=img.shape[1]))
        for obj in objects:
            x1, y1, x2, y2 = (float(v) for v in obj['bbox'])
            annotations.append(dict(id=len(annotations) + 1, image_id=index + 1,
                                    category_id=obj['category'] + 1,
                                    bbox=[x1, y1, x2 - x1, y2 - y1],
                                    area=(x2 - x1) * (y2 - y1), iscrowd=0))
        bar.update()
    print()
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def _marker(spec: ShapesSpec) -> dict:
    return dict(spec.__dict__, generator_version=GENERATOR_VERSION)


def _read_marker(data_root: str):
    try:
        with open(os.path.join(data_root, DONE_MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generate_shapes_dataset(data_root: str, spec: ShapesSpec = ShapesSpec()) -> str:
    """Write the dataset under ``data_root`` unless the same one is already there.

    The files are written to a temporary directory beside ``data_root`` and
    moved into place with a rename, so a crash never leaves half a dataset and
    concurrent processes (distributed training) cannot collide. A dataset that
    this function wrote with another spec or generator version is replaced; a
    directory it did not write (no marker file) is never touched.
    """
    data_root = os.path.abspath(data_root)
    found = _read_marker(data_root)
    if found == _marker(spec):
        return data_root
    if os.path.exists(data_root) and found is None:
        raise FileExistsError(f'{data_root} exists but is not a generated shapes dataset '
                              f'(no {DONE_MARKER} file); move it away or choose another '
                              'data_root')
    parent = os.path.dirname(data_root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.shapes-', dir=parent)
    try:
        os.makedirs(os.path.join(tmp, 'annotations'))
        if found is not None:
            changed = {k: (found.get(k), v) for k, v in _marker(spec).items()
                       if found.get(k) != v}
            print(f'Replacing the generated shapes dataset in {data_root}: it was written '
                  'with a different spec (' +
                  ', '.join(f'{k}: {old} -> {new}' for k, (old, new) in changed.items()) +
                  ')')
        print(f'Generating the shapes dataset in {data_root} ...')
        for split in SPLITS:
            _write_split(spec, tmp, split)
        with open(os.path.join(tmp, DONE_MARKER), 'w') as f:
            json.dump(_marker(spec), f)
        if found is not None:  # an outdated generated copy: set it aside, then delete it
            stale = tempfile.mkdtemp(prefix='.shapes-stale-', dir=parent)
            try:
                os.rename(data_root, os.path.join(stale, 'old'))
            except OSError:
                pass  # another process replaced it first
        try:
            os.rename(tmp, data_root)
        except OSError:
            if _read_marker(data_root) != _marker(spec):
                raise
        if found is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_root


@DATASETS.register_module()
class ShapesDataset(CocoDataset):
    """mmdeform's checked :class:`CocoDataset` over the generated shapes; generates on first use.

    Args:
        generate: write the dataset under ``data_root`` if it is missing.
        spec: keyword arguments of :class:`ShapesSpec`.
        Others: as :class:`mmdet.datasets.CocoDataset`.
    """
    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, *args, generate: bool = True, spec: dict = None, **kwargs) -> None:
        self._generate = generate
        self._spec = ShapesSpec(**(spec or {}))
        super().__init__(*args, **kwargs)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        if self._generate:
            generate_shapes_dataset(self.data_root, self._spec)
        super().full_init()
