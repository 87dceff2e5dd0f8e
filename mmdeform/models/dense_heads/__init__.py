from .deformable_detr_head import DeformableDETRHead
from .detr_head import DETRHead

__all__ = ['DETRHead', 'DeformableDETRHead']
