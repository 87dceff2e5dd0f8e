"""DETR's transformer: post-norm encoder and decoder layers (d=256, 8 heads, FFN 2048)."""
from typing import Optional

import torch
from mmcv.cnn.bricks.transformer import FFN
from torch import Tensor, nn

from .attention import MultiheadAttention


def build_ffn(embed_dims: int, feedforward_channels: int, ffn_drop: float,
              act_cfg: dict = dict(type='ReLU', inplace=True)) -> FFN:
    """``x + drop(fc2(drop(act(fc1(x)))))``: mmcv's FFN with its residual."""
    return FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
               num_fcs=2, ffn_drop=ffn_drop, act_cfg=act_cfg)


class DetrEncoderLayer(nn.Module):
    """Self-attention -> norm -> FFN -> norm (post-norm); ``act_cfg``: the FFN's
    activation (ReLU; GELU in RT-DETR's AIFI)."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_channels: int = 2048, dropout: float = 0.1,
                 act_cfg: dict = dict(type='ReLU', inplace=True)) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.ffn = build_ffn(embed_dims, feedforward_channels, dropout, act_cfg)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(2))

    def forward(self, query: Tensor, query_pos: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
        """``query``/``query_pos``: ``(B, N, C)``; ``key_padding_mask``: ``(B, N)``."""
        query = self.norms[0](self.self_attn(query, query_pos=query_pos,
                                             key_padding_mask=key_padding_mask))
        return self.norms[1](self.ffn(query))


class DetrDecoderLayer(nn.Module):
    """Self-attention -> norm -> cross-attention -> norm -> FFN -> norm."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_channels: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.cross_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.ffn = build_ffn(embed_dims, feedforward_channels, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_mask: Optional[Tensor]) -> Tensor:
        """
        Args:
            query, query_pos: ``(B, Q, C)`` content and positional queries.
            memory, memory_pos: ``(B, N, C)`` encoder output and its positions.
            memory_mask: ``(B, N)`` bool, True at padding, or None.
        """
        query = self.norms[0](self.self_attn(query, query_pos=query_pos))
        query = self.norms[1](self.cross_attn(query, memory, memory, query_pos=query_pos,
                                              key_pos=memory_pos, key_padding_mask=memory_mask))
        return self.norms[2](self.ffn(query))


class DetrEncoder(nn.Module):
    """A stack of :class:`DetrEncoderLayer`; keyword args configure each layer."""

    def __init__(self, num_layers: int = 6, **layer_cfg) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DetrEncoderLayer(**layer_cfg) for _ in range(num_layers))
        self.embed_dims = self.layers[0].embed_dims

    def forward(self, feat: Tensor, feat_pos: Tensor, feat_mask: Optional[Tensor]) -> Tensor:
        """``(B, N, C)`` features -> ``(B, N, C)`` memory."""
        for layer in self.layers:
            feat = layer(feat, feat_pos, feat_mask)
        return feat


class DetrDecoder(nn.Module):
    """A stack of :class:`DetrDecoderLayer` returning every layer's normed output."""

    def __init__(self, num_layers: int = 6, **layer_cfg) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DetrDecoderLayer(**layer_cfg) for _ in range(num_layers))
        self.embed_dims = self.layers[0].embed_dims
        self.post_norm = nn.LayerNorm(self.embed_dims)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_mask: Optional[Tensor]) -> Tensor:
        """Returns ``(num_layers, B, Q, C)``: the final LayerNorm applied to each layer."""
        outputs = []
        for layer in self.layers:
            query = layer(query, query_pos, memory, memory_pos, memory_mask)
            outputs.append(self.post_norm(query))
        return torch.stack(outputs)
