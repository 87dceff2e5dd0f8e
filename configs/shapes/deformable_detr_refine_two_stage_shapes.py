# Deformable DETR with iterative box refinement and two stages on the built-in
# shapes dataset, sized to train on a 2-core CPU in under a quarter of an hour
# (the README's `make demo`): a quarter-width ResNet-18 from scratch giving C4 and
# C5 plus a stride-2 conv (strides 16, 32, 64), a 3 + 3 layer deformable
# transformer of width 64 (8 heads, 4 points, FFN 256), 50 queries from the
# encoder proposals. Images are resized to fit 192 x 192.
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
        base_channels=16,
        out_indices=(2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[64, 128], out_channels=64, num_outs=3,
              norm_cfg=dict(type='GN', num_groups=16)),
    positional_encoding=dict(num_feats=32),
    encoder=dict(num_layers=3, embed_dims=64, num_heads=8, num_points=4,
                 feedforward_channels=256, dropout=0.0),
    decoder=dict(num_layers=3, embed_dims=64, num_heads=8, num_points=4,
                 feedforward_channels=256, dropout=0.0),
    bbox_head=dict(num_classes=4, embed_dims=64),
    test_cfg=dict(max_per_img=50))

# From scratch, a small model and a short schedule: lr 1e-3 after a 200-iteration
# warm-up, the whole network at that lr (the official x0.1 for the backbone assumes
# ImageNet weights; sampling offsets and reference points keep x0.1), divided by 10
# for the last 3 epochs. torch's fused AdamW (one kernel for all parameters instead
# of a dozen small ops per parameter) makes an iteration about 4 % shorter on 2 cores.
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, fused=True),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))
max_epochs = 14
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[11], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=2, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
# A fixed seed, so that `make demo` gives the README's numbers (on the CPU our
# deformable-attention kernel is deterministic; the seed fixes the initial weights,
# the data order and the augmentation).
randomness = dict(seed=0)
