from .detr_head import DETRHead

__all__ = ['DETRHead']
