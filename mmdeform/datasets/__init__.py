from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import ShapesDataset, ShapesSpec, generate_shapes_dataset

__all__ = ['ShapesDataset', 'ShapesSpec', 'generate_shapes_dataset', 'SHAPES_CLASSES']
