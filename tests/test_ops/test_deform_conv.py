"""DCNv2 by torchvision (``mmdeform/ops/deform_conv.py``, the CUDA path without mmcv's
CUDA ops) against mmcv's compiled CPU op, the reference, in float64.

The torchvision path runs on ``MMDEFORM_TEST_DEVICE`` (the CPU by default; CUDA under
tools/gpu_check.sh, where it is the path the DCN backbone takes), mmcv's op on the CPU.
Offsets of 4 px standard deviation put about half of the 3x3 taps' samples wholly out of
the 9 x 10 image (counted), where both read zeros, and many on its border cells.
"""
import pytest
import torch
from helpers import device_under_test
from mmcv.ops import modulated_deform_conv2d
from mmcv.ops.modulated_deform_conv import \
    ModulatedDeformConv2dPack as MMCVModulatedDeformConv2dPack
from mmengine.config import Config

from mmdeform.ops import deform_conv
from mmdeform.ops.deform_conv import ModulatedDeformConv2dPack, modulated_deform_conv2d_torchvision
from test_ms_deform_attn import node_names

DEVICE = device_under_test()
# float64 on both sides: the two ops sum the same terms in other orders, so they differ by
# rounding, about 1e-15 of the largest value (seen: 3e-16); 1e-12 leaves a thousand times
# that, and the mutations below move the outputs by about 1, twelve orders above.
FP64 = dict(rtol=1e-12, atol=1e-12)
# (deform_groups, stride, dilation, conv groups)
CASES = [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (2, 2, 2, 1), (2, 1, 2, 2)]


def make_inputs(deform_groups, stride, dilation, groups, seed=0):
    """x (2, 4, 9, 10), weight (6, 4 / groups, 3, 3), bias, offsets of 4 px std, masks in
    (0, 1); padding = dilation keeps the output size / stride."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 9, 10, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    h, w = ((s + stride - 1) // stride for s in x.shape[-2:])
    offset = 4 * torch.randn(2, 2 * deform_groups * 9, h, w, generator=g, dtype=torch.float64)
    mask = torch.randn(2, deform_groups * 9, h, w, generator=g, dtype=torch.float64).sigmoid()
    return [x, offset, mask, weight, bias], dict(stride=stride, padding=dilation,
                                                 dilation=dilation, groups=groups,
                                                 deform_groups=deform_groups)


def outside_fraction(x, offset, stride, padding, dilation):
    """The fraction of the taps' samples that lie wholly outside the image (bilinear weight
    zero: y <= -1 or y >= H, likewise x), with the offsets read as (dy, dx) pairs."""
    n, c, h_out, w_out = offset.shape
    pairs = offset.view(n, c // 18, 9, 2, h_out, w_out)
    k = torch.arange(3, dtype=torch.float64) * dilation - padding
    ky, kx = torch.meshgrid(k, k, indexing='ij')
    base_y = (torch.arange(h_out) * stride)[:, None] + ky.reshape(9, 1, 1)
    base_x = (torch.arange(w_out) * stride)[None, :] + kx.reshape(9, 1, 1)
    y, xs = base_y + pairs[:, :, :, 0], base_x + pairs[:, :, :, 1]
    height, width = x.shape[-2:]
    return ((y <= -1) | (y >= height) | (xs <= -1) | (xs >= width)).double().mean().item()


def reference_and_torchvision(tensors, args, grad_out):
    """mmcv's op on the CPU and torchvision's on DEVICE: outputs and the gradients of
    (x, offset, mask, weight, bias), all returned on the CPU."""
    ref_in = [t.clone().requires_grad_() for t in tensors]
    ref = modulated_deform_conv2d(*ref_in, args['stride'], args['padding'], args['dilation'],
                                  args['groups'], args['deform_groups'])
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out)
    ours_in = [t.to(DEVICE).requires_grad_() for t in tensors]
    x, offset, mask, weight, bias = ours_in
    ours = modulated_deform_conv2d_torchvision(x, offset, mask, weight, bias, args['stride'],
                                               args['padding'], args['dilation'])
    our_grads = torch.autograd.grad(ours, ours_in, grad_out.to(DEVICE))
    return (ref, ref_grads), (ours.cpu(), [g.cpu() for g in our_grads])


@pytest.mark.parametrize('deform_groups, stride, dilation, groups', CASES)
def test_torchvision_path_matches_mmcv_in_float64(deform_groups, stride, dilation, groups):
    tensors, args = make_inputs(deform_groups, stride, dilation, groups)
    outside = outside_fraction(tensors[0], tensors[1], stride, args['padding'], dilation)
    assert 0.2 < outside < 0.8, outside  # seen: 0.49 to 0.52
    grad_out = torch.randn(2, 6, *tensors[1].shape[-2:], dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    (ref, ref_grads), (ours, our_grads) = reference_and_torchvision(tensors, args, grad_out)
    torch.testing.assert_close(ours, ref, **FP64)
    for name, got, want in zip(('x', 'offset', 'mask', 'weight', 'bias'), our_grads, ref_grads):
        assert want.abs().max() > 0.1, name  # a gradient that is there to compare
        torch.testing.assert_close(got, want, **FP64, msg=lambda m, name=name: f'{name}: {m}')


@pytest.mark.parametrize('mutation', ['swap dy and dx', 'mask taps reversed'])
def test_layout_mutations_are_caught(mutation):
    """The ordering the two ops share, broken on the torchvision side: the outputs move by
    about their own size, far outside FP64."""
    tensors, args = make_inputs(2, 1, 1, 1)
    x, offset, mask, weight, bias = tensors
    if mutation == 'swap dy and dx':
        offset = offset.view(2, 18, 2, 9, 10).flip(2).reshape(2, 36, 9, 10)
    else:
        mask = mask.view(2, 2, 9, 9, 10).flip(2).reshape(2, 18, 9, 10)
    ref = modulated_deform_conv2d(*tensors, 1, 1, 1, 1, 2)
    mutated = modulated_deform_conv2d_torchvision(x, offset, mask, weight, bias, 1, 1, 1)
    assert (mutated - ref).abs().max() > 0.1 * ref.abs().max()


def _pair_of_layers(deform_groups=2, stride=1):
    """mmcv's DCNv2 layer and ours with the same weights, the offset conv made non-zero
    (it starts at zero, which would sample the plain 3x3 grid)."""
    torch.manual_seed(0)
    kwargs = dict(kernel_size=3, stride=stride, padding=1, deform_groups=deform_groups)
    theirs = MMCVModulatedDeformConv2dPack(4, 6, **kwargs).double()
    with torch.no_grad():
        theirs.conv_offset.weight.normal_(std=0.5)
        theirs.conv_offset.bias.normal_()
    ours = ModulatedDeformConv2dPack(4, 6, **kwargs).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


@pytest.mark.parametrize('stride', [1, 2])
def test_layer_runs_torchvision_where_mmcv_has_no_cuda_op(monkeypatch, stride):
    """The layer on DEVICE, made to take the torchvision path (as it does on CUDA with
    tools/install.sh's mmcv), against mmcv's layer on the CPU: outputs and the gradients of
    the input and of every parameter, the offset conv's included."""
    theirs, ours = _pair_of_layers(stride=stride)
    ours.to(DEVICE)
    monkeypatch.setattr(deform_conv, 'uses_torchvision', lambda x: True)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    x_ref, x_ours = x.clone().requires_grad_(), x.to(DEVICE).requires_grad_()
    ref, out = theirs(x_ref), ours(x_ours)
    assert 'ModulatedDeformConv2dFunctionBackward' not in node_names(out)
    torch.testing.assert_close(out.cpu(), ref, **FP64)
    ref.square().sum().backward()
    out.square().sum().backward()
    torch.testing.assert_close(x_ours.grad.cpu(), x_ref.grad, **FP64)
    ref_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), ref_params[name].grad, **FP64,
                                   msg=lambda m, name=name: f'{name}: {m}')


def test_layer_keeps_mmcvs_op_on_the_cpu():
    theirs, ours = _pair_of_layers()
    x = torch.randn(1, 4, 9, 10, dtype=torch.float64)
    out = ours(x)
    assert 'ModulatedDeformConv2dFunctionBackward' in node_names(out)
    assert torch.equal(out, theirs(x))


@pytest.mark.skipif(DEVICE != 'cuda', reason='CUDA autocast: MMDEFORM_TEST_DEVICE=cuda')
def test_layer_under_cuda_autocast():
    """AMP: torchvision computes deform_conv2d in float32 under CUDA autocast (its autocast
    kernel), with the fp16 offsets and mask of the autocast offset conv: the result is mmcv's
    float32 one from those same fp16 offsets and masks, up to float32 rounding. Each output
    sums 4 channels x 9 taps x 4 bilinear corners = 144 terms, each under 1 (|x| < 5 here,
    weights under 1/6 by mmcv's init, masks and bilinear weights under 1): another order
    of summation moves it by at most 144 * 1.2e-7 = 1.7e-5, so atol 1e-4."""
    _, ours = _pair_of_layers()
    ours.float().to(DEVICE)
    x = torch.randn(2, 4, 9, 10, device=DEVICE)
    with torch.autocast('cuda', dtype=torch.float16):
        out = ours(x)
        o1, o2, logits = torch.chunk(ours.conv_offset(x), 3, dim=1)  # as the layer does
        offset, mask = torch.cat((o1, o2), dim=1), logits.sigmoid()
    assert out.dtype == torch.float32 and offset.dtype == torch.float16
    expected = modulated_deform_conv2d(x.cpu(), offset.float().cpu(), mask.float().cpu(),
                                       ours.weight.detach().cpu(), ours.bias.detach().cpu(),
                                       1, 1, 1, 1, 2)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-4)


def test_dcn_config_builds_this_layer():
    """configs/deformable_detr_refine_two_stage_dcn.py's 'DCNv2' resolves to this layer in
    mmdeform's scope (mmcv's in mmdet's)."""
    from mmdeform.registry import MODELS
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile('configs/deformable_detr_refine_two_stage_dcn.py')
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdeform'):
        backbone = MODELS.build(cfg.model.backbone)
    convs = [block.conv2 for stage in (backbone.layer2, backbone.layer3, backbone.layer4)
             for block in stage]
    assert all(type(c) is ModulatedDeformConv2dPack for c in convs)
    assert not isinstance(backbone.layer1[0].conv2, MMCVModulatedDeformConv2dPack)
