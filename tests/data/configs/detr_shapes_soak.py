# The smallest DETR that trains like a real config, for the kill -9 soak and the
# distributed-equivalence tests: epoch-based, a shuffled sampler, 2 data-loader
# workers, random flips, dropout, validation every 2 epochs, a checkpoint every
# epoch with only the newest kept. Images fit 64 x 64; a ResNet-18 of width 8 up
# to C4 (stride 16, so 4 x 4 cells), a 1 + 1 layer transformer of width 32.
_base_ = '../../../configs/shapes/detr_r18_shapes.py'

img_scale = (64, 64)
model = dict(
    num_queries=10,
    backbone=dict(base_channels=8),
    neck=dict(in_channels=[32], out_channels=32),
    positional_encoding=dict(num_feats=16),
    encoder=dict(num_layers=1, embed_dims=32, num_heads=4, feedforward_channels=64, dropout=0.1),
    decoder=dict(num_layers=1, embed_dims=32, num_heads=4, feedforward_channels=64, dropout=0.1),
    bbox_head=dict(embed_dims=32),
    test_cfg=dict(max_per_img=10))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# persistent workers would carry their random state across epochs, which no
# checkpoint holds: exact resumes need fresh workers each epoch (docs/reliability.md)
train_dataloader = dict(batch_size=4, num_workers=2, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[2], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1, max_keep_ckpts=1),
                     visualization=dict(draw=False))
randomness = dict(seed=0)
# the soak's probe (tests/soak_probe.py): progress reports and slow saves on request
custom_imports = dict(imports=['soak_probe'], allow_failed_imports=False)
custom_hooks = [dict(type='RNGStateHook'), dict(type='SoakProbe')]
