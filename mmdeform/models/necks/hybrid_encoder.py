"""RT-DETR's hybrid encoder (Zhao et al., CVPR 2024, Sec. 4.2): attention-based
intra-scale feature interaction (AIFI) on S5, then CNN-based cross-scale feature
fusion (CCFM) of S3-S5, a top-down FPN and a bottom-up PAN of CSPRep blocks."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer
from torch import Tensor, nn

from mmdeform.registry import MODELS
from ..layers.detr_layers import DetrEncoder

BN = dict(type='BN')


def sincos_embedding_2d(h: int, w: int, dims: int, temperature: float = 10000.0,
                        device=None) -> Tensor:
    """``(h * w, dims)`` sine-cosine positions of an ``h x w`` map flattened row by row.

    Row ``k`` is ``[sin(a w_i), cos(a w_i), sin(b w_i), cos(b w_i)]`` with
    ``w_i = temperature^(-i / (dims / 4))``, integer ``a = k // h`` and ``b = k % h``:
    the official code builds ``meshgrid(arange(w), arange(h), indexing='ij')`` and
    flattens it, which pairs cell ``k`` with ``(k // h, k % h)``. On a square map the
    first half therefore encodes the row ``y`` and the second the column ``x``; on
    other maps neither, and we keep that so that trained weights see what they learnt.
    """
    if dims % 4:
        raise ValueError(f'sincos_embedding_2d: dims ({dims}) must be divisible by 4')
    quarter = dims // 4
    omega = 1.0 / temperature**(torch.arange(quarter, dtype=torch.float32, device=device) /
                                quarter)
    # (k // h, k % h) for k < h * w, as a (w, h) grid flattened: no division by the
    # symbolic h, which ONNX export cannot translate
    a = torch.arange(w, dtype=torch.float32, device=device)[:, None].expand(w, h).reshape(-1)
    b = torch.arange(h, dtype=torch.float32, device=device)[None, :].expand(w, h).reshape(-1)
    a, b = a[:, None] * omega, b[:, None] * omega
    return torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], 1)


class RepVGGBlock(nn.Module):
    """``act(BN(conv3x3(x)) + BN(conv1x1(x)))`` (no identity branch).

    :meth:`switch_to_deploy` folds both branches and their BN statistics into one
    3x3 conv with bias (``self.conv``), exact up to rounding, and drops the branches.
    """

    def __init__(self, channels: int, act_cfg: dict = dict(type='SiLU')) -> None:
        super().__init__()
        self.conv1 = ConvModule(channels, channels, 3, padding=1, norm_cfg=BN, act_cfg=None)
        self.conv2 = ConvModule(channels, channels, 1, norm_cfg=BN, act_cfg=None)
        self.act = build_activation_layer(act_cfg)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, 'conv'):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @staticmethod
    def _fold(branch: ConvModule) -> Tuple[Tensor, Tensor]:
        """The kernel and bias of ``BN(conv(x))`` in evaluation mode."""
        bn = branch.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        return branch.conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if hasattr(self, 'conv'):
            return
        k3, b3 = self._fold(self.conv1)
        k1, b1 = self._fold(self.conv2)
        channels = k3.shape[0]
        self.conv = nn.Conv2d(channels, k3.shape[1], 3, padding=1).to(k3)
        self.conv.weight.copy_(k3 + F.pad(k1, [1, 1, 1, 1]))
        self.conv.bias.copy_(b3 + b1)
        del self.conv1, self.conv2


class CSPRepLayer(nn.Module):
    """``conv3(blocks(conv1(x)) + conv2(x))``: two 1x1 ConvBN-act to ``hidden``, one of
    them through ``num_blocks`` :class:`RepVGGBlock`; ``conv3`` is a 1x1 ConvBN-act to
    ``out_channels``, or the identity when ``hidden == out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3,
                 expansion: float = 1.0, act_cfg: dict = dict(type='SiLU')) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvModule(in_channels, hidden, 1, norm_cfg=BN, act_cfg=act_cfg)
        self.conv2 = ConvModule(in_channels, hidden, 1, norm_cfg=BN, act_cfg=act_cfg)
        self.blocks = nn.Sequential(*(RepVGGBlock(hidden, act_cfg) for _ in range(num_blocks)))
        self.conv3 = (ConvModule(hidden, out_channels, 1, norm_cfg=BN, act_cfg=act_cfg)
                      if hidden != out_channels else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.blocks(self.conv1(x)) + self.conv2(x))


@MODELS.register_module()
class HybridEncoder(nn.Module):
    """AIFI + CCFM over the backbone's S3-S5 (strides 8, 16, 32).

    1. ``input_proj``: a 1x1 ConvBN per level to ``hidden_dim``.
    2. AIFI: on the levels in ``use_encoder_idx`` (S5), ``num_encoder_layers``
       post-norm transformer layers (:class:`DetrEncoderLayer`, positions from
       :func:`sincos_embedding_2d` on queries and keys).
    3. CCFM top-down: from the top, a lateral 1x1 ConvBN-act replaces the
       higher map, is upsampled 2x (nearest) and concatenated with the lower
       map, then a :class:`CSPRepLayer` (``fpn_blocks``). Bottom-up: a 3x3
       stride-2 ConvBN-act of the lower output, concatenated with the lateral'd
       higher map, then a :class:`CSPRepLayer` (``pan_blocks``).

    Padding is not masked (as in the official model): RT-DETR resizes every
    image to the network's input size.

    Args:
        in_channels: backbone channels per level.
        hidden_dim: the encoder width (256; 384 for R101).
        num_heads, feedforward_channels, dropout, ffn_act_cfg: AIFI layer settings.
        use_encoder_idx: the levels AIFI runs on.
        num_encoder_layers: AIFI layers per such level.
        pe_temperature: the position embedding's temperature.
        expansion: CSPRep hidden width over ``hidden_dim``.
        depth_mult: ``round(3 * depth_mult)`` RepVGG blocks per CSPRep layer.
        act_cfg: the CCFM activation.
    """

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), hidden_dim: int = 256,
                 num_heads: int = 8, feedforward_channels: int = 1024, dropout: float = 0.0,
                 ffn_act_cfg: dict = dict(type='GELU'), use_encoder_idx: Sequence[int] = (2, ),
                 num_encoder_layers: int = 1, pe_temperature: float = 10000.0,
                 expansion: float = 1.0, depth_mult: float = 1.0,
                 act_cfg: dict = dict(type='SiLU')) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.pe_temperature = pe_temperature
        self.input_proj = nn.ModuleList(
            ConvModule(c, hidden_dim, 1, norm_cfg=BN, act_cfg=None) for c in in_channels)
        self.encoder = nn.ModuleList(
            DetrEncoder(num_encoder_layers, embed_dims=hidden_dim, num_heads=num_heads,
                        feedforward_channels=feedforward_channels, dropout=dropout,
                        act_cfg=ffn_act_cfg) for _ in self.use_encoder_idx)
        num_fusions = len(in_channels) - 1
        blocks = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList(
            ConvModule(hidden_dim, hidden_dim, 1, norm_cfg=BN, act_cfg=act_cfg)
            for _ in range(num_fusions))
        self.fpn_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion, act_cfg)
            for _ in range(num_fusions))
        self.downsample_convs = nn.ModuleList(
            ConvModule(hidden_dim, hidden_dim, 3, stride=2, padding=1, norm_cfg=BN,
                       act_cfg=act_cfg) for _ in range(num_fusions))
        self.pan_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion, act_cfg)
            for _ in range(num_fusions))

    def aifi(self, x: Tensor, encoder: DetrEncoder) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)`` through the transformer layers."""
        b, c, h, w = x.shape
        pos = sincos_embedding_2d(h, w, c, self.pe_temperature, x.device).to(x.dtype)
        out = encoder(x.flatten(2).transpose(1, 2), pos[None], None)
        # contiguous: inductor 2.14.1 (freezing, symbolic sizes) fails on a convolution of
        # the transposed view ("expected ... stride" in its conv + activation fusion)
        return out.transpose(1, 2).reshape(b, c, h, w).contiguous()

    def forward(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """``len(in_channels)`` maps ``(B, C_l, H_l, W_l)`` -> as many ``(B, hidden_dim, H_l, W_l)``."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f'HybridEncoder: got {len(feats)} feature maps, in_channels has '
                             f'{len(self.in_channels)}')
        proj = [conv(f) for conv, f in zip(self.input_proj, feats)]
        for idx, encoder in zip(self.use_encoder_idx, self.encoder):
            proj[idx] = self.aifi(proj[idx], encoder)

        inner: List[Tensor] = [proj[-1]]  # top-down, highest level first
        for i, idx in enumerate(range(len(proj) - 1, 0, -1)):
            higher = self.lateral_convs[i](inner[0])
            inner[0] = higher
            # nearest 2x (the official scale_factor=2); to the lower map's size, so that
            # inputs that are no multiple of 32 (odd maps) work too
            up = F.interpolate(higher, size=proj[idx - 1].shape[-2:], mode='nearest')
            inner.insert(0, self.fpn_blocks[i](torch.cat([up, proj[idx - 1]], 1)))

        outs = [inner[0]]  # bottom-up
        for i in range(len(proj) - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](torch.cat([down, inner[i + 1]], 1)))
        return tuple(outs)

    def switch_to_deploy(self) -> None:
        """Fuse every RepVGG block (:meth:`RepVGGBlock.switch_to_deploy`)."""
        for m in self.modules():
            if isinstance(m, RepVGGBlock):
                m.switch_to_deploy()
