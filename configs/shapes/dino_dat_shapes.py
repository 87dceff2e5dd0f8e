# DINO on a narrow DAT++ backbone trained from scratch on the built-in shapes dataset
# (the DINO shapes demo, dino_shapes.py, with DAT++ in place of its quarter-width
# ResNet-18). DAT++'s layout at a quarter of DAT-T++'s width: conv stem, 3x3
# downsampling, [N, D] blocks in stages 1-3 and [D, D] in stage 4 (neighbourhood
# attention 7x7, deformable attention with offset strides 8/4/2/1, so 6 x 6 sampled
# keys per group at 192 x 192), channels 16/32/64/128, head dim 16. Stages 3 and 4
# (strides 16, 32) + a stride-2 conv feed the 3-level transformer, as in the ResNet
# demo. The position-bias tables are sized for the 192 x 192 training images.
# Measured on 2 cores with the DINO demo's 12-epoch schedule: 0.635 AP after 12 min 47 s
# of training (0.25 s per iteration; docs/dat.md).
#   bash tools/demo.sh configs/shapes/dino_dat_shapes.py
_base_ = './dino_shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DAT',
        arch=dict(version=2, dims=(16, 32, 64, 128), heads=(1, 2, 4, 8), groups=(1, 1, 2, 4),
                  specs=(['N', 'D'], ['N', 'D'], ['N', 'D'], ['D', 'D']),
                  strides=(8, 4, 2, 1)),
        out_indices=(2, 3),
        drop_path_rate=0.0,
        pretrain_img_size=192,
        init_cfg=None),
    neck=dict(in_channels=[64, 128]))
