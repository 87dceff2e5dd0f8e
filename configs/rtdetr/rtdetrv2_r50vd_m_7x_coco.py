# RT-DETRv2-M, ResNet50-vd with CSPRep width 0.5 (51.9 / 69.9 AP / AP50, official): 6
# decoder layers trained, the first 3 evaluated (eval_idx 2); 84 epochs, the strong and
# multi-scale augmentation off after epoch 81.
_base_ = './rtdetrv2_r50vd_6x_coco.py'

model = dict(
    neck=[
        dict(type='HybridEncoder', in_channels=[512, 1024, 2048], hidden_dim=256,
             expansion=0.5),
        dict(type='ChannelMapper', in_channels=[256, 256, 256], kernel_size=1,
             out_channels=256, norm_cfg=dict(type='BN'), act_cfg=None, num_outs=3),
    ],
    decoder=dict(eval_idx=2))

max_epochs = 84
stop_epoch = 81
train_cfg = dict(max_epochs=max_epochs)
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EvalProgressBarHook'),
    {{_base_.ema_hook}},
    dict(type='PipelineSwitchHook', switch_epoch=stop_epoch,
         switch_pipeline={{_base_.final_train_pipeline}}),
    dict(type='BatchAugmentSwitchHook', switch_epoch=stop_epoch),
]
