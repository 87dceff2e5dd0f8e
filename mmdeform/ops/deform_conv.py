"""Modulated deformable convolution (DCNv2) on CUDA without mmcv's CUDA ops.

mmdet's ResNet builds ``dcn=dict(type='DCNv2', ...)`` through mmcv's ``build_conv_layer``,
which looks the name up in the current scope first: under ``mmdeform`` it finds
:class:`ModulatedDeformConv2dPack` here, mmcv's layer with the same parameters and
checkpoint layout. On the CPU, and on CUDA where mmcv was compiled with CUDA, it runs
mmcv's op unchanged. On CUDA with the CPU-only mmcv that ``tools/install.sh`` builds, it
runs ``torchvision.ops.deform_conv2d``, compiled for CUDA in torchvision's wheels.

Both ops take the offsets as ``(N, 2 * deform_groups * kh * kw, H_out, W_out)``, ``(dy, dx)``
interleaved per kernel tap, and the modulation as ``(N, deform_groups * kh * kw, H_out,
W_out)`` multiplying each tap's bilinear sample (zero outside the image);
``tests/test_ops/test_deform_conv.py`` checks the two against each other.
"""
import torch
from mmcv.ops.modulated_deform_conv import \
    ModulatedDeformConv2dPack as MMCVModulatedDeformConv2dPack
from torch import Tensor
from torchvision.ops import deform_conv2d

from mmdeform.registry import MODELS
from .ms_deform_attn import _compiling, exporting, mmcv_cuda_op_available


def uses_torchvision(x: Tensor) -> bool:
    """Whether a DCNv2 layer runs torchvision's op on ``x``: CUDA tensors where mmcv has no
    CUDA op, and any tensor while ``torch.compile`` or ``torch.export`` traces: torchvision's
    op is a registered operator with a fake kernel (and an ONNX translation, ``DeformConv``),
    where mmcv's autograd Function would break the graph."""
    return exporting() or _compiling() or (x.is_cuda and not mmcv_cuda_op_available())


def modulated_deform_conv2d_torchvision(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
                                        bias, stride, padding, dilation) -> Tensor:
    """mmcv's ``modulated_deform_conv2d`` by torchvision. The conv groups follow from
    ``weight`` (``C_in / weight.shape[1]``) and the deform groups from ``offset``'s
    channels, as in mmcv's layer, so neither is passed."""
    return deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)


@MODELS.register_module('DCNv2')
class ModulatedDeformConv2dPack(MMCVModulatedDeformConv2dPack):
    """mmcv's ``DCNv2`` layer that runs torchvision's op where mmcv's has no CUDA kernel."""

    def forward(self, x: Tensor) -> Tensor:
        if not uses_torchvision(x):
            return super().forward(x)
        # mmcv's split of the offset conv's 3 * deform_groups * kh * kw channels: the first
        # two thirds are the offsets, the last third the mask logits
        o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
        return modulated_deform_conv2d_torchvision(x, torch.cat((o1, o2), dim=1), mask.sigmoid(),
                                                   self.weight, self.bias, self.stride,
                                                   self.padding, self.dilation)
