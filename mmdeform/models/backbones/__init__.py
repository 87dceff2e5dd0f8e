from .dat import DAT
from .dilated_resnet import DilatedResNet

__all__ = ['DAT', 'DilatedResNet']
