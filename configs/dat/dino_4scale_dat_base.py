# DINO 4-scale on DAT-B (84.0 top-1); drop path 0.5, its ImageNet value.
_base_ = './dino_4scale_dat_tiny.py'
model = dict(
    backbone=dict(
        arch='dat_base',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='https://cloud.tsinghua.edu.cn/f/a8d2a9645d454120b635/?dl=1')),
    neck=dict(in_channels=[256, 512, 1024]))
