# Deformable DETR R50 (Zhu et al. 2021): ResNet-50 C3-C5 + a stride-2 conv on C5 ->
# 4 levels of 256 channels (1x1 conv + GN(32)) -> 6 + 6 deformable transformer layers
# (8 heads, 4 points per head and level, FFN 1024, dropout 0.1) -> 300 queries.
model = dict(
    type='DeformableDETR',
    num_queries=300,
    num_feature_levels=4,
    with_box_refine=False,
    as_two_stage=False,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[512, 1024, 2048],
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        bias=True,  # the official input projections have a bias before GN (mmdet's do not)
        num_outs=4),
    positional_encoding=dict(num_feats=128, normalize=True, offset=-0.5),
    encoder=dict(num_layers=6, embed_dims=256, num_heads=8, num_points=4,
                 feedforward_channels=1024, dropout=0.1),
    decoder=dict(num_layers=6, embed_dims=256, num_heads=8, num_points=4,
                 feedforward_channels=1024, dropout=0.1),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=80,
        embed_dims=256,
        loss_cls=dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=2.0),
        loss_bbox=dict(type='mmdet.L1Loss', loss_weight=5.0),
        loss_iou=dict(type='mmdet.GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
            ])),
    test_cfg=dict(max_per_img=100))
