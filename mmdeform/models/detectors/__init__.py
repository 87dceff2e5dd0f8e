from .base_detr import BaseDETR
from .detr import DETR

__all__ = ['BaseDETR', 'DETR']
