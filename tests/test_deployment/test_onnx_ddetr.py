"""DETR and every Deformable DETR variant exported to ONNX and run in onnxruntime
(the cases and tolerances: tests/onnx_cases.py)."""
import pytest

pytest.importorskip('onnxruntime', reason='requirements/deploy.txt is not installed')

from onnx_cases import assert_exports_and_matches  # noqa: E402


# the default opset 18 for most; 20 (GridSample's mode renamed 'linear') on one model
@pytest.mark.parametrize('name,opset', [('detr', 18), ('ddetr_single_scale', 18), ('ddetr', 18),
                                        ('ddetr_refine', 20), ('ddetr_refine_two_stage', 18)])
def test_export_matches_pytorch(name, opset, tmp_path):
    import onnx
    summary = assert_exports_and_matches(name, tmp_path, opset)
    proto = onnx.load(str(tmp_path / f'{name}.onnx'))
    assert {o.domain: o.version for o in proto.opset_import}[''] == opset
    # deformable attention is GridSample, not a custom operator
    assert ('GridSample' in summary['op_types']) == (name != 'detr'), summary['op_types']


def test_dcn_backbone_exports_as_deform_conv(tmp_path):
    summary = assert_exports_and_matches('ddetr_dcn', tmp_path, opset=19)
    assert 'DeformConv' in summary['op_types']
