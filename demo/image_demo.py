"""Draw a detector's predictions on an image, on every image of a directory, or on a video.

    python demo/image_demo.py IMG_DIR_OR_VIDEO CONFIG CHECKPOINT [--out-dir outputs/demo]
                              [--score-thr 0.3] [--batch-size 1] [--save-pred PRED.json]
                              [--device cpu] [--cfg-options K=V ...]

Writes one PNG per input image, ``OUT_DIR/<input name>.png``, at the input's size,
or, for a video (read by OpenCV), ``OUT_DIR/<stem>.mp4`` (mp4v, the input's fps)
with every frame detected; the predicted boxes, class names and scores are drawn by
mmdet's ``DetLocalVisualizer`` (the config's ``visualizer``). ``--save-pred`` writes
every prediction (no threshold), in the original image's pixels, as JSON:
``{"a.png": {"bboxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}}``,
and ``"<stem>#<frame index>"`` for a video's frames.

The model is built by mmdet's ``init_detector``: our configs set
``default_scope = 'mmdeform'``, so mmdet's API builds mmdeform's models, and the
checkpoint is read by mmdeform's restricted (non-executing) loader. Each image goes
through the config's test pipeline on its own; ``--batch-size N`` then runs up to N
images at a time through the model, but only images whose preprocessed size is
equal (all the frames of a video): padding a smaller image changes the features at
its border, so a padded batch would not give the detections of one image alone.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import sys
import time
from collections import Counter
from typing import Iterable, Iterator, List, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmdeform.utils.errors import InputError  # noqa: E402

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv')


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return int(text)


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('img', help='an image file, a directory whose images (' +
                   '/'.join(e[1:] for e in IMAGE_EXTENSIONS) + ') are all drawn, or a video ('
                   + '/'.join(e[1:] for e in VIDEO_EXTENSIONS) + ') whose frames are all drawn')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--out-dir', default='outputs/demo', help='where the PNGs or the video go')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='draw only the boxes scoring at least this')
    p.add_argument('--batch-size', type=positive_int, default=1,
                   help='images run through the model together (only images of one '
                        'preprocessed size are batched; the detections are those of batch 1)')
    p.add_argument('--save-pred', metavar='FILE.json',
                   help='write every prediction (unthresholded, original pixels) to this file')
    p.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. model.test_cfg.max_per_img=10')
    return p.parse_args(argv)


def is_video(path: str) -> bool:
    """A file (existing or not) with a video extension."""
    return not osp.isdir(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def list_images(path: str) -> List[str]:
    """The image file itself, or the sorted images directly inside a directory."""
    if osp.isdir(path):
        images = sorted(osp.join(path, f) for f in os.listdir(path)
                        if f.lower().endswith(IMAGE_EXTENSIONS)
                        and osp.isfile(osp.join(path, f)))
        if not images:
            raise FileNotFoundError(f'directory {path!r} holds no image '
                                    f'({", ".join(IMAGE_EXTENSIONS)})')
        return images
    if not osp.isfile(path):
        raise FileNotFoundError(f'image {path!r} does not exist')
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise InputError(f'{path!r} is neither an image ({", ".join(IMAGE_EXTENSIONS)}) nor '
                         f'a video ({", ".join(VIDEO_EXTENSIONS)}), going by its extension')
    return [path]


def output_names(images: List[str]) -> List[str]:
    """``<stem>.png`` for each input; ``<stem>_<ext>.png`` where two inputs share a stem."""
    stems = [osp.splitext(osp.basename(p))[0] for p in images]
    counts = Counter(stems)
    names = []
    for path, stem in zip(images, stems):
        ext = osp.splitext(path)[1].lstrip('.').lower()
        names.append(f'{stem}.png' if counts[stem] == 1 else f'{stem}_{ext}.png')
    return names


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null: FFmpeg logs its complaints about a file that is not
    a video there, around the one-line error the tool reports."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_video(path: str):
    """``(capture, fps, frame count or 0 if unknown, frames)``; ``frames`` yields BGR arrays."""
    import cv2
    if not osp.isfile(path):
        raise FileNotFoundError(f'video {path!r} does not exist')
    with quiet_stderr():
        capture = cv2.VideoCapture(path)
        ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        raise InputError(f'video {path!r} cannot be opened or holds no frame that OpenCV '
                         f'decodes')

    def frames():
        yield first
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame

    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)  # -1, 0 or NaN where the stream hides it
    return capture, capture.get(cv2.CAP_PROP_FPS), int(count) if count > 0 else 0, frames()


def build_pipelines(cfg):
    """The config's test pipeline for image files, and the same for arrays (video frames)."""
    import copy

    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    steps = get_test_pipeline_cfg(cfg)
    from_array = copy.deepcopy(steps)
    from_array[0].type = 'mmdet.LoadImageFromNDArray'
    return Compose(steps), Compose(from_array)


def batched_predictions(model, pipeline, items: Iterable[Tuple[object, dict]],
                        batch_size: int) -> Iterator[Tuple[object, object]]:
    """``(tag, DetDataSample)`` for each ``(tag, pipeline input)``.

    Each image goes through ``pipeline`` alone; images are then grouped by their
    preprocessed size (C, H, W), and a group is run through the model when it holds
    ``batch_size`` images, the remaining groups at the end: one group is never padded,
    so each image gets the detections it gets alone. Within a size the order is kept.
    """
    import torch
    groups = {}

    def run(group):
        data = dict(inputs=[d['inputs'] for _, d in group],
                    data_samples=[d['data_samples'] for _, d in group])
        with torch.no_grad():
            results = model.test_step(data)
        return [(tag, result) for (tag, _), result in zip(group, results)]

    for tag, raw in items:
        data = pipeline(raw)
        shape = tuple(data['inputs'].shape)
        groups.setdefault(shape, []).append((tag, data))
        if len(groups[shape]) == batch_size:
            yield from run(groups.pop(shape))
    for group in groups.values():
        yield from run(group)


def prediction_dict(result) -> dict:
    """Every prediction of a DetDataSample: pixel xyxy boxes of the original image."""
    pred = result.pred_instances
    return dict(bboxes=pred.bboxes.tolist(), scores=pred.scores.tolist(),
                labels=pred.labels.tolist())


def build_visualizer(model):
    """The config's visualiser (mmdet's ``DetLocalVisualizer`` in ours), without
    storage backends: the images are written with ``out_file``."""
    from mmdet.registry import VISUALIZERS
    cfg = dict(model.cfg.get('visualizer', dict(type='DetLocalVisualizer')))
    cfg.update(name='image_demo', vis_backends=None, save_dir=None)
    visualizer = VISUALIZERS.build(cfg)
    visualizer.dataset_meta = model.dataset_meta
    return visualizer


def draw_images(model, visualizer, images, args, bar, predictions):
    import mmcv
    pipeline, _ = build_pipelines(model.cfg)
    items = ((i, dict(img_path=path, img_id=0)) for i, path in enumerate(images))
    names = output_names(images)
    for i, result in batched_predictions(model, pipeline, items, args.batch_size):
        image = mmcv.imread(images[i], channel_order='rgb')
        visualizer.add_datasample(names[i], image, data_sample=result, draw_gt=False,
                                  show=False, out_file=osp.join(args.out_dir, names[i]),
                                  pred_score_thr=args.score_thr)
        predictions[osp.basename(images[i])] = prediction_dict(result)
        bar.update()
    return len(images)


def draw_video(model, visualizer, video, args, bar, predictions):
    """Every frame detected and drawn into ``OUT_DIR/<stem>.mp4``. The frames of a video
    share one size, hence one group of :func:`batched_predictions`: they come back in order."""
    import cv2
    capture, fps, frames, out_file = video
    _, pipeline = build_pipelines(model.cfg)
    stem = osp.splitext(osp.basename(args.img))[0]
    items = (((i, frame), dict(img=frame, img_id=0)) for i, frame in enumerate(frames))
    writer, count = None, 0
    try:
        for (i, frame), result in batched_predictions(model, pipeline, items, args.batch_size):
            visualizer.add_datasample(f'{stem}#{i}', frame[..., ::-1], data_sample=result,
                                      draw_gt=False, show=False, pred_score_thr=args.score_thr)
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(out_file, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                                         (width, height))
                if not writer.isOpened():
                    raise InputError(f'OpenCV cannot write an mp4v video to {out_file!r}')
            writer.write(cv2.cvtColor(visualizer.get_image(), cv2.COLOR_RGB2BGR))
            predictions[f'{stem}#{i}'] = prediction_dict(result)
            count += 1
            bar.update()
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return count


def main(argv=None):
    args = parse_args(argv)
    video = None
    if is_video(args.img):
        capture, fps, num_frames, frames = open_video(args.img)
        out = osp.join(args.out_dir, osp.splitext(osp.basename(args.img))[0] + '.mp4')
        if osp.realpath(out) == osp.realpath(args.img):
            raise InputError(f'the output video {out!r} would overwrite the input')
        # a stream that does not give its rate (OpenCV says 0 or NaN) is written at 25 fps
        video = capture, fps if fps > 0 else 25.0, frames, out
    else:
        images = list_images(args.img)
        out = args.out_dir
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file {path!r} does not exist')

    from mmdet.apis import init_detector
    from mmengine.utils import ProgressBar

    from mmdeform.utils import register_all_modules
    register_all_modules()

    model = init_detector(args.config, args.checkpoint, device=args.device,
                          cfg_options=args.cfg_options)
    visualizer = build_visualizer(model)
    os.makedirs(args.out_dir, exist_ok=True)
    predictions = {}
    start = time.perf_counter()  # inference and drawing, not the model's loading
    if video is None:
        unit = 'image'
        count = draw_images(model, visualizer, images, args, ProgressBar(len(images)),
                            predictions)
        # the input order (groups of one size may finish before an earlier image's)
        predictions = {osp.basename(p): predictions[osp.basename(p)] for p in images}
    else:
        unit = 'frame'
        count = draw_video(model, visualizer, video, args, ProgressBar(num_frames), predictions)
    seconds = time.perf_counter() - start
    print(f'\nProcessed {count} {unit}(s) in {seconds:.1f} s: {count / seconds:.2f} {unit}s/s '
          f'(batch size {args.batch_size})')
    print(f'Wrote {count} {unit}(s) with predictions (score >= {args.score_thr}) '
          f'to {osp.abspath(out)}')
    if args.save_pred:
        os.makedirs(osp.dirname(osp.abspath(args.save_pred)), exist_ok=True)
        with open(args.save_pred, 'w') as f:
            json.dump(predictions, f)
        print(f'Wrote every prediction (no threshold, pixels of the input) to {args.save_pred}')


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
