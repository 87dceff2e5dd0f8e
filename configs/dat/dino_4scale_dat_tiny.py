# DINO 4-scale on the CVPR 2022 DAT-T backbone (ImageNet-1k weights, 82.0 top-1):
# C3-C5 (strides 8, 16, 32; 192, 384, 768 channels) + the stride-2 conv on C5. DAT v1
# has no official detection configs; drop path is its ImageNet value (0.2) and the
# optimiser that of the DAT++ detection configs (weight decay 0.05, none on norms and
# bias tables). Window attention is padded and masked, so any input size works.
#   tools/dist_train.sh configs/dat/dino_4scale_dat_tiny.py 8
_base_ = './dino_4scale_dat_pp_tiny.py'
model = dict(
    backbone=dict(
        arch='dat_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='https://cloud.tsinghua.edu.cn/f/1367349deefc48efa650/?dl=1')),
    neck=dict(in_channels=[192, 384, 768]))
