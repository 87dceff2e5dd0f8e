# RT-DETRv2-L (Lv et al. 2024; RT-DETR, Zhao et al. CVPR 2024): ResNet50-vd S3-S5 ->
# HybridEncoder (AIFI: 1 transformer layer on S5; CCFM: FPN + PAN of CSPRep blocks),
# 256 channels -> the decoder's input projection (1x1 conv + BN per level) -> 300
# queries selected from the 8,400 anchors of a 640 x 640 input (their memory is the
# content) -> 6 deformable decoder layers (8 heads, 4 points per level, FFN 1024,
# no dropout) with box-MLP positions and look-forward-twice; 100 denoising queries.
# Varifocal loss; one class Linear and box MLP per layer, and one for the proposals.
model = dict(
    type='RTDETR',
    num_queries=300,
    num_feature_levels=3,
    query_selection='memory',
    look_forward_twice=True,
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0, num_dn_queries=100,
                box_eps=1e-5, padding_box='zero'),
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[0.0, 0.0, 0.0],
        std=[255.0, 255.0, 255.0],  # the official /255, RGB, no mean/std
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='PResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=0,  # the stem ('freeze_at: 0')
        norm_cfg=dict(type='BN', requires_grad=False),  # FrozenBatchNorm2d, as parameters
        norm_eval=True,
        style='pytorch',
        init_cfg=None),  # the official ImageNet weights need the RT-DETR converter (issue 18)
    neck=[
        dict(type='HybridEncoder', in_channels=[512, 1024, 2048], hidden_dim=256,
             num_heads=8, feedforward_channels=1024, dropout=0.0, use_encoder_idx=[2],
             num_encoder_layers=1, expansion=1.0, depth_mult=1.0),
        # the decoder's input projection
        dict(type='ChannelMapper', in_channels=[256, 256, 256], kernel_size=1,
             out_channels=256, norm_cfg=dict(type='BN'), act_cfg=None, num_outs=3),
    ],
    decoder=dict(num_layers=6, embed_dims=256, num_heads=8, num_points=[4, 4, 4],
                 feedforward_channels=1024, dropout=0.0, eval_idx=-1,
                 cross_attn_cfg=dict(offset_scale=0.5, sampling='bilinear')),
    bbox_head=dict(
        type='DINOHead',
        num_classes=80,
        embed_dims=256,
        share_pred_layer=False,
        reference_eps=1e-5,
        loss_cls=dict(type='DetrVarifocalLoss', use_sigmoid=True, alpha=0.75, gamma=2.0, loss_weight=1.0),
        loss_bbox=dict(type='mmdet.L1Loss', loss_weight=5.0),
        loss_iou=dict(type='mmdet.GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0, alpha=0.25, gamma=2.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
            ])),
    test_cfg=dict(max_per_img=300))
