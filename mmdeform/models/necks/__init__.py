from .hybrid_encoder import CSPRepLayer, HybridEncoder, RepVGGBlock, sincos_embedding_2d

__all__ = ['HybridEncoder', 'CSPRepLayer', 'RepVGGBlock', 'sincos_embedding_2d']
