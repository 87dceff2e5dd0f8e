# RT-DETRv2-S, ResNet18-vd (48.1 / 65.1 AP / AP50, official): trained BN, 3 decoder
# layers, CSPRep width 0.5, 120 epochs at 640 x 640 only (no multi-scale), the strong
# augmentation off after epoch 117, every parameter at lr 1e-4.
_base_ = './rtdetrv2_r50vd_6x_coco.py'

model = dict(
    data_preprocessor=dict(batch_augments=None),
    backbone=dict(depth=18, frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=False),
    neck=[
        dict(type='HybridEncoder', in_channels=[128, 256, 512], hidden_dim=256, expansion=0.5),
        dict(type='ChannelMapper', in_channels=[256, 256, 256], kernel_size=1,
             out_channels=256, norm_cfg=dict(type='BN'), act_cfg=None, num_outs=3),
    ],
    decoder=dict(num_layers=3))

optim_wrapper = dict(paramwise_cfg=dict(lr_mults={'backbone': 1.0}))

max_epochs = 120
stop_epoch = 117
train_cfg = dict(max_epochs=max_epochs)
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EvalProgressBarHook'),
    {{_base_.ema_hook}},
    dict(type='PipelineSwitchHook', switch_epoch=stop_epoch,
         switch_pipeline={{_base_.final_train_pipeline}}),
    dict(type='BatchAugmentSwitchHook', switch_epoch=stop_epoch),
]
