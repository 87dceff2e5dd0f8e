# DETR-DC5 R50: the last ResNet stage keeps stride 16 with dilation 2
# (torchvision's replace_stride_with_dilation: the stage's first block is not dilated).
_base_ = './detr.py'
model = dict(backbone=dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), contract_dilation=True))
