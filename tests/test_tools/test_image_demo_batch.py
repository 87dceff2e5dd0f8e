"""demo/image_demo.py on many images: --batch-size, --save-pred, videos, the images/s line."""
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
from helpers import PYTHON, ROOT, one_thread, run_tool

TINY_CONFIG = 'tests/data/configs/ddetr_shapes_tiny.py'
# (H, W) of the inputs. The tiny config's test pipeline resizes to fit 192 x 192 keeping
# the ratio, so 0, 2 and 4 become 160 x 192 and 1 and 3 become 192 x 96: with
# --batch-size 3, one full batch of three images of different input sizes and a last
# batch of two, interleaved in the input order.
MIXED_SIZES = ((160, 192), (192, 96), (80, 96), (128, 64), (120, 144))
VIDEO_SIZE = (128, 160)  # (H, W); even sides, as MPEG-4 wants
VIDEO_FRAMES = 4
# Batch N against batch 1 on the same preprocessed size, measured on the CPU: scores
# differ by <= 9e-8 and boxes by <= 2.3e-5 px (1-2 float32 ulps of a 100-200 px
# coordinate); the convolutions and matmuls of a batch accumulate in another order. The
# tolerances leave a few times that; a padded batch moves scores by 1e-2 and boxes by
# ~100 px (test_a_padded_batch_would_change_the_detections).
SCORE_ATOL = 1e-6
BOX_ATOL = 1e-4


def demo(args, **kwargs):
    return run_tool([PYTHON, 'demo/image_demo.py', *map(str, args)], **kwargs)


def assert_same_predictions(got, expected, what):
    """Two ``--save-pred`` entries: the same labels, scores and boxes within the tolerances."""
    assert got['labels'] == expected['labels'], what
    for key, atol in (('scores', SCORE_ATOL), ('bboxes', BOX_ATOL)):
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(expected[key]),
                                   rtol=0, atol=atol, msg=lambda m: f'{what} {key}: {m}')


def preprocessed_shape(path):
    """(C, H, W) after the config's test pipeline, by mmdet's own helpers."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.config import Config
    pipeline = Compose(get_test_pipeline_cfg(Config.fromfile(os.path.join(ROOT, TINY_CONFIG))))
    return tuple(pipeline(dict(img_path=str(path), img_id=0))['inputs'].shape)


def val_images(shapes_root, count):
    val = os.path.join(shapes_root, 'val')
    return [cv2.imread(os.path.join(val, f)) for f in sorted(os.listdir(val))[:count]]


@pytest.fixture(scope='module')
def mixed(shapes_root, tiny_checkpoint, tmp_path_factory):
    """Val images resized to MIXED_SIZES, run at --batch-size 3 and 1: ``(folder,
    {batch size: (predictions, stdout)})``."""
    folder = tmp_path_factory.mktemp('mixed')
    for i, (image, (h, w)) in enumerate(zip(val_images(shapes_root, len(MIXED_SIZES)),
                                            MIXED_SIZES)):
        cv2.imwrite(str(folder / f'img{i}.png'), cv2.resize(image, (w, h)))
    config, checkpoint, _ = tiny_checkpoint
    runs = {}
    for batch in (3, 1):
        out = tmp_path_factory.mktemp(f'mixed_out{batch}')
        proc = demo([folder, config, checkpoint, '--out-dir', out, '--batch-size', batch,
                     '--save-pred', out / 'pred.json'])
        assert sorted(os.listdir(out)) == [f'img{i}.png' for i in range(5)] + ['pred.json']
        with open(out / 'pred.json') as f:
            runs[batch] = json.load(f), proc.stdout
    return folder, runs


def test_batches_of_one_size_give_the_detections_of_batch_1(mixed):
    folder, runs = mixed
    shapes = [preprocessed_shape(folder / f'img{i}.png') for i in range(len(MIXED_SIZES))]
    assert shapes == [(3, 160, 192), (3, 192, 96)] * 2 + [(3, 160, 192)]
    batched, alone = runs[3][0], runs[1][0]
    names = [f'img{i}.png' for i in range(len(MIXED_SIZES))]
    assert list(batched) == list(alone) == names  # input order, though img1 ran last
    for name in names:
        assert_same_predictions(batched[name], alone[name], name)


@pytest.fixture(scope='module')
def model(tiny_checkpoint):
    from mmdet.apis import init_detector
    config, checkpoint, _ = tiny_checkpoint
    with one_thread():
        return init_detector(os.path.join(ROOT, config), checkpoint, device='cpu')


def as_saved(result):
    pred = result.pred_instances
    return dict(bboxes=pred.bboxes.tolist(), scores=pred.scores.tolist(),
                labels=pred.labels.tolist())


def test_batch_1_is_mmdets_inference_detector(mixed, model):
    """mmdet's API on each image alone: the saved predictions are all of them, in the
    input image's pixels (img2 and img4 are scaled by 2 and 4/3 for the model)."""
    from mmdet.apis import inference_detector
    folder, runs = mixed
    with one_thread():
        for name, saved in runs[1][0].items():
            expected = as_saved(inference_detector(model, str(folder / name)))
            assert len(saved['scores']) == 50  # max_per_img: unthresholded
            # the same computation, one image at a time: equal to the bit (measured)
            assert saved == expected, name


def test_a_padded_batch_would_change_the_detections(mixed, model):
    """img0 (160 x 192) and img1 (192 x 96) through the model in one padded batch: the
    comparison above catches what the grouping by size avoids."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    folder, runs = mixed
    pipeline = Compose(get_test_pipeline_cfg(model.cfg))
    data = [pipeline(dict(img_path=str(folder / f'img{i}.png'), img_id=0)) for i in (0, 1)]
    with one_thread(), torch.no_grad():
        padded = model.test_step(dict(inputs=[d['inputs'] for d in data],
                                      data_samples=[d['data_samples'] for d in data]))
    alone = runs[1][0]
    for i, result in enumerate(padded):
        assert result.metainfo['batch_input_shape'] == (192, 192)
        got, expected = as_saved(result), alone[f'img{i}.png']
        with pytest.raises(AssertionError):
            assert_same_predictions(got, expected, f'img{i}')
        # measured 1.5e-2 and 1.1e-2: far beyond the tolerance, not a near miss
        score_change = np.abs(np.subtract(got['scores'], expected['scores'])).max()
        assert score_change > 100 * SCORE_ATOL, score_change


def test_images_per_second_line(mixed):
    _, runs = mixed
    for batch, (_, stdout) in runs.items():
        assert re.search(rf'^Processed 5 image\(s\) in \d+\.\d s: \d+\.\d\d images/s '
                         rf'\(batch size {batch}\)$', stdout, re.M), stdout[-2000:]


@pytest.fixture(scope='module')
def video(shapes_root, tiny_checkpoint, tmp_path_factory):
    """A 5-fps mp4 of val images, drawn at --batch-size 2; its decoded frames as PNGs, drawn
    at batch 1. Returns ``(clip, frames, out dir, video predictions, frame predictions)``."""
    h, w = VIDEO_SIZE
    folder = tmp_path_factory.mktemp('video')
    clip = folder / 'clip.mp4'
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*'mp4v'), 5, (w, h))
    for image in val_images(shapes_root, VIDEO_FRAMES):
        writer.write(cv2.resize(image, (w, h)))
    writer.release()
    frames, _ = read_video(clip)
    assert len(frames) == VIDEO_FRAMES
    frame_dir = folder / 'frames'
    frame_dir.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(frame_dir / f'frame{i}.png'), frame)  # lossless: the decoded pixels
    config, checkpoint, _ = tiny_checkpoint
    preds = []
    for source, batch, out in ((clip, 2, folder / 'out'), (frame_dir, 1, folder / 'out_frames')):
        demo([source, config, checkpoint, '--out-dir', out, '--batch-size', batch,
              '--score-thr', '0.0', '--save-pred', out / 'pred.json'])
        with open(out / 'pred.json') as f:
            preds.append(json.load(f))
    return clip, frames, folder / 'out', *preds


def read_video(path):
    """All the frames OpenCV decodes (BGR), and the fps."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_video_frames_are_detected_as_images(video):
    _, frames, _, from_video, from_frames = video
    assert list(from_video) == [f'clip#{i}' for i in range(VIDEO_FRAMES)]
    for i in range(VIDEO_FRAMES):
        assert_same_predictions(from_video[f'clip#{i}'], from_frames[f'frame{i}.png'], i)


def test_video_output_has_every_frame_with_boxes(video):
    _, frames, out, _, _ = video
    assert sorted(os.listdir(out)) == ['clip.mp4', 'pred.json']
    drawn, fps = read_video(out / 'clip.mp4')
    assert fps == 5
    assert len(drawn) == len(frames)
    for frame, original in zip(drawn, frames):
        assert frame.shape == original.shape
        # every box is drawn (--score-thr 0.0): a visible share of the pixels changes
        # (measured 52-74 %), beyond MPEG-4's re-encoding noise (0 % with --score-thr 1.01)
        changed = (np.abs(frame.astype(np.int16) - original).max(-1) > 30).mean()
        assert changed > 0.01, changed


def test_bad_inputs_are_one_line_errors(tmp_path):
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'not a video')
    notes = tmp_path / 'notes.txt'
    notes.write_text('not an image')
    missing = tmp_path / 'missing.avi'
    for path, line in (
            (broken, f"error: InputError: video '{broken}' cannot be opened or holds no "
                     'frame that OpenCV decodes'),
            (missing, f"error: FileNotFoundError: video '{missing}' does not exist"),
            (notes, f"error: InputError: '{notes}' is neither an image (.png, .jpg, .jpeg, "
                    '.bmp) nor a video (.mp4, .avi, .mov, .mkv), going by its extension')):
        proc = demo([path, TINY_CONFIG, 'x.pth'], check=False)
        # FFmpeg's own complaint about the broken file is not printed around it
        assert (proc.returncode, proc.stderr.splitlines()) == (1, [line]), proc.stderr
    proc = demo([broken, TINY_CONFIG, 'x.pth', '--batch-size', '0'], check=False)
    assert proc.returncode == 2 and "expected a positive integer, got '0'" in proc.stderr
