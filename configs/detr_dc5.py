# DETR-DC5 R50 (43.3 box AP after 500 epochs): the last ResNet stage keeps stride 16
# and uses dilation 2, its first block undilated as in torchvision.
_base_ = './detr.py'
model = dict(backbone=dict(type='DilatedResNet', strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)))
