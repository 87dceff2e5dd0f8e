from .deformable_detr_head import DeformableDETRHead
from .detr_head import DETRHead
from .dino_head import DINOHead

__all__ = ['DETRHead', 'DeformableDETRHead', 'DINOHead']
