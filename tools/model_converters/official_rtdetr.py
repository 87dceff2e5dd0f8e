"""Convert an official RT-DETR (v1) or RT-DETRv2 checkpoint (lyuwenyu/RT-DETR).

    python tools/model_converters/official_rtdetr.py SRC DST

SRC is an official file (e.g. ``rtdetrv2_r18vd_120e_coco_rerun_48.1.pth`` or
``rtdetr_r50vd_6x_coco_from_paddle.pth``), read with the restricted unpickler.
The EMA weights (``ema.module``) are converted when the file has them, the
``model`` entry otherwise; the v1 and v2 name layouts are both read. The
buffers that mmdeform recomputes (v2's ``decoder.anchors``,
``decoder.valid_mask``, ``cross_attn.num_points_scale``) are dropped with a
note; any other key that has no place in mmdeform is an error. Load DST with
the matching config of configs/rtdetr/ (docs/model_zoo.md lists them).
"""
import argparse

from mmdeform.converters import convert_official_rtdetr, run_converter
from mmdeform.utils.errors import run_tool_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth with "ema"/"module" or "model")')
    parser.add_argument('dst', help='where to write the mmdeform checkpoint')
    args = parser.parse_args(argv)
    run_converter(convert_official_rtdetr, args.src, args.dst)


if __name__ == '__main__':
    run_tool_main(main)
