"""tools/deployment/pytorch2onnx.py on the shapes checkpoint, and demo/onnx_demo.py run
without torch against demo/image_demo.py; their one-line errors."""
import json
import os
import textwrap

import cv2
import numpy as np
import pytest
from helpers import PYTHON, run_tool, tool_error

pytest.importorskip('onnxruntime', reason='requirements/deploy.txt is not installed')

# Val images resized to sizes whose test-pipeline inputs differ (160 x 192, 192 x 96,
# 150 x 180: no side of the last a multiple of 32) and to one larger than the test scale.
SIZES = ((160, 192), (192, 96), (100, 120), (300, 360))
# The ONNX file and the PyTorch model run the same float32 maths in another order: in the
# input's pixels boxes agree to ~1e-4 (tests/onnx_cases.py); mapped back to an image up
# to 1.9x larger (300 x 360 into 160 x 192), 1e-3 px leaves room for that factor.
SCORE_ATOL = 1e-4
BOX_ATOL = 1e-3
# The modules demo/onnx_demo.py must run without: the whole PyTorch stack.
BLOCKED = ('torch', 'torchvision', 'mmcv', 'mmdet', 'mmengine', 'mmdeform')
RUN_BLOCKED = textwrap.dedent('''
    import runpy, sys
    BLOCKED = set({blocked!r})
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(name + ' is blocked: onnx_demo.py must not need it')
    sys.meta_path.insert(0, Block())
    sys.argv = ['demo/onnx_demo.py'] + {args!r}
    try:
        runpy.run_path('demo/onnx_demo.py', run_name='__main__')
    finally:
        assert not set(sys.modules) & BLOCKED, sorted(set(sys.modules) & BLOCKED)
''')


def onnx_demo(args, check=True):
    code = RUN_BLOCKED.format(blocked=BLOCKED, args=[str(a) for a in args])
    return run_tool([PYTHON, '-c', code], check=check)


@pytest.fixture(scope='module')
def exported(tiny_checkpoint, tmp_path_factory):
    config, checkpoint, _ = tiny_checkpoint
    out = tmp_path_factory.mktemp('onnx') / 'ddetr.onnx'
    # a new interpreter: torch.export logs through handlers a forked test process closed
    proc = run_tool([PYTHON, 'tools/deployment/pytorch2onnx.py', config, checkpoint, '--out',
                     str(out), '--dynamic'], fresh=True)
    return str(out), proc.stdout


@pytest.fixture(scope='module')
def images(shapes_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp('onnx_images')
    val = os.path.join(shapes_root, 'val')
    for name, (h, w) in zip(sorted(os.listdir(val)), SIZES):
        image = cv2.imread(os.path.join(val, name))
        cv2.imwrite(str(folder / name), cv2.resize(image, (w, h)))
    return folder


def test_export_tool_writes_metadata(exported):
    import onnx
    path, stdout = exported
    assert 'Exported DeformableDETR to' in stdout and 'opset 18' in stdout, stdout
    assert "images (batch, 3, height, width)" in stdout, stdout
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta['mmdeform_model'] == 'DeformableDETR'
    assert json.loads(meta['classes']) == ['rectangle', 'ellipse', 'triangle', 'cross']
    assert json.loads(meta['test_scale']) == [192, 192] and json.loads(meta['keep_ratio'])
    assert len(json.loads(meta['mean'])) == 3 and len(json.loads(meta['std'])) == 3


def test_onnx_demo_without_torch_matches_image_demo(exported, images, tiny_checkpoint,
                                                    tmp_path):
    path, _ = exported
    config, checkpoint, _ = tiny_checkpoint
    proc = onnx_demo([path, images, '--out', tmp_path / 'onnx', '--save-pred',
                      tmp_path / 'onnx.json'])
    assert f'Processed {len(SIZES)} image(s)' in proc.stdout, proc.stdout
    run_tool([PYTHON, 'demo/image_demo.py', str(images), config, checkpoint, '--out-dir',
              str(tmp_path / 'torch'), '--save-pred', str(tmp_path / 'torch.json')])
    got = json.loads((tmp_path / 'onnx.json').read_text())
    expected = json.loads((tmp_path / 'torch.json').read_text())
    assert sorted(got) == sorted(expected) and len(got) == len(SIZES)
    for name in expected:
        assert got[name]['labels'] == expected[name]['labels'], name
        np.testing.assert_allclose(got[name]['scores'], expected[name]['scores'], rtol=0,
                                   atol=SCORE_ATOL, err_msg=name)
        np.testing.assert_allclose(got[name]['bboxes'], expected[name]['bboxes'], rtol=0,
                                   atol=BOX_ATOL, err_msg=name)
        drawn = cv2.imread(str(tmp_path / 'onnx' / name))
        assert drawn.shape == cv2.imread(str(images / name)).shape


def test_onnx_demo_one_line_errors(exported, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    path, _ = exported
    text = tmp_path / 'notes.txt'
    text.write_text('not an image')
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    identity = tmp_path / 'identity.onnx'
    graph = helper.make_graph(
        [helper.make_node('Identity', ['x'], ['y'])], 'g',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)],
                                ir_version=9), str(identity))
    for args, expected in (([path, text], 'is not an image'),
                           ([path, broken], 'cannot be decoded as an image'),
                           ([identity, broken], 'is not an mmdeform detector export'),
                           ([tmp_path / 'missing.onnx', broken], 'does not exist')):
        proc = onnx_demo([*args, '--out', tmp_path / 'out'], check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and expected in lines[0], proc.stderr


def test_export_tool_refuses_bad_settings(tiny_checkpoint, tmp_path, capsys):
    config, checkpoint, _ = tiny_checkpoint
    out = str(tmp_path / 'm.onnx')
    err = tool_error('tools/deployment/pytorch2onnx.py',
                     [config, checkpoint, '--out', out, '--opset', '15'], capsys)
    assert 'opset 15' in err and 'GridSample' in err and 'opset 16' in err, err
    for opset in (16, 17):
        err = tool_error('tools/deployment/pytorch2onnx.py',
                         [config, checkpoint, '--out', out, '--opset', str(opset)], capsys)
        assert 'version converter' in err and '--opset 18' in err, err
    # the shapes model on a ResNet-50 with DCNv2 in the last stage (ResNet-18's blocks
    # take none); the checkpoint's ResNet-18 weights do not fit it, which loading warns of
    dcn = ['model.backbone.depth=50', 'model.neck.in_channels=[256,512]',
           'model.backbone.dcn.type=DCNv2', 'model.backbone.dcn.deform_groups=1',
           'model.backbone.dcn.fallback_on_stride=False',
           'model.backbone.stage_with_dcn=[False,False,False,True]']
    err = tool_error('tools/deployment/pytorch2onnx.py',
                     [config, checkpoint, '--out', out, '--cfg-options', *dcn], capsys)
    assert 'backbone.layer4.0.conv2 (ModulatedDeformConv2dPack)' in err, err
    assert 'DeformConv' in err and '--opset 19' in err, err
    assert not os.path.exists(out)
