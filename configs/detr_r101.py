# DETR R101 (43.5 box AP after 500 epochs).
_base_ = './detr.py'
model = dict(backbone=dict(depth=101,
                           init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
