from .coco import COCO_CATEGORY_IDS
from .common import (ConversionReport, UnmappedKeysError, read_state_dict, run_converter,
                     save_checkpoint_atomic)
from .dat import convert_official_dat
from .mmdet import convert_mmdet
from .official import (convert_official_deformable_detr, convert_official_detr,
                       select_class_rows)
from .official_dino import convert_official_dino
from .rtdetr import convert_official_rtdetr, rename_official_rtdetr

__all__ = ['COCO_CATEGORY_IDS', 'ConversionReport', 'UnmappedKeysError', 'read_state_dict',
           'run_converter', 'save_checkpoint_atomic', 'convert_mmdet', 'convert_official_dat',
           'convert_official_deformable_detr', 'convert_official_detr', 'convert_official_dino',
           'convert_official_rtdetr', 'rename_official_rtdetr',
           'select_class_rows']
