# DINO 4-scale on DAT-B++ (84.9 top-1); drop path 0.8 as the official 3x DAT-B++
# Cascade Mask R-CNN.
_base_ = './dino_4scale_dat_pp_tiny.py'
model = dict(
    backbone=dict(
        arch='dat_pp_base',
        drop_path_rate=0.8,
        init_cfg=dict(checkpoint='https://cloud.tsinghua.edu.cn/f/8e30492404d348d89f25/?dl=1')),
    neck=dict(in_channels=[256, 512, 1024]))
