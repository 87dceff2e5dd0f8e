# ++ two-stage Deformable DETR on a ResNet-50 with modulated deformable convolution
# (DCNv2, mmcv's op) in the 3x3 convs of stages 2-4 (conv3_x to conv5_x).
_base_ = './deformable_detr_refine_two_stage.py'
model = dict(
    backbone=dict(
        dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
