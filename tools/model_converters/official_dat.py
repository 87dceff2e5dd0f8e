"""Convert an official DAT / DAT++ ImageNet checkpoint (LeapLabTHU/DAT) to a backbone checkpoint.

    python tools/model_converters/official_dat.py SRC DST

SRC is an official file (``{'model': state_dict, 'config': ..., ...}``, e.g.
``dat_pp_tiny_in1k_224.pth``), read with the restricted unpickler. The
classifier (``cls_norm``, ``cls_head``) is dropped and reported, the buffers
that mmdeform recomputes are dropped, the output norms ``norms.0-3`` are added
as identity LayerNorms, and any key that is not part of a DAT model is an
error. Use DST as ``backbone.init_cfg=dict(type='Pretrained', checkpoint=DST)``
(official files also work there directly).
"""
import argparse

from mmdeform.converters import convert_official_dat, run_converter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth with a "model" entry)')
    parser.add_argument('dst', help='where to write the backbone checkpoint')
    args = parser.parse_args(argv)
    run_converter(convert_official_dat, args.src, args.dst)


if __name__ == '__main__':
    main()
