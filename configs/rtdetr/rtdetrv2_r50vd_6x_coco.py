# RT-DETRv2-L, ResNet50-vd (53.4 / 71.6 AP / AP50 on COCO val2017, official): 72 epochs,
# the strong augmentation and the multi-scale training stop after epoch 71.
# The other RT-DETR configs inherit this one and change what differs.
# Total batch 16 = 4 GPUs x 4 images, as the official runs:
#   tools/dist_train.sh configs/rtdetr/rtdetrv2_r50vd_6x_coco.py 4 --amp
_base_ = [
    '../_base_/models/rtdetr_r50vd.py',
    '../_base_/datasets/coco_rtdetr.py',
    '../_base_/schedules/rtdetr.py',
    '../_base_/default_runtime.py',
]

# batch-level multi-scale training: each batch at a random square size in 480-800 (step 32),
# as the official collate function (which picks 640 three times as often, and resizes by
# nearest interpolation where mmdet's BatchSyncRandomResize is bilinear)
model = dict(data_preprocessor=dict(batch_augments=[
    dict(type='BatchSyncRandomResize', random_size_range=(480, 800), interval=1,
         size_divisor=32)
]))

# the backbone at lr 1e-5; no weight decay on any norm layer (the backbone's are frozen)
optim_wrapper = dict(paramwise_cfg=dict(lr_mults={'backbone': 0.1}, norm_decay_mult=0.0))
# all BN layers synchronised across GPUs in distributed training, as the official runs
sync_bn = 'torch'

# EMA of every float parameter and buffer, decay 0.9999 * (1 - exp(-n / 2000)) at update n:
# mmdet's ExpMomentumEMA with momentum 1e-4 weighs the new model by
# 0.9999 * exp(-(1 + s) / 2000) + 1e-4 at its step s = n - 1 (tests/test_models/
# test_rtdetr_configs.py); its first update copies the model where the official keeps
# 0.05% of the initial weights. Validation and checkpoints use the EMA weights.
ema_hook = dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=1e-4, gamma=2000,
                update_buffers=True, priority=49)
stop_epoch = 71  # 0-based: the last epoch trains without the strong and multi-scale augmentation
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EvalProgressBarHook'),
    ema_hook,
    dict(type='PipelineSwitchHook', switch_epoch=stop_epoch,
         switch_pipeline={{_base_.final_train_pipeline}}),
    dict(type='BatchAugmentSwitchHook', switch_epoch=stop_epoch),
]
