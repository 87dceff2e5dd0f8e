# DETR R50 (Carion et al. 2020): ResNet-50 C5 -> 1x1 conv to 256 -> 6 + 6 post-norm
# transformer layers (8 heads, FFN 2048, dropout 0.1) -> 100 queries.
model = dict(
    type='DETR',
    num_queries=100,
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
        out_indices=(3, ),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[2048],
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=None,
        num_outs=1),
    positional_encoding=dict(num_feats=128, normalize=True, offset=0.0),
    encoder=dict(num_layers=6, embed_dims=256, num_heads=8, feedforward_channels=2048,
                 dropout=0.1),
    decoder=dict(num_layers=6, embed_dims=256, num_heads=8, feedforward_channels=2048,
                 dropout=0.1),
    bbox_head=dict(
        type='DETRHead',
        num_classes=80,
        embed_dims=256,
        bg_cls_weight=0.1,
        loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='mmdet.L1Loss', loss_weight=5.0),
        loss_iou=dict(type='mmdet.GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='ClassificationCost', weight=1.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
            ])),
    test_cfg=dict(max_per_img=100))
