# ++ two-stage Deformable DETR on a DAT-T++ backbone (ImageNet-1k weights, 83.9 top-1),
# C3-C5 (strides 8, 16, 32; 128, 256, 512 channels) + the stride-2 conv on C5.
# The backbone's optimiser follows the official DAT detection configs (weight decay
# 0.05, none on norms and bias tables; lr x0.1 as Deformable DETR's); drop path 0.3 as
# their 3x DAT-T++ Mask R-CNN; activation checkpointing as they do.
#   tools/dist_train.sh configs/dat/deformable_detr_refine_two_stage_dat_pp_tiny.py 8
_base_ = ['../deformable_detr_refine_two_stage.py', '../_base_/schedules/dat_backbone_optim.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='DAT',
        arch='dat_pp_tiny',
        out_indices=(1, 2, 3),
        drop_path_rate=0.3,
        with_cp=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='https://cloud.tsinghua.edu.cn/f/14c5ddae10b642e68089/?dl=1')),
    neck=dict(in_channels=[128, 256, 512]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=_base_.dat_backbone_custom_keys))
