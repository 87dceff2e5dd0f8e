from .base_detr import BaseDETR
from .deformable_detr import DeformableDETR
from .detr import DETR

__all__ = ['BaseDETR', 'DETR', 'DeformableDETR']
