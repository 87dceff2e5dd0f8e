# RT-DETR (v1) R18-vd, 3 decoder layers (46.4 / 63.7 AP / AP50 on COCO val2017, official): the model of
# rtdetrv2_r18vd_120e_coco, the v1 recipe: 72 epochs, no warm-up, multi-scale training in
# every iteration and no augmentation stop, no AMP.
_base_ = './rtdetrv2_r18vd_120e_coco.py'

model = dict(
    decoder=dict(num_points=4),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchSyncRandomResize', random_size_range=(480, 800), interval=1,
             size_divisor=32)
    ]))

# the backbone (its norms too) at lr 1e-5; no weight decay on norms and biases
optim_wrapper = dict(paramwise_cfg=dict(lr_mults={'backbone': 0.1}, bias_decay_mult=0.0))

max_epochs = 72
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = []
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EvalProgressBarHook'),
    {{_base_.ema_hook}},
]
