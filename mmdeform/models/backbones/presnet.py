"""RT-DETR's PResNet, variant 'd': mmdet's ResNetV1d plus a stage-1 projection for R18/R34."""
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.models.backbones import ResNetV1d
from mmdet.models.backbones.resnet import BasicBlock
from torch import nn

from mmdeform.registry import MODELS


@MODELS.register_module()
class PResNet(ResNetV1d):
    """ResNet-vd (deep 3x3 stem, average-pool shortcuts) as in RT-DETR.

    mmdet's ``ResNetV1d`` has the same layers as the official PResNet-d for
    R50/R101. For R18/R34 (basic blocks) the official first block of stage 1
    has a projection shortcut (1x1 conv 64 -> 64 + BN) although its input and
    output shapes agree; mmdet has an identity there. ``stage1_projection``
    (default: on for basic blocks) adds it as ``layer1.0.downsample.{1,2}`` (conv,
    BN), named like mmdet's other shortcuts.

    Frozen BN is mmdet's: ``norm_cfg=dict(type='BN', requires_grad=False)`` and
    ``norm_eval=True`` keep the affine values as parameters that do not train,
    where the official ``FrozenBatchNorm2d`` holds them as buffers (so our
    parameter count of R50/R101 is higher by exactly those values).

    Args:
        stage1_projection: add the stage-1 projection shortcut; None: for basic
            blocks only.
        Others: see :class:`mmdet.models.backbones.ResNet`.
    """

    def __init__(self, *args, stage1_projection=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if stage1_projection is None:
            stage1_projection = self.block is BasicBlock
        first = self.layer1[0]
        if stage1_projection and first.downsample is None:
            channels = self.base_channels * self.block.expansion
            first.downsample = nn.Sequential(
                nn.Identity(),  # where mmdet's stride-1 shortcuts have AvgPool2d(1, 1)
                build_conv_layer(self.conv_cfg, self.stem_channels, channels, 1, bias=False),
                build_norm_layer(self.norm_cfg, channels)[1])
            self._freeze_stages()  # the new layer is frozen with its stage
