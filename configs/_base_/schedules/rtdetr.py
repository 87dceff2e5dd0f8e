# RT-DETRv2's optimisation: AdamW (lr 1e-4, betas 0.9/0.999, weight decay 1e-4),
# gradient-norm clipping at 0.1, a linear warm-up over the first 2,000 iterations and a
# constant lr after it (the official MultiStepLR milestone, epoch 1000, is never reached).
# The model configs add the per-model backbone lr and weight-decay groups, the epochs and
# the EMA / augmentation-stop hooks. v2 trains with AMP: add --amp to tools/train.py.
# LrMultOptimWrapperConstructor: paramwise_cfg.lr_mults scale the lr of the parameters
# whose names match and leave norm_decay_mult / bias_decay_mult in force there too.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='LrMultOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2))

max_epochs = 72
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# mmengine's LinearLR gives start + (1 - start) * k / (end - 1) at iteration k: with
# start 1/2000 and end 2000 that is the official (k + 1) / 2000, reaching 1 at k = 1999
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 2000, by_epoch=False, begin=0, end=2000),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
