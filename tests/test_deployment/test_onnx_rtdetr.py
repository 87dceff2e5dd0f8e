"""RT-DETRv2 exported to ONNX and run in onnxruntime (the cases and tolerances:
tests/onnx_cases.py): fused by switch_to_deploy (the exporter's default) and as
built, and with v2's 'discrete' sampling; all against the unfused PyTorch model."""
import pytest

pytest.importorskip('onnxruntime', reason='requirements/deploy.txt is not installed')

from onnx_cases import assert_exports_and_matches  # noqa: E402


@pytest.mark.parametrize('name,deploy', [('rtdetr', True), ('rtdetr', False),
                                         ('rtdetr_discrete', True)])
def test_export_matches_pytorch(name, deploy, tmp_path):
    summary = assert_exports_and_matches(name, tmp_path, deploy=deploy)
    ops = set(summary['op_types'])
    if deploy:
        # R18 v2: 4 CSPRep layers of 3 RepVGG blocks; no BatchNormalization left
        assert summary['deployed']['repvgg_blocks'] == 12 and 'BatchNormalization' not in ops
    else:
        assert summary['deployed'] is None and 'BatchNormalization' in ops
    # bilinear sampling is GridSample; discrete reads cells with GatherElements
    assert ('GridSample' in ops) == (name == 'rtdetr')
    assert 'Floor' in ops if name == 'rtdetr_discrete' else 'Floor' not in ops
