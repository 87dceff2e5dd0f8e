# Deformable DETR with iterative box refinement and two stages on the built-in
# shapes dataset, small enough to train on a 2-core CPU in about a quarter of an
# hour: a half-width ResNet-18 from scratch giving C3-C5 (strides 8-32), a 3 + 3
# layer deformable transformer of width 128, 50 queries from the encoder proposals.
_base_ = [
    '../_base_/models/deformable_detr_r50.py',
    '../_base_/datasets/shapes.py',
    '../_base_/schedules/deformable_detr_50e.py',
    '../_base_/default_runtime.py',
]

model = dict(
    num_queries=50,
    num_feature_levels=3,
    with_box_refine=True,
    as_two_stage=True,
    backbone=dict(
        depth=18,
        base_channels=32,
        out_indices=(2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[128, 256], out_channels=128, num_outs=3,
              norm_cfg=dict(type='GN', num_groups=32)),
    positional_encoding=dict(num_feats=64),
    encoder=dict(num_layers=3, embed_dims=128, num_heads=8, num_points=4,
                 feedforward_channels=512, dropout=0.0),
    decoder=dict(num_layers=3, embed_dims=128, num_heads=8, num_points=4,
                 feedforward_channels=512, dropout=0.0),
    bbox_head=dict(num_classes=4, embed_dims=128),
    test_cfg=dict(max_per_img=50))

# From scratch: the whole network at one lr (the official x0.1 for the backbone
# assumes ImageNet weights); sampling offsets and reference points keep x0.1.
optim_wrapper = dict(
    optimizer=dict(lr=4e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8], gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
