"""DAT and DAT++: Vision Transformer with Deformable Attention, as a detection backbone.

``DAT(arch='dat_pp_tiny', out_indices=(0, 1, 2, 3))`` returns the four stage
maps at strides 4, 8, 16, 32, each through a LayerNorm (``norms.i``), for any
input size. The module layout is the official one (LeapLabTHU/DAT), so official
ImageNet checkpoints load with no renames: ``init_cfg=dict(type='Pretrained',
checkpoint=...)`` accepts them directly (see :meth:`DAT.init_weights`).

Architectures (facts from the official configs):

* ``dat_*`` (CVPR 2022): 4x4 patch stem, 2x2 downsampling, plain MLP; stages
  1-2 alternate window (L) and shifted-window (S) attention, stages 3-4 window
  and deformable (D) attention with offset stride 1 and range factor 2.
* ``dat_pp_*`` (DAT++): conv stem, 3x3 downsampling, conv-FFN and a local
  perception unit (DWConv) before each block; neighbourhood (N) and deformable
  attention alternate in stages 1-3, stage 4 is [D, D]; offset strides 8/4/2/1.
"""
from functools import partial
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks.drop import DropPath
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmdeform.ops import exporting
from mmdeform.registry import MODELS
from .dat_blocks import ChannelLayerNorm, ConvMLP, MLP, build_attention


def _v1(dims, depths, heads, groups, drop_path_rate):
    deep = ['L', 'D'] * (depths[2] // 2)
    return dict(version=1, dims=dims, depths=depths, heads=heads, groups=groups,
                specs=(['L', 'S'], ['L', 'S'], deep, ['L', 'D']), strides=(1, 1, 1, 1),
                drop_path_rate=drop_path_rate)


def _pp(dims, heads, groups, drop_path_rate):
    return dict(version=2, dims=dims, depths=(2, 4, 18, 2), heads=heads, groups=groups,
                specs=(['N', 'D'], ['N', 'D'] * 2, ['N', 'D'] * 9, ['D', 'D']),
                strides=(8, 4, 2, 1), drop_path_rate=drop_path_rate)


# drop_path_rate: the official ImageNet-1k value (the detection configs set their own)
ARCH_SETTINGS: Dict[str, dict] = {
    'dat_tiny': _v1((96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24), (1, 1, 3, 6), 0.2),
    'dat_small': _v1((96, 192, 384, 768), (2, 2, 18, 2), (3, 6, 12, 24), (1, 1, 3, 6), 0.3),
    'dat_base': _v1((128, 256, 512, 1024), (2, 2, 18, 2), (4, 8, 16, 32), (1, 1, 4, 8), 0.5),
    'dat_pp_tiny': _pp((64, 128, 256, 512), (2, 4, 8, 16), (1, 2, 4, 8), 0.2),
    'dat_pp_small': _pp((96, 192, 384, 768), (3, 6, 12, 24), (1, 2, 3, 6), 0.4),
    'dat_pp_base': _pp((128, 256, 512, 1024), (4, 8, 16, 32), (2, 4, 8, 16), 0.7),
}
OFFSET_KERNELS = (9, 7, 5, 3)  # the offset network's depthwise kernel per stage


class DATStage(nn.Module):
    """One stage: ``len(specs)`` pre-norm blocks at constant resolution.

    Block d: ``x += LPU_d(x)`` (DAT++), ``x += DropPath(attns[d](layer_norms[2d](x)))``,
    ``x += DropPath(mlps[d](layer_norms[2d+1](x)))``. Lists, not block modules,
    hold the parameters, as in the official checkpoints.
    """

    def __init__(self, dim: int, specs: Sequence[str], drop_paths: Sequence[float],
                 with_cp: bool = False, **attn_kwargs) -> None:
        super().__init__()
        version = attn_kwargs['version']
        self.with_cp = with_cp
        self.layer_norms = nn.ModuleList(ChannelLayerNorm(dim) for _ in range(2 * len(specs)))
        self.attns = nn.ModuleList(build_attention(kind, dim, **attn_kwargs) for kind in specs)
        mlp = MLP if version == 1 else ConvMLP
        self.mlps = nn.ModuleList(mlp(dim) for _ in specs)
        if version == 2:
            self.local_perception_units = nn.ModuleList(
                nn.Conv2d(dim, dim, 3, 1, 1, groups=dim) for _ in specs)
        self.drop_path = nn.ModuleList(DropPath(p) if p > 0 else nn.Identity() for p in drop_paths)

    def block(self, d: int, x: Tensor) -> Tensor:
        if hasattr(self, 'local_perception_units'):
            x = x + self.local_perception_units[d](x)
        x = x + self.drop_path[d](self.attns[d](self.layer_norms[2 * d](x)))
        return x + self.drop_path[d](self.mlps[d](self.layer_norms[2 * d + 1](x)))

    def forward(self, x: Tensor) -> Tensor:
        for d in range(len(self.attns)):
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(partial(self.block, d), x, use_reentrant=False)
            else:
                x = self.block(d, x)
        return x


class PaddedConv(nn.Sequential):
    """Conv + channel LN whose input is first zero-padded (bottom/right) to a multiple
    of the stride, so a non-overlapping (kernel == stride) conv gives ceil(H / s)."""

    def forward(self, x: Tensor) -> Tensor:
        conv = self[0]
        s = conv.stride[0]
        # an export pads always (by 0 where the size divides): its graph serves every size
        if conv.kernel_size[0] == s and (exporting() or x.shape[2] % s or x.shape[3] % s):
            h, w = x.shape[2:]
            x = F.pad(x, (0, (w + s - 1) // s * s - w, 0, (h + s - 1) // s * s - h))
        return super().forward(x)


@MODELS.register_module()
class DAT(BaseModule):
    """DAT / DAT++ backbone.

    Args:
        arch: one of :data:`ARCH_SETTINGS` (``dat_tiny|small|base``, ``dat_pp_tiny|small|base``)
            or a dict with its keys (``version, dims, heads, groups, specs, strides``).
        out_indices: stages whose output is returned, each through ``norms[i]``.
        frozen_stages: -1 freezes nothing; 0 the stem; k > 0 the stem and stages
            0..k-1 with their input projections (``down_projs[k-2]``) and output norms.
        drop_path_rate: stochastic depth, linear from 0 over all blocks; None
            takes the architecture's ImageNet value.
        with_cp: checkpoint each block's activations (saves memory, costs a forward).
        pretrain_img_size: the image size of the pretrained weights; it sizes
            the deformable blocks' position-bias tables (224: 111, 55, 27, 13).
        window: window (L/S) or neighbourhood (N) size.

    Input (B, 3, H, W) -> tuple of (B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))).
    """

    def __init__(self, arch='dat_pp_tiny', out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, drop_path_rate=None, with_cp: bool = False,
                 pretrain_img_size: int = 224, window: int = 7, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise KeyError(f'DAT: unknown arch {arch!r}; expected one of '
                               f'{sorted(ARCH_SETTINGS)}')
            arch = ARCH_SETTINGS[arch]
        missing = {'version', 'dims', 'heads', 'groups', 'specs', 'strides'} - set(arch)
        if missing:
            raise KeyError(f'DAT: arch dict lacks {sorted(missing)}')
        if not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f'DAT: out_indices must be in 0..3, got {out_indices}')
        self.arch = arch
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        version, dims = arch['version'], arch['dims']
        self.num_features = [dims[i] for i in self.out_indices]
        if drop_path_rate is None:
            drop_path_rate = arch.get('drop_path_rate', 0.0)
        depths = [len(s) for s in arch['specs']]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()

        if version == 1:
            self.patch_proj = PaddedConv(nn.Conv2d(3, dims[0], 4, 4), ChannelLayerNorm(dims[0]))
        else:
            self.patch_proj = nn.Sequential(
                nn.Conv2d(3, dims[0] // 2, 3, 2, 1), ChannelLayerNorm(dims[0] // 2), nn.GELU(),
                nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1), ChannelLayerNorm(dims[0]))
        self.stages = nn.ModuleList()
        fmap = pretrain_img_size // 4
        for i in range(4):
            self.stages.append(
                DATStage(dims[i], arch['specs'][i], dpr[sum(depths[:i]):sum(depths[:i + 1])],
                         with_cp=with_cp, num_heads=arch['heads'][i], window=window,
                         groups=arch['groups'][i], stride=arch['strides'][i],
                         kernel=OFFSET_KERNELS[i], table_size=(fmap, fmap), version=version))
            fmap //= 2
        down = (lambda a, b: nn.Conv2d(a, b, 2, 2, bias=False)) if version == 1 else \
            (lambda a, b: nn.Conv2d(a, b, 3, 2, 1, bias=False))
        self.down_projs = nn.ModuleList(
            PaddedConv(down(dims[i], dims[i + 1]), ChannelLayerNorm(dims[i + 1])) for i in range(3))
        self.norms = nn.ModuleList(
            ChannelLayerNorm(dims[i]) if i in self.out_indices else nn.Identity() for i in range(4))
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_proj)
        for i in range(self.frozen_stages):
            frozen += [self.stages[i], self.norms[i]] + ([self.down_projs[i - 1]] if i else [])
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self) -> None:
        """PyTorch's default initialisation (the official ``reset_parameters`` is a
        no-op), or a checkpoint: an mmdeform/mmengine file or an official
        ``{'model': ...}`` file, unwrapped, loaded strictly after dropping the
        classifier and recomputed buffers (see :mod:`mmdeform.converters.dat`)."""
        if self.init_cfg and self.init_cfg.get('type') == 'Pretrained':
            from mmdeform.converters.dat import load_dat_pretrained
            load_dat_pretrained(self, self.init_cfg['checkpoint'])
            self._is_init = True
            return
        super().init_weights()

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, 3, H, W) -> the normalised outputs of the stages in ``out_indices``."""
        x = self.patch_proj(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if i:
                x = self.down_projs[i - 1](x)
            x = stage(x)
            if i in self.out_indices:
                outs.append(self.norms[i](x))
            if i >= max(self.out_indices):
                break
        return tuple(outs)


def stage_sizes(height: int, width: int) -> Tuple[Tuple[int, int], ...]:
    """The (H, W) of the four stage outputs for an input of height x width."""
    # ceil by integer division of non-negative numbers: math.ceil of a float would fix a
    # symbolic size under torch.export, and the ONNX exporter truncates a negative floordiv
    sizes, h, w = [], (height + 3) // 4, (width + 3) // 4
    for _ in range(4):
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return tuple(sizes)
