# DETR-DC5 R101 (44.9 box AP after 500 epochs).
_base_ = './detr_dc5.py'
model = dict(backbone=dict(depth=101,
                           init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
