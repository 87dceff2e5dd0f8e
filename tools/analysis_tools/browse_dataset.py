"""Draw what the training pipeline feeds the model: images after augmentation
with their ground-truth boxes and class names.

    python tools/analysis_tools/browse_dataset.py CONFIG --output-dir DIR \\
        [--max-images N] [--cfg-options ...]

Builds ``train_dataloader.dataset`` from the config (with its pipeline, so the
random transforms are applied), draws each item with the config's visualizer
(mmdet's ``DetLocalVisualizer``) and the dataset's class names and palette, and
writes ``DIR/<image name>.png``, one per image, at the size of the transformed
image. Items are taken in dataset order, the first ``N`` if ``--max-images``.
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Draw the training pipeline\'s output')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--output-dir', required=True, help='where the PNGs are written')
    parser.add_argument('--max-images', type=int, help='draw only the first N images')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. '
                        'train_dataloader.dataset.data_root=data/shapes/')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config file {args.config!r} does not exist')
    if args.max_images is not None and args.max_images < 1:
        parser.error(f'--max-images must be at least 1, got {args.max_images}')
    return args


def build_config(args):
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if 'dataset' not in cfg.get('train_dataloader', {}):
        raise KeyError(f'{args.config}: no train_dataloader.dataset to browse')
    return cfg


def build_visualizer(cfg):
    from mmdeform.registry import VISUALIZERS
    vis_cfg = dict(cfg.get('visualizer') or dict(type='DetLocalVisualizer'))
    # images go to --output-dir only: no backend writes files of its own
    vis_cfg.update(vis_backends=None, save_dir=None, name='browse_dataset')
    return VISUALIZERS.build(vis_cfg)


def draw_item(visualizer, item: dict, out_file: str) -> None:
    """Draw one pipeline output ``{'inputs': (3, H, W) uint8 BGR, 'data_samples'}``."""
    from mmdet.structures.bbox import BaseBoxes
    image = item['inputs'].permute(1, 2, 0).numpy()[..., ::-1]  # BGR (mmcv) -> RGB
    sample = item['data_samples'].numpy()
    gt = sample.gt_instances
    # the pipeline packs HorizontalBoxes; the visualizer draws plain (N, 4) arrays
    if isinstance(gt.get('bboxes', None), BaseBoxes):
        gt.bboxes = gt.bboxes.tensor
    sample.gt_instances = gt
    visualizer.add_datasample(osp.basename(out_file), image, sample, draw_gt=True,
                              draw_pred=False, show=False, out_file=out_file)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.utils import ProgressBar

    from mmdeform.registry import DATASETS
    from mmdeform.utils import check_dataset_paths, register_all_modules
    register_all_modules()
    cfg = build_config(args)
    check_dataset_paths(cfg, splits=('train_dataloader', ))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    visualizer = build_visualizer(cfg)
    visualizer.dataset_meta = dataset.metainfo
    count = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    progress = ProgressBar(count)
    for index in range(count):
        item = dataset[index]
        name = osp.splitext(osp.basename(item['data_samples'].img_path))[0]
        out_file = osp.join(args.output_dir, f'{name}.png')
        draw_item(visualizer, item, out_file)
        written.append(out_file)
        progress.update()
    print(f'\nWrote {len(written)} image(s) to {args.output_dir}')
    return written


if __name__ == '__main__':
    main()
