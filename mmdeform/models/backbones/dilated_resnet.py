"""ResNet with torchvision's ``replace_stride_with_dilation`` semantics (the DC5 variants)."""
from mmdet.models.backbones import ResNet
from mmdet.models.backbones.resnet import Bottleneck

from mmdeform.registry import MODELS


@MODELS.register_module()
class DilatedResNet(ResNet):
    """mmdet's ResNet in which a dilated stage's first block is not dilated.

    torchvision (and so the official DETR-DC5 and Deformable-DETR DC5 models)
    builds a stage whose stride is replaced by dilation ``d`` with its first
    block at the previous dilation (1) and the rest at ``d``; mmdet's ResNet
    dilates every block of the stage. Only bottleneck blocks can be dilated,
    as in torchvision. Arguments are those of :class:`mmdet.models.ResNet`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.block is not Bottleneck and any(d > 1 for d in self.dilations):
            raise ValueError(f'DilatedResNet: dilation needs bottleneck blocks (depth >= 50), '
                             f'got depth {self.depth}')
        for stage, dilation in enumerate(self.dilations[:self.num_stages]):
            if dilation > 1:
                first = getattr(self, self.res_layers[stage])[0]
                first.conv2.dilation = (dilation // 2, ) * 2
                first.conv2.padding = (dilation // 2, ) * 2
