"""DINO 4- and 5-scale, and Deformable DETR on DAT / DINO on DAT++, exported to ONNX
and run in onnxruntime (the cases and tolerances: tests/onnx_cases.py); the opsets
the exporter refuses."""
import pytest

pytest.importorskip('onnxruntime', reason='requirements/deploy.txt is not installed')

from onnx_cases import assert_exports_and_matches  # noqa: E402


@pytest.mark.parametrize('name', ['dino_4scale', 'dino_5scale', 'ddetr_dat', 'dino_dat_pp'])
def test_export_matches_pytorch(name, tmp_path):
    summary = assert_exports_and_matches(name, tmp_path)
    assert 'GridSample' in summary['op_types']
