"""The Triton backend of multi_scale_deformable_attn, run on CPU tensors by Triton's
interpreter, against mmcv's PyTorch path: the C++ kernel's cases and references
(``test_ms_deform_attn.py``), with the backend chosen as a user would, through
``MMDEFORM_MSDA_BACKEND=triton``. ``test_under_the_interpreter`` runs the neighbourhood
products' Triton tests (``test_neighborhood_attn_triton.py``) in the same subprocess.

Triton reads ``TRITON_INTERPRET`` when it is imported (its own ``tl.zeros`` etc. are
``triton.jit`` functions), so it cannot be switched on inside a pytest process that has
already imported it: ``test_under_the_interpreter`` runs this module in a subprocess with
``TRITON_INTERPRET=1 MMDEFORM_MSDA_BACKEND=triton``, where the other tests run.

On a GPU, ``MMDEFORM_TEST_DEVICE=cuda MMDEFORM_MSDA_BACKEND=triton`` (tools/gpu_check.sh)
runs the same tests in this process on the compiled kernels, with value, locations and
weights on CUDA, and mmcv's PyTorch path on the same tensors as the reference.
"""
import os
import subprocess
import sys

import pytest
import torch
from helpers import device_under_test
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

from mmdeform.ops import BACKENDS, multi_scale_deformable_attn, select_backend
from mmdeform.ops import ms_deform_attn as msda_module
from mmdeform.ops.ms_deform_attn import TRITON_MIN
from test_ms_deform_attn import CASES, ROOT, gradcheck_inputs, node_names
from test_ms_deform_attn import make_inputs as make_cpu_inputs

pytest.importorskip('triton', minversion=TRITON_MIN)  # torch 2.1 brings triton 2.1
INTERPRETING = os.environ.get('TRITON_INTERPRET') == '1'
DEVICE = device_under_test()
# fp32 summation-order differences: torch.testing's float32 defaults
FP32 = dict(rtol=1.3e-6, atol=1e-5)
TRITON_MODULES = ('test_ms_deform_attn_triton.py', 'test_neighborhood_attn_triton.py')
interpreted = pytest.mark.skipif(not (INTERPRETING or DEVICE == 'cuda'),
                                 reason='runs in the subprocess of test_under_the_interpreter')


def make_inputs(*args, **kwargs):
    """``test_ms_deform_attn.make_inputs`` with value, locations and weights on DEVICE."""
    value, shapes, start, loc, weights = make_cpu_inputs(*args, **kwargs)
    return value.to(DEVICE), shapes, start, loc.to(DEVICE), weights.to(DEVICE)


@pytest.mark.skipif(INTERPRETING or DEVICE == 'cuda',
                    reason='this is that subprocess, or the kernels run on CUDA')
def test_under_the_interpreter():
    """This module and ``test_neighborhood_attn_triton.py``, in one subprocess (one start of
    torch and triton) with both backends set to Triton."""
    env = dict(os.environ, TRITON_INTERPRET='1', MMDEFORM_MSDA_BACKEND='triton',
               MMDEFORM_NA_BACKEND='triton', PYTHONPATH=ROOT)
    env.pop('MMDEFORM_MSDA_DETERMINISTIC', None)
    here = os.path.dirname(os.path.abspath(__file__))
    modules = [os.path.join(here, name) for name in TRITON_MODULES]
    # -n 0: in this process, not on pytest.ini's two workers
    proc = subprocess.run([sys.executable, '-m', 'pytest', *modules, '-q', '-n', '0', '-p',
                           'no:cacheprovider', '-rs'], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    # the one test skipped there is this one
    assert ' passed' in proc.stdout and ', 1 skipped' in proc.stdout, proc.stdout[-2000:]
    assert all(f'{name}::' in proc.stdout or name in proc.stdout for name in TRITON_MODULES)


@pytest.fixture
def kernels(monkeypatch):
    from mmdeform.ops import msda_triton
    assert msda_triton.INTERPRETED or DEVICE == 'cuda'
    monkeypatch.delenv('MMDEFORM_MSDA_DETERMINISTIC', raising=False)
    return msda_triton


def _compare(case, deterministic=None, dtype=torch.float32, tol=1e-4):
    value, shapes, start, loc, weights = make_inputs(**case, dtype=dtype)
    tensors = [t.clone().requires_grad_() for t in (value, loc, weights)]
    expected = multi_scale_deformable_attn_pytorch(tensors[0], shapes, tensors[1], tensors[2])
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, tensors, grad_out)
    ours = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = multi_scale_deformable_attn(ours[0], shapes, start, ours[1], ours[2],
                                      deterministic=deterministic)
    assert 'TritonMSDAFunctionBackward' in node_names(out)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, atol=tol / 10, rtol=tol / 10)
    grads = torch.autograd.grad(out, ours, grad_out)
    for name, got, want in zip(('value', 'sampling_locations', 'attention_weights'), grads,
                               expected_grads):
        rel = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
        assert rel <= tol, f'gradient of {name}: max |diff| / max |grad| = {rel:.2e}'
    return grads


@interpreted
@pytest.mark.parametrize('case', CASES)
def test_forward_and_gradients_match_mmcv(case, kernels):
    """fp32 as the C++ kernel's test: outputs to 1e-5, gradients to 1e-4 relative (fp32
    sums of up to L*K*4 terms taken in another order than grid_sample's)."""
    _compare(case)


@interpreted
@pytest.mark.parametrize('case', CASES[2:4])
def test_deterministic_value_gradient_matches_float64(case, kernels):
    """The sorted, atomic-free value gradient: in float64 the same numbers as mmcv to
    1e-12 (rounding only), on the case with every bilinear kink and the 8-head one."""
    _compare(case, deterministic=True, dtype=torch.float64, tol=1e-12)


@interpreted
def test_deterministic_mode_from_the_environment(monkeypatch, kernels):
    monkeypatch.setenv('MMDEFORM_MSDA_DETERMINISTIC', '1')
    calls = []
    monkeypatch.setattr(kernels, '_gather_value_grad', _Spy(kernels._gather_value_grad, calls))
    _compare(CASES[1])
    assert calls, 'MMDEFORM_MSDA_DETERMINISTIC=1 did not take the sorted backward'


class _Spy:
    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.kernel[grid]


@interpreted
def test_padding_mask_and_non_contiguous_inputs():
    value, shapes, start, loc, weights = make_inputs([[6, 5], [3, 3]], heads=4, dims=8)
    mask = torch.zeros(value.shape[:2], dtype=torch.bool, device=value.device)
    mask[1, 20:30] = True
    value = value.masked_fill(mask[..., None, None], 0.0)
    value_nc = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    loc_nc = torch.cat([loc, loc], -1)[..., :2]
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    out = multi_scale_deformable_attn(value_nc, shapes, start, loc_nc, weights_nc)
    expected = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@interpreted
def test_level_start_index_is_used():
    value, shapes, start, loc, weights = make_inputs([[4, 5], [2, 3]], batch=1)
    reordered = torch.cat([value[:, 20:], value[:, :20]], 1)  # level 1 first
    out = multi_scale_deformable_attn(reordered, shapes, torch.tensor([6, 0]), loc, weights)
    expected = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@interpreted
@pytest.mark.parametrize('deterministic', [False, True])
def test_gradcheck_fp64(deterministic):
    def fn(value, shapes, start, loc, weights):
        return multi_scale_deformable_attn(value, shapes, start, loc, weights,
                                           deterministic=deterministic)

    # fast mode (random directions): the full Jacobian takes minutes in the interpreter
    inputs = [t.detach().to(DEVICE).requires_grad_() if t.requires_grad else t
              for t in gradcheck_inputs()]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


@interpreted
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_fp32(dtype):
    """The low-precision inputs, converted exactly to fp32, through mmcv in fp32: ours must
    be that fp32 result rounded once to ``dtype``.

    Compared with the fp32 value, not with its rounding: the kernel and mmcv sum in
    different orders, so their fp32 results differ in the last bits (``FP32``, as the fp32
    tests allow), and a value that lies near a ``dtype`` rounding boundary may round either
    way (one fp16 ulp apart in a CI run). One rounding moves a value by at most half an
    ulp, <= eps/2 relative, or half the subnormal spacing (eps * tiny) near zero."""
    value, shapes, start, loc, weights = make_inputs([[6, 8], [3, 4]])
    low = [t.to(dtype).requires_grad_() for t in (value, loc, weights)]
    out = multi_scale_deformable_attn(low[0], shapes, start, low[1], low[2])
    assert out.dtype == dtype
    high = [t.detach().float().requires_grad_() for t in low]
    expected = multi_scale_deformable_attn_pytorch(high[0], shapes, high[1], high[2])
    info = torch.finfo(dtype)
    rounded_once = dict(rtol=info.eps / 2 + FP32['rtol'], atol=info.eps * info.tiny + FP32['atol'])
    torch.testing.assert_close(out.float(), expected.detach(), **rounded_once)
    grad_out = torch.randn_like(expected)
    grads = torch.autograd.grad(out, low, grad_out.to(dtype))
    expected_grads = torch.autograd.grad(expected, high, grad_out.to(dtype).float())
    for got, want in zip(grads, expected_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, **rounded_once)
    # the bound is tight: two ulps more than one rounding is caught
    with pytest.raises(AssertionError):
        torch.testing.assert_close(out.float() * (1 + 2 * info.eps), expected.detach(),
                                   **rounded_once)


@interpreted
def test_errors():
    value, shapes, start, loc, weights = make_inputs([[6, 8], [3, 4]])
    with pytest.raises(ValueError, match=r'attention_weights must be \(B, Nq, M, L, K\)'):
        multi_scale_deformable_attn(value, shapes, start, loc, weights[..., :2])
    with pytest.raises(RuntimeError, match='level 1 .* reaches past the 60 value rows'):
        multi_scale_deformable_attn(value, shapes, torch.tensor([0, 55]), loc, weights)
    with pytest.raises(RuntimeError, match="backend 'mmcv' needs CUDA tensors"):
        multi_scale_deformable_attn(value, shapes, start, loc, weights, backend='mmcv')


@interpreted
def test_backend_selection(monkeypatch, kernels):
    value = torch.zeros(1, 4, 1, 2, device=DEVICE)
    assert select_backend(value) == 'triton'  # from MMDEFORM_MSDA_BACKEND
    assert select_backend(value, 'pytorch') == 'pytorch'  # the call site wins
    monkeypatch.setattr(kernels, 'INTERPRETED', False)
    with pytest.raises(RuntimeError, match="backend 'triton' needs CUDA tensors, or "
                                           'TRITON_INTERPRET=1'):
        select_backend(value.cpu(), 'triton')


def test_backend_names_and_defaults(monkeypatch):
    """Outside the interpreter: the C++ kernel stays the CPU default, a wrong name lists
    the valid ones, and without triton only the 'triton' backend fails (naming triton)."""
    value, shapes, start, loc, weights = make_inputs([[6, 8], [3, 4]])
    monkeypatch.delenv('MMDEFORM_MSDA_BACKEND', raising=False)
    assert select_backend(value) == 'cpp'
    assert BACKENDS == ('auto', 'cpp', 'triton', 'mmcv', 'pytorch')
    with pytest.raises(ValueError, match="unknown backend 'cuda'.*valid: auto, cpp, triton, "
                                         'mmcv, pytorch'):
        multi_scale_deformable_attn(value, shapes, start, loc, weights, backend='cuda')
    monkeypatch.setenv('MMDEFORM_MSDA_BACKEND', 'Triton')
    with pytest.raises(ValueError, match="unknown backend 'Triton'"):
        select_backend(value)
    monkeypatch.setenv('MMDEFORM_MSDA_BACKEND', 'pytorch')
    assert torch.equal(multi_scale_deformable_attn(value, shapes, start, loc, weights),
                       multi_scale_deformable_attn_pytorch(value, shapes, loc, weights))

    monkeypatch.setitem(sys.modules, 'triton', None)  # as if triton were not installed
    monkeypatch.delitem(sys.modules, 'mmdeform.ops.msda_triton', raising=False)
    monkeypatch.delattr(sys.modules['mmdeform.ops'], 'msda_triton', raising=False)
    msda_module._triton_kernels.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="backend 'triton' needs the triton package"):
            select_backend(value, 'triton')
    finally:
        msda_module._triton_kernels.cache_clear()


def test_msdeform_attn_takes_a_backend_per_layer():
    from mmdeform.models.layers import MSDeformAttn
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3, backend='gpu')
    torch.manual_seed(0)
    args = (torch.randn(1, 5, 32), torch.randn(1, 60, 32), torch.rand(1, 5, 2, 2),
            torch.tensor([[6, 8], [3, 4]]), torch.tensor([0, 48]))
    layers = [MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3, backend=name)
              for name in ('pytorch', 'cpp')]
    layers[1].load_state_dict(layers[0].state_dict())
    slow, fast = (layer(*args) for layer in layers)
    assert 'GeneratedBackwardFor_mmdeform_ms_deform_attn_defaultBackward' in node_names(fast)
    assert 'GeneratedBackwardFor_mmdeform_ms_deform_attn_defaultBackward' not in node_names(slow)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)  # fp32, as test_ms_deform_attn
