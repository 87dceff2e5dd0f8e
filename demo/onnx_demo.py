"""Detect with an exported mmdeform ONNX file: onnxruntime, numpy and OpenCV only (no torch).

    python demo/onnx_demo.py MODEL.onnx IMG_OR_DIR [--out outputs/onnx_demo]
                             [--score-thr 0.3] [--save-pred PRED.json] [--threads N]

``MODEL.onnx`` comes from ``tools/deployment/pytorch2onnx.py``, whose metadata gives
the preparation of the config's test pipeline, done here as mmdet does it: the image
read by OpenCV (BGR), resized by ``cv2.resize`` (bilinear) to the test scale, keeping
the aspect ratio where the config keeps it (mmcv's ``rescale_size``), the channels
reordered and normalised with the config's mean and std. The boxes come back in the
resized image's pixels and are divided by the resize factors, as ``predict`` does.

Writes ``OUT/<image name>.png`` with the boxes scoring at least ``--score-thr``, and
with ``--save-pred`` every detection in ``demo/image_demo.py``'s JSON layout:
``{"a.png": {"bboxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}}``.
A wrong input (not an image, not an mmdeform export) is reported in one line.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')
REQUIRED_METADATA = ('mmdeform_model', 'mean', 'std', 'bgr_to_rgb', 'test_scale', 'keep_ratio',
                     'classes')


class DemoError(Exception):
    """A wrong input; printed as one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('model', help='an ONNX file written by tools/deployment/pytorch2onnx.py')
    p.add_argument('img', help='an image, or a directory whose images are all detected')
    p.add_argument('--out', default='outputs/onnx_demo', help='where the drawn PNGs go')
    p.add_argument('--score-thr', type=float, default=0.3, help='draw boxes scoring at least this')
    p.add_argument('--save-pred', metavar='FILE.json', help='write every detection to this file')
    p.add_argument('--threads', type=int, default=0,
                   help="onnxruntime's intra-op threads (0: its default)")
    return p.parse_args(argv)


def load_session(path: str, threads: int = 0):
    """``(session, metadata)``; the metadata decoded from JSON."""
    import onnxruntime as ort
    if not osp.isfile(path):
        raise DemoError(f'model file {path!r} does not exist')
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph optimiser's notes are not for users
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DemoError(f'{path!r} is not an ONNX model onnxruntime can load: {first}') from None
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    names = [o.name for o in session.get_outputs()]
    if missing or names != ['boxes', 'scores', 'labels']:
        raise DemoError(f'{path!r} is not an mmdeform detector export (metadata lacks '
                        f'{", ".join(missing) or "nothing"}; outputs {names}, expected boxes, '
                        'scores, labels): export it with tools/deployment/pytorch2onnx.py')
    decoded = {k: (v if k == 'mmdeform_model' else json.loads(v)) for k, v in meta.items()
               if k in REQUIRED_METADATA}
    return session, decoded


def list_images(path: str):
    if osp.isdir(path):
        images = sorted(osp.join(path, f) for f in os.listdir(path)
                        if f.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(path, f)))
        if not images:
            raise DemoError(f'directory {path!r} holds no image ({", ".join(IMAGE_EXTENSIONS)})')
        return images
    if not osp.isfile(path):
        raise DemoError(f'image {path!r} does not exist')
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise DemoError(f'{path!r} is not an image ({", ".join(IMAGE_EXTENSIONS)}), going by '
                        'its extension')
    return [path]


def read_image(path: str):
    import cv2
    logging = getattr(getattr(cv2, 'utils', None), 'logging', None)
    if logging is not None:  # OpenCV's own complaint about a broken file: the error below says it
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DemoError(f'{path!r} cannot be decoded as an image by OpenCV')
    return image


def resized_size(h: int, w: int, scale, keep_ratio: bool):
    """``(new_h, new_w)`` of mmdet's test ``Resize``: ``scale`` is ``(w, h)``; with
    ``keep_ratio`` the largest size within the long and short edges (mmcv's rounding)."""
    if not keep_ratio:
        return int(scale[1]), int(scale[0])
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def preprocess(image, meta):
    """``(1, 3, H, W)`` float32 input and the ``(w, h)`` resize factors."""
    import cv2
    import numpy as np
    h, w = image.shape[:2]
    new_h, new_w = resized_size(h, w, meta['test_scale'], meta['keep_ratio'])
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if meta['bgr_to_rgb']:
        resized = resized[..., ::-1]
    mean = np.asarray(meta['mean'], np.float32)
    std = np.asarray(meta['std'], np.float32)
    x = (resized.astype(np.float32) - mean) / std
    return x.transpose(2, 0, 1)[None].copy(), (new_w / w, new_h / h)


def detect(session, meta, image):
    """Every detection of one BGR image: ``(boxes (K, 4) in its pixels, scores, labels)``."""
    import numpy as np
    x, (w_scale, h_scale) = preprocess(image, meta)
    boxes, scores, labels = session.run(None, {session.get_inputs()[0].name: x})
    boxes = boxes[0] / np.asarray([w_scale, h_scale, w_scale, h_scale], np.float32)
    return boxes, scores[0], labels[0]


def class_color(label: int):
    """A distinct BGR colour per class (hues spread by the golden angle)."""
    import colorsys
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.8, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(image, boxes, scores, labels, classes, score_thr: float):
    import cv2
    canvas = image.copy()
    for box, score, label in zip(boxes, scores, labels):
        if score < score_thr:
            continue
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        color = class_color(int(label))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 2)
        text = f'{classes[int(label)] if int(label) < len(classes) else label}: {score:.2f}'
        cv2.putText(canvas, text, (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1,
                    cv2.LINE_AA)
    return canvas


def main(argv=None):
    args = parse_args(argv)
    images = list_images(args.img)
    session, meta = load_session(args.model, args.threads)
    import cv2
    os.makedirs(args.out, exist_ok=True)
    predictions, start = {}, time.perf_counter()
    for path in images:
        image = read_image(path)
        boxes, scores, labels = detect(session, meta, image)
        name = osp.basename(path)
        predictions[name] = dict(bboxes=boxes.tolist(), scores=scores.tolist(),
                                 labels=labels.tolist())
        out = osp.join(args.out, osp.splitext(name)[0] + '.png')
        cv2.imwrite(out, draw(image, boxes, scores, labels, meta['classes'], args.score_thr))
    seconds = time.perf_counter() - start
    print(f'Processed {len(images)} image(s) in {seconds:.1f} s: {len(images) / seconds:.2f} '
          f'images/s with onnxruntime ({meta["mmdeform_model"]})')
    print(f'Wrote {len(images)} image(s) with detections (score >= {args.score_thr}) to '
          f'{osp.abspath(args.out)}')
    if args.save_pred:
        os.makedirs(osp.dirname(osp.abspath(args.save_pred)), exist_ok=True)
        with open(args.save_pred, 'w') as f:
            json.dump(predictions, f)
        print(f'Wrote every detection (no threshold, pixels of the input) to {args.save_pred}')


if __name__ == '__main__':
    try:
        main()
    except DemoError as e:
        sys.stderr.write(f'error: {e}\n')
        sys.exit(1)
