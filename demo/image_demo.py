"""Draw a detector's predictions on one image or on every image of a directory.

    python demo/image_demo.py IMG_OR_DIR CONFIG CHECKPOINT [--out-dir outputs/demo]
                              [--score-thr 0.3] [--device cpu] [--cfg-options K=V ...]

Writes one PNG per input, ``OUT_DIR/<input name>.png``, at the input's size,
with the predicted boxes, class names and scores drawn by mmdet's
``DetLocalVisualizer`` (the config's ``visualizer``). Inference is mmdet's
``init_detector`` / ``inference_detector``: our configs set
``default_scope = 'mmdeform'``, so mmdet's API builds mmdeform's models, and the
checkpoint is read by mmdeform's restricted (non-executing) loader.
"""
import argparse
import os
import os.path as osp
import sys
from collections import Counter
from typing import List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('img', help='an image file, or a directory whose images (' +
                   '/'.join(e[1:] for e in IMAGE_EXTENSIONS) + ') are all drawn')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--out-dir', default='outputs/demo', help='where the PNGs are written')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='draw only the boxes scoring at least this')
    p.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. model.test_cfg.max_per_img=10')
    return p.parse_args(argv)


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


def build_visualizer(model):
    """The config's visualiser (mmdet's ``DetLocalVisualizer`` in ours), without
    storage backends: the images are written with ``out_file``."""
    from mmdet.registry import VISUALIZERS
    cfg = dict(model.cfg.get('visualizer', dict(type='DetLocalVisualizer')))
    cfg.update(name='image_demo', vis_backends=None, save_dir=None)
    visualizer = VISUALIZERS.build(cfg)
    visualizer.dataset_meta = model.dataset_meta
    return visualizer


def main(argv=None):
    args = parse_args(argv)
    images = list_images(args.img)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file {path!r} does not exist')

    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmengine.utils import ProgressBar

    from mmdeform.utils import register_all_modules
    register_all_modules()

    model = init_detector(args.config, args.checkpoint, device=args.device,
                          cfg_options=args.cfg_options)
    visualizer = build_visualizer(model)
    os.makedirs(args.out_dir, exist_ok=True)
    bar = ProgressBar(len(images))
    for path, name in zip(images, output_names(images)):
        result = inference_detector(model, path)
        image = mmcv.imread(path, channel_order='rgb')
        visualizer.add_datasample(name, image, data_sample=result, draw_gt=False, show=False,
                                  out_file=osp.join(args.out_dir, name),
                                  pred_score_thr=args.score_thr)
        bar.update()
    print(f'\nWrote {len(images)} image(s) with predictions (score >= {args.score_thr}) '
          f'to {osp.abspath(args.out_dir)}')


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
