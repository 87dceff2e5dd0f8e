from .dat import DAT
from .dilated_resnet import DilatedResNet
from .presnet import PResNet

__all__ = ['DAT', 'DilatedResNet', 'PResNet']
