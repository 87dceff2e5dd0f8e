"""Convert an official Deformable-DETR checkpoint (fundamentalvision/Deformable-DETR).

    python tools/model_converters/official_deformable_detr.py SRC DST

All five official variants (single scale, single scale DC5, multi-scale,
+ iterative box refinement, ++ two-stage) are recognised from the file. The
91 COCO class rows become the 80 of mmdet's CocoDataset; the two-stage
proposal branch keeps its objectness row first. Load the result with the
matching config (configs/deformable_detr*.py).
"""
import argparse

from mmdeform.converters import convert_official_deformable_detr, run_converter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth, with a "model" entry)')
    parser.add_argument('dst', help='where to write the mmdeform checkpoint')
    args = parser.parse_args(argv)
    run_converter(convert_official_deformable_detr, args.src, args.dst)


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
