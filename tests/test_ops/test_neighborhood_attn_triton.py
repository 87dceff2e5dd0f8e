"""The Triton backend of DAT++'s neighbourhood-attention products, run on CPU tensors by
Triton's interpreter, against the PyTorch path (``k*k`` shifted copies, autograd) and the
C++ kernel, with the backend chosen as a user would, through ``MMDEFORM_NA_BACKEND``.

``TRITON_INTERPRET`` must be set before triton is imported: ``test_under_the_interpreter``
of ``test_ms_deform_attn_triton.py`` runs this module and that one in one subprocess with
``TRITON_INTERPRET=1 MMDEFORM_NA_BACKEND=triton``, where their tests run.
"""
import os
import sys

import pytest
import torch

from mmdeform.models.backbones.dat_blocks import NeighborhoodAttention
from mmdeform.ops import NA_BACKENDS, neighborhood_av, neighborhood_qk, select_na_backend
from mmdeform.ops import ms_deform_attn as msda_module
from mmdeform.ops.ms_deform_attn import TRITON_MIN
from mmdeform.ops.neighborhood_attn import neighborhood_av_pytorch, neighborhood_qk_pytorch
from helpers import device_under_test
from test_ms_deform_attn import node_names

pytest.importorskip('triton', minversion=TRITON_MIN)  # torch 2.1 brings triton 2.1
INTERPRETING = os.environ.get('TRITON_INTERPRET') == '1'
DEVICE = device_under_test()  # cuda: the compiled kernels (tools/gpu_check.sh)
interpreted = pytest.mark.skipif(not (INTERPRETING or DEVICE == 'cuda'),
                                 reason='runs in the subprocess of test_under_the_interpreter')
OPS = {'qk': (neighborhood_qk, neighborhood_qk_pytorch),
       'av': (neighborhood_av, neighborhood_av_pytorch)}
# (N, H, W, C), kernel: H = W = kernel; H = kernel on a wide map; two maps with H = 2k - 1,
# whose middle row is in all 5 windows of its column, the longest inverse run (2k - 1)
CASES = [((1, 7, 7, 3), 7), ((1, 5, 11, 2), 5), ((2, 5, 9, 5), 3)]


def make_inputs(name, shape, k, dtype=torch.float64, seed=0):
    """``(q, k, grad of the logits)`` for ``'qk'``, ``(attn, v, grad of the output)`` for
    ``'av'``: normal maps and gradients, attention in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    window = (*shape[:3], k * k)
    if name == 'qk':
        a, b, grad = (torch.randn(s, generator=g) for s in (shape, shape, window))
    else:
        a, b, grad = torch.rand(window, generator=g), *(torch.randn(shape, generator=g)
                                                         for _ in range(2))
    return a.to(dtype), b.to(dtype), grad.to(dtype)


def run(name, a, b, kernel, grad, reference=False, backend=None):
    """(output, grad of a, grad of b) of product ``name``, ours or the PyTorch path's."""
    device = 'cpu' if reference or backend == 'cpp' else DEVICE  # the references on the CPU
    a, b = (t.detach().to(device).requires_grad_() for t in (a, b))
    ours, pytorch = OPS[name]
    out = pytorch(a, b, kernel) if reference else ours(a, b, kernel, backend=backend)
    return tuple(t.cpu() for t in (out, *torch.autograd.grad(out, (a, b), grad.to(device))))


@interpreted
@pytest.mark.parametrize('shape,k', CASES)
@pytest.mark.parametrize('name', ['qk', 'av'])
def test_products_and_gradients_match_pytorch_and_cpp(name, shape, k):
    """float64: the same numbers as both references up to rounding (1e-12)."""
    a, b, grad = make_inputs(name, shape, k)
    ours = run(name, a, b, k, grad)
    assert 'TritonNAFunctionBackward' in node_names(ours[0])
    for reference in (run(name, a, b, k, grad, reference=True),
                      run(name, a, b, k, grad, backend='cpp')):
        for what, got, want in zip(('output', 'grad a', 'grad b'), ours, reference):
            assert got.dtype == want.dtype == torch.float64, what
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=what)


@interpreted
@pytest.mark.parametrize('name', ['qk', 'av'])
def test_mixed_dtypes_and_non_contiguous_inputs(name):
    """A float32 ``a`` with a float64 ``b``, both strided views: the output is float64 as
    the C++ path's promotion gives, each gradient in its input's dtype: float64 to
    rounding (1e-12), float32 within one rounding of the float64 value (eps/2 relative)."""
    a, b, grad = make_inputs(name, (1, 5, 6, 3), 3)
    a32 = a.float().transpose(1, 2).contiguous().transpose(1, 2)
    b64 = torch.cat([b, b], -1)[..., ::2]
    assert not (a32.is_contiguous() or b64.is_contiguous())
    out, grad_a, grad_b = run(name, a32, b64, 3, grad)
    want = run(name, a32.double(), b64, 3, grad, reference=True)
    assert (out.dtype, grad_a.dtype, grad_b.dtype) == (torch.float64, torch.float32,
                                                       torch.float64)
    torch.testing.assert_close(out, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_b, want[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_a.double(), want[1], rtol=2**-24, atol=1e-12)


@interpreted
@pytest.mark.parametrize('name', ['qk', 'av'])
def test_gradcheck_fp64(name):
    a, b, _ = (t.to(DEVICE) for t in make_inputs(name, (1, 4, 5, 2), 3))
    # fast mode (random directions): the full Jacobian takes minutes in the interpreter
    assert torch.autograd.gradcheck(lambda x, y: OPS[name][0](x, y, 3),
                                    (a.requires_grad_(), b.requires_grad_()), fast_mode=True)


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's bound on the relative error of a sum of ``n`` products in ``dtype``."""
    u = torch.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


@interpreted
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', ['qk', 'av'])
def test_low_precision_inputs_are_computed_in_fp32(name, dtype):
    """Ours against the exact value (float64 PyTorch path on the exactly converted inputs)
    under a bound, element by element: a sum of at most ``n`` fp32 products is within
    ``gamma_n S`` of the exact one, ``S`` the sum of the products' magnitudes (the same
    product of the inputs' absolute values), and rounding that once to fp16 / bf16 moves
    it by at most half an ulp, ``eps/2`` relative (``eps * tiny / 2`` among subnormals).
    ``n`` bounds every sum here: ``C`` channels, ``k*k`` window slots, and the
    ``(2k - 1)**2`` queries of the inverse neighbourhood. The float64 reference's own
    error is ``gamma_n(float64) S``."""
    k = 3
    a, b, grad = make_inputs(name, (1, 4, 7, 3), k, dtype)
    ours = run(name, a, b, k, grad)
    exact = run(name, a.double(), b.double(), k, grad.double(), reference=True)
    magnitudes = run(name, a.double().abs(), b.double().abs(), k, grad.double().abs(),
                     reference=True)
    n = (2 * k - 1)**2
    info = torch.finfo(dtype)
    rounding = 0.0 if dtype == torch.float32 else info.eps / 2
    for what, got, want, size in zip(('output', 'grad a', 'grad b'), ours, exact, magnitudes):
        assert got.dtype == dtype, what
        bound = (rounding * want.abs() + (1 + rounding) * gamma(n, torch.float32) * size
                 + gamma(n, torch.float64) * size + rounding * info.tiny)
        err = (got.double() - want).abs()
        assert (err <= bound).all(), f'{what}: max error / bound {(err / bound).max():.2f}'
        if dtype != torch.float32:  # the bound is tight: two ulps more are caught
            assert not ((got.double() * (1 + 2 * info.eps) - want).abs() <= bound).all()


@interpreted
def test_neighborhood_attention_block_triton_equals_cpp(monkeypatch):
    """DAT++'s block, float64: output and every gradient (input, qkv, rpb, proj) with
    the Triton backend as with the C++ one, to rounding."""
    torch.manual_seed(3)
    block = NeighborhoodAttention(8, 2, 7).double()
    with torch.no_grad():
        block.rpb.normal_()
    x = torch.randn(1, 8, 5, 7, dtype=torch.float64, requires_grad=True)  # padded to 7 x 7
    grad = torch.randn(1, 8, 5, 7, dtype=torch.float64)

    def forward_backward(backend):
        monkeypatch.setenv('MMDEFORM_NA_BACKEND', backend)
        block.zero_grad()
        x.grad = None
        out = block(x)
        out.backward(grad)
        return out, [x.grad] + [p.grad for p in block.parameters()]

    block.to(DEVICE)
    x.data = x.data.to(DEVICE)
    grad = grad.to(DEVICE)
    out, grads = forward_backward('triton')
    assert 'TritonNAFunctionBackward' in node_names(out)
    out, grads = out.cpu(), [g.cpu() for g in grads]
    block.cpu()
    x.data, grad = x.data.cpu(), grad.cpu()
    ref_out, ref_grads = forward_backward('cpp')
    assert 'GeneratedBackwardFor_mmdeform_na_qk_defaultBackward' in node_names(ref_out)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not INTERPRETING, reason='runs in the subprocess of '
                                             'test_under_the_interpreter')
def test_bad_shapes_and_the_interpreter_check(monkeypatch):
    q = torch.randn(1, 7, 9, 4)
    with pytest.raises(ValueError, match=r'q must be \(N, H, W, C\) with H, W >= kernel 9, '
                                         r'got \(1, 7, 9, 4\)'):
        neighborhood_qk(q, q, 9)
    with pytest.raises(ValueError, match=r'kernel must be odd and positive, got 4'):
        neighborhood_qk(q, q, 4)
    with pytest.raises(ValueError, match=r'k \(1, 7, 9, 3\) must match q \(1, 7, 9, 4\)'):
        neighborhood_qk(q, q[..., :3], 3)
    with pytest.raises(ValueError, match=r'attn must be \(1, 7, 9, 9\), got \(1, 7, 9, 25\)'):
        neighborhood_av(torch.rand(1, 7, 9, 25), q, 3)
    with pytest.raises(ValueError, match='k is on meta, q on cpu; they must share a device'):
        neighborhood_qk(q, q.to('meta'), 3)
    from mmdeform.ops import na_triton
    assert select_na_backend(q) == 'triton'  # from MMDEFORM_NA_BACKEND
    monkeypatch.setattr(na_triton, 'INTERPRETED', False)
    with pytest.raises(RuntimeError, match="backend 'triton' needs CUDA tensors, or "
                                           'TRITON_INTERPRET=1'):
        neighborhood_qk(q, q, 3)


def test_backend_names_and_defaults(monkeypatch):
    """Outside the interpreter: the C++ kernel stays the CPU default, 'pytorch' is the
    PyTorch path itself, a wrong name lists the valid ones, Triton on CPU tensors needs the
    interpreter, and without triton the 'triton' backend fails naming triton."""
    a, b, _ = make_inputs('qk', (1, 7, 8, 3), 3, torch.float32)
    monkeypatch.delenv('MMDEFORM_NA_BACKEND', raising=False)
    assert NA_BACKENDS == ('auto', 'cpp', 'triton', 'pytorch')
    assert select_na_backend(a) == 'cpp'
    assert 'GeneratedBackwardFor_mmdeform_na_qk_defaultBackward' in node_names(neighborhood_qk(a.requires_grad_(), b, 3))
    with pytest.raises(ValueError, match="unknown backend 'cuda'.*valid: auto, cpp, triton, "
                                         'pytorch'):
        neighborhood_qk(a, b, 3, backend='cuda')
    monkeypatch.setenv('MMDEFORM_NA_BACKEND', 'Triton')
    with pytest.raises(ValueError, match=r"unknown backend 'Triton' \(argument or "
                                         r'MMDEFORM_NA_BACKEND\)'):
        neighborhood_av(torch.rand(1, 7, 8, 9), b, 3)
    monkeypatch.setenv('MMDEFORM_NA_BACKEND', 'pytorch')
    assert torch.equal(neighborhood_qk(a, b, 3), neighborhood_qk_pytorch(a, b, 3))
    with pytest.raises(RuntimeError, match="backend 'cpp' runs on CPU tensors"):
        neighborhood_qk(a.to('meta'), b.to('meta'), 3, backend='cpp')
    if not INTERPRETING:
        with pytest.raises(RuntimeError, match="backend 'triton' needs CUDA tensors"):
            neighborhood_qk(a, b, 3, backend='triton')

    monkeypatch.setitem(sys.modules, 'triton', None)  # as if triton were not installed
    for module in ('na_triton', 'msda_triton'):
        monkeypatch.delitem(sys.modules, f'mmdeform.ops.{module}', raising=False)
        monkeypatch.delattr(sys.modules['mmdeform.ops'], module, raising=False)
    msda_module._triton_kernels.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="neighbourhood attention: backend 'triton' "
                                               'needs the triton package'):
            select_na_backend(a, 'triton')
    finally:
        msda_module._triton_kernels.cache_clear()
