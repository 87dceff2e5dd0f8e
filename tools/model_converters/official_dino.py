"""Convert an official DINO checkpoint (IDEA-Research/DINO).

    python tools/model_converters/official_dino.py SRC DST

For the R50 4-scale and 5-scale models (checkpoint00{11,23,33}_4scale.pth,
checkpoint00{11,22,31}_5scale.pth). The 91 COCO class rows of every class
head become the 80 of mmdet's CocoDataset; the denoising label embedding keeps
its extra last row. The 96 names of the shared decoder heads hold 8 tensors:
they load into the shared head of configs/dino_4scale.py (or dino_5scale.py).
An ``ema_model`` entry is ignored. Load the result with the matching config.
"""
import argparse

from mmdeform.converters import convert_official_dino, run_converter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth, with a "model" entry)')
    parser.add_argument('dst', help='where to write the mmdeform checkpoint')
    args = parser.parse_args(argv)
    run_converter(convert_official_dino, args.src, args.dst)


if __name__ == '__main__':
    main()
