from .attention import MultiheadAttention
from .detr_layers import DetrDecoder, DetrDecoderLayer, DetrEncoder, DetrEncoderLayer
from .mlp import MLP
from .positional_encoding import SinePositionalEncoding

__all__ = ['MultiheadAttention', 'DetrDecoder', 'DetrDecoderLayer', 'DetrEncoder',
           'DetrEncoderLayer', 'MLP', 'SinePositionalEncoding']
