"""torch.ops.mmdeform.*: every registered operator passes torch.library.opcheck (schema,
fake kernel, autograd registration, AOT dispatch with dynamic shapes) in float32 and
float64, and computes what the independent PyTorch paths compute (mmcv's
``multi_scale_deformable_attn_pytorch``; the neighbourhood products' slot-by-slot
PyTorch path), in float64."""
import pytest
import torch

from mmdeform.ops.library import REGISTERED

pytestmark = pytest.mark.skipif(not REGISTERED, reason='torch.library.custom_op needs torch>=2.4')

SHAPES = ((6, 5), (3, 3))  # two levels: H x W


def msda_inputs(dtype, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, heads, dims, queries, points = 2, 2, 4, 5, 3
    shapes = torch.tensor(SHAPES)
    starts = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    value = torch.randn(batch, int(shapes.prod(1).sum()), heads, dims, generator=g, dtype=dtype)
    # locations in [-0.1, 1.1]: some samples fall partly or wholly outside the map
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g,
                     dtype=dtype) * 1.2 - 0.1
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g,
                         dtype=dtype).softmax(-1)
    for t in (value, loc, weights):
        t.requires_grad_(grad)
    return value, shapes, starts, loc, weights


def na_inputs(dtype, grad=False, seed=0, kernel=3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 5, 6, 4, generator=g, dtype=dtype)
    b = torch.randn(2, 5, 6, 4, generator=g, dtype=dtype)
    attn = torch.randn(2, 5, 6, kernel * kernel, generator=g, dtype=dtype)
    for t in (a, b, attn):
        t.requires_grad_(grad)
    return a, b, attn


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_opcheck_every_op(dtype):
    ops = torch.ops.mmdeform
    value, shapes, starts, loc, weights = msda_inputs(dtype, grad=True)
    torch.library.opcheck(ops.ms_deform_attn, (value, shapes, starts, loc, weights))
    out = ops.ms_deform_attn(value, shapes, starts, loc, weights)
    grad = torch.randn_like(out)
    torch.library.opcheck(ops.ms_deform_attn_backward,
                          (grad, *(t.detach() for t in (value, shapes, starts, loc, weights))))
    q, k, attn = na_inputs(dtype, grad=True)
    torch.library.opcheck(ops.na_qk, (q, k, 3))
    torch.library.opcheck(ops.na_av, (attn, k, 3))
    torch.library.opcheck(ops.na_qk_backward, (torch.randn_like(attn).detach(), q.detach(),
                                               k.detach(), 3))
    torch.library.opcheck(ops.na_av_backward, (torch.randn_like(q).detach(), attn.detach(),
                                               k.detach(), 3))


def test_ms_deform_attn_matches_mmcv_pytorch_path():
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    value, shapes, starts, loc, weights = msda_inputs(torch.float64, grad=True)
    out = torch.ops.mmdeform.ms_deform_attn(value, shapes, starts, loc, weights)
    ref = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (value, loc, weights), grad)
    theirs = torch.autograd.grad(ref, (value, loc, weights), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize('kernel', [3, 5])
def test_neighbourhood_ops_match_pytorch_path(kernel):
    from mmdeform.ops.neighborhood_attn import neighborhood_av_pytorch, neighborhood_qk_pytorch
    q, k, attn = na_inputs(torch.float64, grad=True, kernel=kernel)
    for op, ref, args in ((torch.ops.mmdeform.na_qk, neighborhood_qk_pytorch, (q, k)),
                          (torch.ops.mmdeform.na_av, neighborhood_av_pytorch, (attn, k))):
        out, expected = op(*args, kernel), ref(*args, kernel)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        grad = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, args, grad),
                        torch.autograd.grad(expected, args, grad)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
