# RT-DETR (v1) R101-vd (54.3 / 72.8 AP / AP50 on COCO val2017, official): the model of
# rtdetrv2_r101vd_6x_coco, the v1 recipe: 72 epochs, no warm-up, multi-scale training in
# every iteration and no augmentation stop, no AMP.
_base_ = './rtdetrv2_r101vd_6x_coco.py'

model = dict(
    decoder=dict(num_points=4),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchSyncRandomResize', random_size_range=(480, 800), interval=1,
             size_divisor=32)
    ]))

# the backbone at lr 1e-6 and weight decay on every parameter: the official R101 config
# replaces the groups of the R50 one by this single group
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, lr_mults={'backbone': 0.01}))

max_epochs = 72
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = []
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EvalProgressBarHook'),
    {{_base_.ema_hook}},
]
