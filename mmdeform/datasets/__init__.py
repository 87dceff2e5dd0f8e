from .coco import CocoDataset
from .loading import LoadImageFromFile
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import ShapesDataset, ShapesSpec, generate_shapes_dataset

__all__ = ['CocoDataset', 'LoadImageFromFile', 'ShapesDataset', 'ShapesSpec',
           'generate_shapes_dataset', 'SHAPES_CLASSES']
