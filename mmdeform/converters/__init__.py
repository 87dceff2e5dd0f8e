from .common import (ConversionReport, UnmappedKeysError, read_state_dict, run_converter,
                     save_checkpoint_atomic)
from .mmdet import convert_mmdet

__all__ = ['ConversionReport', 'UnmappedKeysError', 'read_state_dict', 'run_converter',
           'save_checkpoint_atomic', 'convert_mmdet']
