"""RT-DETRv2's 'discrete' deformable attention: each sampling point reads one cell."""
import torch
from torch import Tensor


def discrete_deformable_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                             sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention with nearest-cell instead of bilinear sampling.

    A location ``(x, y)`` in [0, 1] of level ``(H, W)`` reads the cell
    ``(clamp(floor(x W + 0.5), 0, W - 1), clamp(floor(y H + 0.5), 0, H - 1))``, as the
    official ``method='discrete'`` (its int64 cast truncates, which differs from floor
    only below zero, where both clamp to 0). The official clamps both coordinates to
    ``H - 1`` (its "FIX ME? for rectangle input"); we clamp x to ``W - 1``, which is the
    same on square maps. There is no gradient to the locations, only to the value and
    the weights.

    Args:
        value: ``(B, Nv, M, D)`` the flattened levels, per head.
        spatial_shapes: ``(L, 2)`` int64 ``(H, W)``; level_start_index: ``(L,)``.
        sampling_locations: ``(B, Nq, M, L, K, 2)`` normalised ``(x, y)``.
        attention_weights: ``(B, Nq, M, L, K)``.

    Returns:
        ``(B, Nq, M * D)``.
    """
    b, nv, m, d = value.shape
    nq, lv, k = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    h = spatial_shapes[:, 0].view(lv, 1)
    w = spatial_shapes[:, 1].view(lv, 1)
    x = (sampling_locations[..., 0] * w + 0.5).floor().long()
    y = (sampling_locations[..., 1] * h + 0.5).floor().long()
    x = torch.minimum(x.clamp(min=0), w - 1)
    y = torch.minimum(y.clamp(min=0), h - 1)
    index = level_start_index.view(lv, 1) + y * w + x  # (B, Nq, M, L, K)
    index = index.permute(0, 2, 1, 3, 4).reshape(b, m, nq * lv * k, 1).expand(-1, -1, -1, d)
    sampled = torch.gather(value.transpose(1, 2), 2, index).view(b, m, nq, lv * k, d)
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(b, m, nq, 1, lv * k)
    out = (weights.to(sampled.dtype) @ sampled).view(b, m, nq, d)
    return out.transpose(1, 2).reshape(b, nq, m * d)
