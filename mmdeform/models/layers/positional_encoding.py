"""Sine positional encodings for feature maps and for proposal boxes."""
import math

import torch
from torch import Tensor, nn

from mmdeform.registry import MODELS


@MODELS.register_module()
class SinePositionalEncoding(nn.Module):
    """The 2-d sine/cosine encoding of DETR and Deformable DETR.

    Each position gets ``num_feats`` channels for y followed by ``num_feats``
    for x; channel pair ``2i, 2i+1`` holds ``sin, cos`` of
    ``coord / temperature ** (2i / num_feats)``. With ``normalize`` the
    cumulative coordinates of the unpadded region are scaled to ``(0, scale]``,
    so padding never changes the encoding of valid pixels.

    Args:
        num_feats: channels per axis; the output has ``2 * num_feats``.
        temperature: the wavelength base.
        normalize: scale coordinates by the valid extent of each image.
        scale: the range of normalised coordinates (2*pi in both papers).
        eps: keeps the normalisation finite.
        offset: added to the cumulative coordinate before normalising;
            DETR uses 0, Deformable DETR -0.5 (pixel centres).
    """

    def __init__(self,
                 num_feats: int = 128,
                 temperature: int = 10000,
                 normalize: bool = True,
                 scale: float = 2 * math.pi,
                 eps: float = 1e-6,
                 offset: float = 0.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, mask: Tensor) -> Tensor:
        """
        Args:
            mask: ``(B, H, W)`` bool, True at padded positions.

        Returns:
            ``(B, 2 * num_feats, H, W)`` positional encoding.
        """
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = self._inverse_frequencies(mask.device)
        pos_x = self._interleave_sin_cos(x_embed[..., None] / dim_t)
        pos_y = self._interleave_sin_cos(y_embed[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def _inverse_frequencies(self, device) -> Tensor:
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        return self.temperature**(2 * torch.div(dim_t, 2, rounding_mode='floor') / self.num_feats)

    @staticmethod
    def _interleave_sin_cos(angles: Tensor) -> Tensor:
        """(..., F) angles -> (..., F) with sin on even and cos on odd channels."""
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_feats={self.num_feats}, '
                f'temperature={self.temperature}, normalize={self.normalize}, '
                f'scale={self.scale}, eps={self.eps}, offset={self.offset})')
