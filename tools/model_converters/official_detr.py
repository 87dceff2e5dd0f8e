"""Convert an official DETR checkpoint (facebookresearch/detr): R50, R101 and their DC5 variants.

    python tools/model_converters/official_detr.py SRC DST

The 91 COCO class rows + no-object become the 80 classes of mmdet's
CocoDataset + no-object. Load the result with configs/detr{,_dc5,_r101,_r101_dc5}.py.
"""
import argparse

from mmdeform.converters import convert_official_detr, run_converter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth, with a "model" entry)')
    parser.add_argument('dst', help='where to write the mmdeform checkpoint')
    args = parser.parse_args(argv)
    run_converter(convert_official_detr, args.src, args.dst)


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
