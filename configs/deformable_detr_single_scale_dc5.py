# Deformable DETR, single scale, DC5 (41.5 box AP): C5 at stride 16 with dilation 2,
# its first block undilated as in torchvision.
_base_ = './deformable_detr_single_scale.py'
model = dict(backbone=dict(type='DilatedResNet', strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)))
