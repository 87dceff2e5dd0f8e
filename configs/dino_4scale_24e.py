# DINO R50 4-scale, 24 epochs with the lr drop after epoch 20 (50.4 box AP, official).
_base_ = './dino_4scale.py'
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[20], gamma=0.1)
]
