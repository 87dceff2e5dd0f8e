"""Convert an mmdet 3.x DETR-family checkpoint: ``python tools/model_converters/mmdet_to_mmdeform.py SRC DST``."""
import argparse

from mmdeform.converters import convert_mmdet, run_converter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('src', help='mmdet checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the mmdeform checkpoint')
    args = parser.parse_args(argv)
    run_converter(convert_mmdet, args.src, args.dst)


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
