"""mmdeform.ops' neighbourhood-attention products against brute force and autograd.

The reference is a direct loop over every query and its clamped k x k window
(NATTEN's rule, written out by hand here); gradients are checked by ``gradcheck``
in float64 and against PyTorch autograd through the module's PyTorch path.
"""
import pytest
import torch

from mmdeform.models.backbones.dat_blocks import NeighborhoodAttention
from mmdeform.ops import neighborhood_av, neighborhood_qk


def window_starts(length, k):
    return [min(max(i - k // 2, 0), length - k) for i in range(length)]


def brute_force(q, key, v, attn, k):
    """(logits, out) by a loop over queries and window slots."""
    N, H, W, C = q.shape
    logits = torch.zeros(N, H, W, k * k, dtype=q.dtype)
    out = torch.zeros_like(v)
    rows, cols = window_starts(H, k), window_starts(W, k)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                for a in range(k):
                    for b in range(k):
                        y, x = rows[i] + a, cols[j] + b
                        logits[n, i, j, a * k + b] = q[n, i, j] @ key[n, y, x]
                        out[n, i, j] += attn[n, i, j, a * k + b] * v[n, y, x]
    return logits, out


@pytest.mark.parametrize('shape,k', [((2, 7, 7, 4), 7), ((3, 9, 12, 5), 7), ((1, 6, 5, 3), 3),
                                     ((2, 11, 8, 8), 5)])
def test_products_match_brute_force(shape, k):
    g = torch.Generator().manual_seed(0)
    q, key, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3))
    attn = torch.rand(*shape[:3], k * k, generator=g, dtype=torch.float64)
    logits, out = brute_force(q, key, v, attn, k)
    torch.testing.assert_close(neighborhood_qk(q, key, k), logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(neighborhood_av(attn, v, k), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('shape,k', [((2, 5, 6, 3), 3), ((1, 7, 8, 2), 7)])
def test_gradcheck(shape, k):
    g = torch.Generator().manual_seed(1)
    q, key, v = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
                 for _ in range(3))
    attn = torch.rand(*shape[:3], k * k, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: neighborhood_qk(a, b, k), (q, key))
    assert torch.autograd.gradcheck(lambda a, b: neighborhood_av(a, b, k), (attn, v))


@pytest.mark.parametrize('size', [(12, 17), (5, 9)])
def test_module_kernel_matches_pytorch_path(size, monkeypatch):
    """The whole block, float32: outputs and every gradient (input, qkv, rpb, proj)
    of the kernel path against autograd through the PyTorch path."""
    torch.manual_seed(3)
    attn = NeighborhoodAttention(32, 2, 7)
    with torch.no_grad():
        attn.rpb.normal_()
    x = torch.randn(2, 32, *size, requires_grad=True)
    grad = torch.randn(2, 32, *size)

    def run():
        attn.zero_grad()
        x.grad = None
        out = attn(x)
        out.backward(grad)
        return [out, x.grad] + [p.grad for p in attn.parameters()]

    monkeypatch.setenv('MMDEFORM_NA_BACKEND', 'cpp')
    ours = run()
    monkeypatch.setenv('MMDEFORM_NA_BACKEND', 'pytorch')
    reference = run()
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_backward_is_deterministic_across_threads():
    g = torch.Generator().manual_seed(4)
    q, key, v = (torch.randn(4, 10, 13, 16, generator=g, requires_grad=True) for _ in range(3))
    attn = torch.rand(4, 10, 13, 49, generator=g, requires_grad=True)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for t in (q, key, v, attn):
                t.grad = None
            (neighborhood_qk(q, key, 7).square().sum() + neighborhood_av(attn, v, 7).sum()).backward()
            grads.append([t.grad.clone() for t in (q, key, v, attn)])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_bad_shapes_are_named():
    q = torch.randn(1, 5, 9, 4)
    with pytest.raises(ValueError, match=r'H, W >= kernel 7, got \(1, 5, 9, 4\)'):
        neighborhood_qk(q, q, 7)
    v = torch.randn(1, 7, 7, 4)
    with pytest.raises(ValueError, match=r'attn must be \(1, 7, 7, 49\)'):
        neighborhood_av(torch.rand(1, 7, 7, 25), v, 7)
