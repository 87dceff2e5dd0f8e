# DETR on the built-in shapes dataset, small enough to train on a CPU in minutes:
# a half-width ResNet-18 up to C4 (stride 16) trained from scratch, a 3 + 3 layer
# transformer of width 128, 20 queries, images resized to at most 192 px.
_base_ = [
    '../_base_/models/detr_r50.py',
    '../_base_/datasets/shapes.py',
    '../_base_/schedules/detr_500e.py',
    '../_base_/default_runtime.py',
]

model = dict(
    num_queries=20,
    backbone=dict(
        depth=18,
        base_channels=32,
        num_stages=3,
        strides=(1, 2, 2),
        dilations=(1, 1, 1),
        out_indices=(2, ),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[128], out_channels=128),
    positional_encoding=dict(num_feats=64),
    encoder=dict(num_layers=3, embed_dims=128, num_heads=8, feedforward_channels=512,
                 dropout=0.0),
    decoder=dict(num_layers=3, embed_dims=128, num_heads=8, feedforward_channels=512,
                 dropout=0.0),
    bbox_head=dict(num_classes=4, embed_dims=128),
    test_cfg=dict(max_per_img=20))

# Train from scratch: the whole network at one lr.
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(_delete_=True))
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[10], gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=4))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
