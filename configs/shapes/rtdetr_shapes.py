# RT-DETRv2 on the built-in shapes dataset, for the CPU demo next to the Deformable
# DETR and DINO ones (deformable_detr_refine_two_stage_shapes.py, dino_shapes.py).
# RT-DETRv2-R18's design, as narrow as those demos: a quarter-width ResNet-18-vd from
# scratch giving S3-S5 (strides 8, 16, 32), the hybrid encoder at width 64 (AIFI on S5:
# 8 heads, FFN 256; CCFM with CSPRep blocks, expansion 0.5), the decoder's input
# projection, 3 decoder layers of width 64 (8 heads, 4 points per level, FFN 256) with
# 50 queries selected from the memory, look-forward-twice, the varifocal loss and
# contrastive denoising with the DINO demo's budget (16 queries per group set, at most
# 32). Images are resized to 192 x 192 without keeping the ratio, as RT-DETR resizes to
# a square (no padding, so no padding masks).
#   bash tools/demo.sh configs/shapes/rtdetr_shapes.py
_base_ = [
    '../_base_/models/rtdetr_r50vd.py',
    '../_base_/datasets/shapes.py',
    '../_base_/schedules/rtdetr.py',
    '../_base_/default_runtime.py',
]

model = dict(
    num_queries=50,
    dn_cfg=dict(num_dn_queries=16, max_dn_queries=32),
    backbone=dict(depth=18, base_channels=16, frozen_stages=-1,
                  norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False),
    neck=[
        dict(type='HybridEncoder', in_channels=[32, 64, 128], hidden_dim=64, num_heads=8,
             feedforward_channels=256, expansion=0.5),
        dict(type='ChannelMapper', in_channels=[64, 64, 64], kernel_size=1, out_channels=64,
             norm_cfg=dict(type='BN'), act_cfg=None, num_outs=3),
    ],
    positional_encoding=dict(num_feats=32),  # only checked: RT-DETR's levels have no positions
    decoder=dict(num_layers=3, embed_dims=64, num_heads=8, feedforward_channels=256),
    bbox_head=dict(num_classes=4, embed_dims=64),
    test_cfg=dict(max_per_img=50))

img_scale = (192, 192)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# From scratch and short, as the other demos: lr 1e-3 for every parameter after a
# 200-iteration warm-up, divided by 10 for the last epoch; RT-DETR's AdamW, weight
# decay and gradient clipping at 0.1 otherwise. The EMA (evaluated and saved, as in
# RT-DETR) keeps the official form, decay 0.9999 * (1 - exp(-n / 2000)) at update n,
# scaled to this run's 2,250 iterations instead of half a million:
# 0.999 * (1 - exp(-n / 200)), i.e. ExpMomentumEMA with momentum 1e-3 and gamma 200.
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, fused=True),
    paramwise_cfg=dict(lr_mults={}, norm_decay_mult=0.0))
# The same wall time as the DINO demo on 2 cores: an iteration costs about 1.38x
# DINO's (S3 at stride 8 in the CCFM and the decoder, square 192 x 192 images), so
# 9 epochs instead of 12, the lr drop before the last.
max_epochs = 9
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8], gamma=0.1),
]
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=1e-3, gamma=200,
         update_buffers=True, priority=49),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=2, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
