# DINO 4-scale on DAT-S++ (84.6 top-1); drop path 0.5 as the official 3x DAT-S++ detectors.
_base_ = './dino_4scale_dat_pp_tiny.py'
model = dict(
    backbone=dict(
        arch='dat_pp_small',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='https://cloud.tsinghua.edu.cn/f/4c2a76360c964fbd81d5/?dl=1')),
    neck=dict(in_channels=[192, 384, 768]))
