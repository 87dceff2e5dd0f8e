# Deformable DETR, single scale (39.4 box AP): the transformer sees C5 only (L = 1).
_base_ = './deformable_detr.py'
model = dict(
    num_feature_levels=1,
    backbone=dict(out_indices=(3, )),
    neck=dict(in_channels=[2048], num_outs=1))
