from .attention import MultiheadAttention
from .deformable_detr_layers import (DeformableDetrDecoder, DeformableDetrDecoderLayer,
                                     DeformableDetrEncoder, DeformableDetrEncoderLayer,
                                     inverse_sigmoid)
from .denoising import CdnQueryGenerator, NoiseDraws
from .detr_layers import DetrDecoder, DetrDecoderLayer, DetrEncoder, DetrEncoderLayer
from .dino_layers import DinoDecoder, box_sine_embedding
from .mlp import MLP
from .msdeform_attn import MSDeformAttn
from .positional_encoding import SinePositionalEncoding

__all__ = ['MultiheadAttention', 'DetrDecoder', 'DetrDecoderLayer', 'DetrEncoder',
           'DetrEncoderLayer', 'DeformableDetrDecoder', 'DeformableDetrDecoderLayer',
           'DeformableDetrEncoder', 'DeformableDetrEncoderLayer', 'inverse_sigmoid', 'MLP',
           'MSDeformAttn', 'SinePositionalEncoding', 'CdnQueryGenerator', 'NoiseDraws',
           'DinoDecoder', 'box_sine_embedding']
