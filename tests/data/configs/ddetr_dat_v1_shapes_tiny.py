# Deformable DETR (refine, two-stage) on a narrow CVPR-2022 DAT (window, shifted-window
# and deformable blocks; 192 x 192 images need padded windows from stage 2 on) for the
# end-to-end test: 2 iterations, no workers, with activation checkpointing.
_base_ = './ddetr_shapes_tiny.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DAT',
        arch=dict(version=1, dims=(16, 32, 64, 128), heads=(1, 2, 4, 8), groups=(1, 1, 2, 4),
                  specs=(['L', 'S'], ['L', 'S'], ['L', 'D'], ['L', 'D']), strides=(1, 1, 1, 1)),
        out_indices=(2, 3),
        drop_path_rate=0.1,
        with_cp=True,
        pretrain_img_size=192),
    neck=dict(in_channels=[64, 128]))
