from .attention import MultiheadAttention
from .deformable_detr_layers import (DeformableDetrDecoder, DeformableDetrDecoderLayer,
                                     DeformableDetrEncoder, DeformableDetrEncoderLayer,
                                     inverse_sigmoid)
from .detr_layers import DetrDecoder, DetrDecoderLayer, DetrEncoder, DetrEncoderLayer
from .mlp import MLP
from .msdeform_attn import MSDeformAttn
from .positional_encoding import SinePositionalEncoding

__all__ = ['MultiheadAttention', 'DetrDecoder', 'DetrDecoderLayer', 'DetrEncoder',
           'DetrEncoderLayer', 'DeformableDetrDecoder', 'DeformableDetrDecoderLayer',
           'DeformableDetrEncoder', 'DeformableDetrEncoderLayer', 'inverse_sigmoid', 'MLP',
           'MSDeformAttn', 'SinePositionalEncoding']
