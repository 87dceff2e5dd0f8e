# DINO 4-scale on DAT-S (83.7 top-1); drop path 0.3, its ImageNet value.
_base_ = './dino_4scale_dat_tiny.py'
model = dict(
    backbone=dict(
        arch='dat_small',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://cloud.tsinghua.edu.cn/f/f04b18081e3e4606adb7/?dl=1')))
