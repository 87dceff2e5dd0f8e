# RT-DETRv2-M*, ResNet34-vd (49.9 / 67.5 AP / AP50, official): trained BN, 4 decoder
# layers, CSPRep width 0.5; the backbone at lr 5e-5; no weight decay on norms and biases;
# 120 epochs, the strong and multi-scale augmentation off after epoch 117.
_base_ = './rtdetrv2_r50vd_6x_coco.py'

model = dict(
    backbone=dict(depth=34, frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=False),
    neck=[
        dict(type='HybridEncoder', in_channels=[128, 256, 512], hidden_dim=256, expansion=0.5),
        dict(type='ChannelMapper', in_channels=[256, 256, 256], kernel_size=1,
             out_channels=256, norm_cfg=dict(type='BN'), act_cfg=None, num_outs=3),
    ],
    decoder=dict(num_layers=4))

optim_wrapper = dict(paramwise_cfg=dict(lr_mults={'backbone': 0.5}, bias_decay_mult=0.0))

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
