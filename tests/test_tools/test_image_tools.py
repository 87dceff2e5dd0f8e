"""demo/image_demo.py and tools/analysis_tools/gradient_norm_map.py: outputs and maths."""
import importlib.util
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from helpers import PYTHON, ROOT, make_batch, preprocess, run_tool

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
TINY_CONFIG = 'tests/data/configs/ddetr_shapes_tiny.py'


def load_gradient_tool():
    path = os.path.join(ROOT, 'tools', 'analysis_tools', 'gradient_norm_map.py')
    spec = importlib.util.spec_from_file_location('gradient_norm_map', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_png(path):
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE, f'{path} is not a PNG'
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None and image.size > 0, f'{path} does not decode'
    return image


@pytest.fixture(scope='module')
def two_images(shapes_root, tmp_path_factory):
    """Two val images in a directory of their own, one of them as JPEG (extension handling)."""
    folder = tmp_path_factory.mktemp('demo_in')
    val = sorted(f for f in os.listdir(os.path.join(shapes_root, 'val')) if f.endswith('.png'))
    shutil.copy(os.path.join(shapes_root, 'val', val[0]), folder / 'a.png')
    image = cv2.imread(os.path.join(shapes_root, 'val', val[1]))
    cv2.imwrite(str(folder / 'b.jpg'), image)
    (folder / 'notes.txt').write_text('not an image')
    return folder


@pytest.fixture(scope='module')
def demo_all_boxes(tiny_checkpoint, two_images, tmp_path_factory):
    """image_demo.py over the directory with every prediction drawn (--score-thr 0.0)."""
    config, checkpoint, _ = tiny_checkpoint
    out = tmp_path_factory.mktemp('demo_out')
    proc = run_tool([PYTHON, 'demo/image_demo.py', str(two_images), config, checkpoint,
                     '--out-dir', str(out), '--score-thr', '0.0'], fresh=True)
    return out, proc


def test_image_demo_one_png_per_image_at_input_size(demo_all_boxes, two_images):
    out, proc = demo_all_boxes
    assert str(out) in proc.stdout
    assert sorted(os.listdir(out)) == ['a.png', 'b.png']
    for name, source in (('a.png', 'a.png'), ('b.png', 'b.jpg')):
        drawn, original = read_png(out / name), cv2.imread(str(two_images / source))
        assert drawn.shape == original.shape, name


def test_image_demo_score_threshold_decides_what_is_drawn(tiny_checkpoint, demo_all_boxes,
                                                          two_images, tmp_path):
    config, checkpoint, _ = tiny_checkpoint
    image = two_images / 'a.png'
    run_tool([PYTHON, 'demo/image_demo.py', str(image), config, checkpoint,
              '--out-dir', str(tmp_path), '--score-thr', '1.01'])
    original = cv2.imread(str(image)).astype(np.int16)
    no_boxes = read_png(tmp_path / 'a.png').astype(np.int16)
    all_boxes = read_png(demo_all_boxes[0] / 'a.png').astype(np.int16)
    # nothing passes 1.01: the image comes back as it was (PNG is lossless)
    assert np.abs(no_boxes - original).max() <= 1
    # every prediction passes 0.0: boxes and labels change a visible share of the pixels
    changed = (np.abs(all_boxes - original).max(-1) > 30).mean()
    assert changed > 0.01, changed


def test_image_demo_bad_paths(tmp_path):
    missing = tmp_path / 'nope.png'
    proc = run_tool([PYTHON, 'demo/image_demo.py', str(missing), TINY_CONFIG, 'x.pth'],
                    check=False)
    assert proc.returncode != 0 and f"image '{missing}' does not exist" in proc.stderr
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('')
    proc = run_tool([PYTHON, 'demo/image_demo.py', str(empty), TINY_CONFIG, 'x.pth'],
                    check=False)
    assert proc.returncode != 0 and f"directory '{empty}' holds no image" in proc.stderr


def test_gradient_norm_map_writes_one_png_row_per_object(tiny_checkpoint, two_images, tmp_path):
    config, checkpoint, _ = tiny_checkpoint
    proc = run_tool([PYTHON, 'tools/analysis_tools/gradient_norm_map.py', str(two_images / 'a.png'),
                     config, checkpoint, '--topk', '2', '--out-dir', str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ['a_obj0.png', 'a_obj1.png']
    assert str(tmp_path) in proc.stdout
    for name in os.listdir(tmp_path):
        figure = read_png(tmp_path / name)
        height, width = figure.shape[:2]
        assert width > 4 * height, 'six panels side by side'
        assert figure.std() > 5, 'not a blank figure'


def test_gradient_norm_maps_crop_padding_and_resize():
    tool = load_gradient_tool()
    grads = torch.zeros(5, 3, 40, 50)
    grads[:, :, :30, :40] = 1.0
    grads[:, :, 30:, :] = 1e6  # padding must not leak into the maps
    grads[:, :, :, 40:] = 1e6
    maps = tool.gradient_norm_maps(grads, (30, 40), (60, 80))
    assert maps.shape == (5, 60, 80)
    torch.testing.assert_close(maps, torch.full((5, 60, 80), 3 ** 0.5))


def test_gradient_matches_finite_differences():
    """d x / d pixel and d score / d pixel against central differences of the model's own
    outputs, on a tiny Deformable DETR (default init) and a 64 x 64 image. float64, so that
    the differences are exact enough for a 2 % tolerance. Without refinement and two-stage:
    those detach the references between layers, so autograd (and the paper's maps) leave
    out a path that finite differences see."""
    from mmengine.config import Config

    from mmdeform.registry import MODELS
    tool = load_gradient_tool()
    torch.manual_seed(0)
    # PyTorch's default init (no init_weights): the zero-initialised last box layer of the
    # official init would make every box gradient vanish
    cfg = Config.fromfile(os.path.join(ROOT, TINY_CONFIG)).model
    cfg.update(with_box_refine=False, as_two_stage=False, num_queries=10)
    model = MODELS.build(cfg).double().eval()
    images, samples = make_batch(sizes=((64, 64), ), boxes_per_image=[1], num_classes=4)
    inputs, samples = preprocess(model, images, samples)
    inputs = inputs.double()

    with torch.no_grad():
        logits = model(inputs, samples, mode='tensor').all_cls_scores[-1][0]
    (query, label, _), = tool.top_predictions(model.bbox_head, logits, k=1)
    scalars, grads = tool.output_gradients(model, inputs, samples, [(query, label)])
    assert grads.shape == (1, 5, 3, 64, 64)

    def outputs_at(x):  # x in pixels and the sigmoid score, straight from mode='tensor'
        with torch.no_grad():
            out = model(x, samples, mode='tensor')
        return torch.stack([out.all_bbox_preds[-1][0, query, 0] * 64,
                            out.all_cls_scores[-1][0, query, label].sigmoid()])

    torch.testing.assert_close(outputs_at(inputs), scalars[0, [0, 4]])
    eps = 1e-4
    for item, column in ((0, 0), (4, 1)):  # x, score
        grad = grads[0, item]
        # the pixels the item depends on most, and one it hardly depends on
        flat = grad.abs().flatten()
        picks = flat.topk(3).indices.tolist() + [int(flat.argmin())]
        for index in picks:
            c, rest = divmod(index, 64 * 64)
            y, x = divmod(rest, 64)
            bump = torch.zeros_like(inputs)
            bump[0, c, y, x] = eps
            numeric = (outputs_at(inputs + bump) - outputs_at(inputs - bump))[column] / (2 * eps)
            analytic = grad[c, y, x]
            assert abs(numeric - analytic) <= 0.02 * abs(analytic) + 1e-6 * flat.max(), \
                (tool.ITEMS[item], (c, y, x), float(numeric), float(analytic))
