from .base_detr import BaseDETR
from .deformable_detr import DeformableDETR
from .detr import DETR
from .dino import DINO
from .rtdetr import RTDETR

__all__ = ['BaseDETR', 'DETR', 'DeformableDETR', 'DINO', 'RTDETR']
