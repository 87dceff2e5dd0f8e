"""Deployment: ONNX export with standard operators (:mod:`.onnx`)."""
from .onnx import (DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportError, ExportWrapper,
                   check_opset, config_metadata, custom_domains, export_blockers, export_onnx)

__all__ = ['export_onnx', 'ExportWrapper', 'ExportError', 'export_blockers', 'custom_domains',
           'config_metadata', 'check_opset', 'MIN_OPSET', 'DEFAULT_OPSET', 'MAX_OPSET']
