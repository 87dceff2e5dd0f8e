"""Multi-head attention with the identity and positional terms of the DETR family."""
from typing import Optional

from torch import Tensor, nn


class MultiheadAttention(nn.Module):
    """``identity + dropout(MHA(query + query_pos, key + key_pos, value))``.

    Positions are added to queries and keys, never to values. The wrapped
    ``nn.MultiheadAttention`` is called with ``need_weights=False`` so that
    PyTorch may use its fused scaled-dot-product kernel; parameter names
    (``attn.in_proj_weight``, ``attn.out_proj.weight``) match mmcv's wrapper
    and therefore mmdet's checkpoints.

    Args:
        embed_dims: channels ``C``.
        num_heads: attention heads.
        dropout: dropout on the attention weights and on the output.
    """

    def __init__(self, embed_dims: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self,
                query: Tensor,
                key: Optional[Tensor] = None,
                value: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None,
                key_pos: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            query: ``(B, Nq, C)``; also the identity of the residual.
            key: ``(B, Nk, C)``; defaults to ``query`` (self-attention).
            value: ``(B, Nk, C)``; defaults to ``key`` before positions are added.
            query_pos: ``(B, Nq, C)`` or None.
            key_pos: ``(B, Nk, C)``; defaults to ``query_pos`` in self-attention.
            key_padding_mask: ``(B, Nk)`` bool, True where the key is padding.
            attn_mask: ``(Nq, Nk)`` or ``(B * heads, Nq, Nk)``, True where blocked.

        Returns:
            ``(B, Nq, C)``.
        """
        if key is None:
            key = query
            if key_pos is None:
                key_pos = query_pos
        if value is None:
            value = key
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        out = self.attn(q, k, value, key_padding_mask=key_padding_mask,
                        attn_mask=attn_mask, need_weights=False)[0]
        return query + self.proj_drop(out)
