"""mmdeform.ops.multi_scale_deformable_attn on the CPU against mmcv's PyTorch path.

mmcv's ``multi_scale_deformable_attn_pytorch`` (``F.grid_sample`` per level, autograd
for the gradients) is the independent reference: the kernel must give its outputs to
1e-5 and its gradients to 1e-4 relative, on both instruction sets this machine runs.
"""
import os
import subprocess
import sys

import pytest
import torch
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

from mmdeform.ops import (CPU_KERNEL_AVAILABLE, NA_KERNEL_AVAILABLE, cpu_kernel_isa,
                          multi_scale_deformable_attn, set_cpu_kernel_isa)
from mmdeform.ops import ms_deform_attn as msda_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ISAS = ['default', 'avx2'] if cpu_kernel_isa() == 'avx2' else ['default']


def test_the_kernels_are_built():
    """tools/install.sh builds both kernels and fails without them, so the suite fails
    rather than skips their tests when either is missing."""
    assert CPU_KERNEL_AVAILABLE, 'mmdeform/ops/_msda_cpu did not load: run tools/install.sh'
    assert NA_KERNEL_AVAILABLE, 'the extension lacks the neighbourhood-attention kernels'


@pytest.fixture(params=ISAS)
def isa(request):
    set_cpu_kernel_isa(request.param)
    yield request.param
    set_cpu_kernel_isa('auto')


def _border_values(size: int):
    """Normalised coordinates on the map's borders (0 and 1, exact for any size) and, for
    a power-of-two size where they are exact in binary, on the kinks of the bilinear
    map: the edges of its support (pixel -1 and ``size``) and pixel centres. There the
    location gradient is one-sided; both implementations take floor()'s cell."""
    values = [0.0, 1.0]
    if size & (size - 1) == 0:
        values += [-0.5 / size, (size + 0.5) / size, 0.5 / size, 1 - 0.5 / size, 1.0 / size]
    return values


def make_inputs(shapes, batch=2, num_queries=11, heads=3, dims=32, points=4, seed=0,
                dtype=torch.float32, border=True):
    """Random value / locations / softmax weights; locations spread past the map on all
    sides and, with ``border``, the first queries' points on the borders
    (``_border_values``)."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(shapes, dtype=torch.long)
    levels = len(shapes)
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    nv = int(shapes.prod(1).sum())
    value = torch.randn(batch, nv, heads, dims, generator=g, dtype=dtype)
    loc = torch.rand(batch, num_queries, heads, levels, points, 2, generator=g, dtype=dtype)
    loc = loc * 1.6 - 0.3
    if border:
        for lvl, (h, w) in enumerate(shapes.tolist()):
            xs, ys = _border_values(w), _border_values(h)
            for i in range(max(len(xs), len(ys)) * 2):
                q, k = (i // points) % num_queries, i % points
                loc[:, q, :, lvl, k, 0] = xs[i % len(xs)]
                loc[:, q, :, lvl, k, 1] = ys[(i // 2) % len(ys)]
    weights = torch.rand(batch, num_queries, heads, levels * points, generator=g, dtype=dtype)
    weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
    return value, shapes, start, loc, weights


CASES = [
    dict(shapes=[[5, 7]]),                                       # one level
    dict(shapes=[[6, 8], [3, 4]], dims=8),
    dict(shapes=[[8, 16], [4, 8], [2, 4], [1, 2]], num_queries=24),  # every kink is exact
    dict(shapes=[[9, 13], [5, 7], [3, 4]], batch=1, heads=8),
    dict(shapes=[[11, 3], [6, 2], [3, 1], [2, 1]], dims=5),      # D with a scalar tail
    dict(shapes=[[7, 9], [4, 5], [2, 3], [1, 2], [1, 1]], dims=64, points=3),  # five levels
    dict(shapes=[[4, 6], [2, 3]], dims=16, num_queries=1),
]


@pytest.mark.parametrize('case', CASES)
def test_forward_and_gradients_match_mmcv(case, isa):
    value, shapes, start, loc, weights = make_inputs(**case)
    tensors = [t.clone().requires_grad_() for t in (value, loc, weights)]
    expected = multi_scale_deformable_attn_pytorch(tensors[0], shapes, tensors[1], tensors[2])
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, tensors, grad_out)

    ours = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = multi_scale_deformable_attn(ours[0], shapes, start, ours[1], ours[2])
    assert out.shape == expected.shape and out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out, ours, grad_out)
    for name, got, want in zip(('value', 'sampling_locations', 'attention_weights'), grads,
                               expected_grads):
        scale = want.abs().max().clamp_min(1e-12)
        rel = ((got - want).abs().max() / scale).item()
        assert rel <= 1e-4, f'gradient of {name}: max |diff| / max |grad| = {rel:.2e}'


def test_padding_mask_and_non_contiguous_inputs(isa):
    value, shapes, start, loc, weights = make_inputs([[6, 5], [3, 3]], heads=4, dims=8)
    mask = torch.zeros(value.shape[:2], dtype=torch.bool)
    mask[1, 20:30] = True  # padded rows of image 1, zeroed as MSDeformAttn does
    value = value.masked_fill(mask[..., None, None], 0.0)
    # the same data behind strides: value (B, Nv, M, D) as a permuted view, loc and
    # weights as slices of larger tensors
    value_nc = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    loc_nc = torch.cat([loc, loc], -1)[..., :2]
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or weights_nc.is_contiguous())
    out = multi_scale_deformable_attn(value_nc, shapes, start, loc_nc, weights_nc)
    expected = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_level_start_index_is_used():
    """Levels stored in another order: the kernel reads each level where the index says
    (mmcv's PyTorch path assumes consecutive levels, so compare with it reordered)."""
    value, shapes, start, loc, weights = make_inputs([[4, 5], [2, 3]], batch=1)
    reordered = torch.cat([value[:, 20:], value[:, :20]], 1)  # level 1 first
    out = multi_scale_deformable_attn(reordered, shapes, torch.tensor([6, 0]), loc, weights)
    torch.testing.assert_close(out, multi_scale_deformable_attn_pytorch(value, shapes, loc, weights),
                               atol=1e-5, rtol=1e-5)


def gradcheck_inputs():
    """Small float64 inputs for gradcheck, away from cell edges, where the bilinear map
    has kinks: ``(value, shapes, start, loc, weights)``, the float ones requiring grad."""
    value, shapes, start, loc, weights = make_inputs([[3, 4], [2, 2]], batch=2, num_queries=3,
                                                     heads=2, dims=3, points=2,
                                                     dtype=torch.float64, border=False)
    loc = loc.clamp(0.05, 0.95)
    return (value.requires_grad_(), shapes, start, loc.requires_grad_(),
            weights.requires_grad_())


def node_names(out):
    """The type names of every node of ``out``'s autograd graph."""
    names, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and id(fn) not in seen:
            seen.add(id(fn))
            names.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
    return names


def test_gradcheck_fp64(isa):
    assert torch.autograd.gradcheck(multi_scale_deformable_attn, gradcheck_inputs(), eps=1e-6,
                                    atol=1e-5)


def _run(value, shapes, start, loc, weights, grad_out):
    tensors = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = multi_scale_deformable_attn(tensors[0], shapes, start, tensors[1], tensors[2])
    return [out.detach()] + list(torch.autograd.grad(out, tensors, grad_out))


def test_bitwise_equal_across_threads_and_runs():
    value, shapes, start, loc, weights = make_inputs([[23, 31], [12, 16], [6, 8]], batch=2,
                                                     num_queries=700, heads=8, dims=32)
    grad_out = torch.randn(2, 700, 256, generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(value, shapes, start, loc, weights, grad_out)
        torch.set_num_threads(2)
        two = _run(value, shapes, start, loc, weights, grad_out)
        again = _run(value, shapes, start, loc, weights, grad_out)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_bf16_is_computed_in_fp32():
    value, shapes, start, loc, weights = make_inputs([[6, 8], [3, 4]])
    low = [t.bfloat16() for t in (value, loc, weights)]
    out = multi_scale_deformable_attn(low[0], shapes, start, low[1], low[2])
    assert out.dtype == torch.bfloat16
    expected = multi_scale_deformable_attn_pytorch(*(t.float() for t in low[:1]), shapes,
                                                   low[1].float(), low[2].float())
    torch.testing.assert_close(out.float(), expected.bfloat16().float())


def test_bad_shapes_are_named():
    value, shapes, start, loc, weights = make_inputs([[6, 8], [3, 4]])
    with pytest.raises(ValueError, match=r'attention_weights must be \(B, Nq, M, L, K\)'):
        multi_scale_deformable_attn(value, shapes, start, loc, weights[..., :2])
    with pytest.raises(ValueError, match=r'sampling_locations must be \(B, Nq, M, L, K, 2\)'):
        multi_scale_deformable_attn(value, shapes, start, loc[:, :, :2], weights[:, :, :2])
    with pytest.raises(ValueError, match=r'spatial_shapes must be \(L, 2\) with L=2'):
        multi_scale_deformable_attn(value, shapes[:1], start, loc, weights)
    with pytest.raises(RuntimeError, match='level 1 .* reaches past the 60 value rows'):
        multi_scale_deformable_attn(value, shapes, torch.tensor([0, 55]), loc, weights)


def test_msdeform_attn_uses_the_cpu_kernel():
    from mmdeform.models.layers import MSDeformAttn
    attn = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3)
    value = torch.randn(1, 60, 32, requires_grad=True)
    out = attn(torch.randn(1, 5, 32), value, torch.rand(1, 5, 2, 2), torch.tensor([[6, 8], [3, 4]]),
               torch.tensor([0, 48]))
    names = node_names(out)
    # the C++ kernel, through the registered operator torch.ops.mmdeform.ms_deform_attn
    assert 'GeneratedBackwardFor_mmdeform_ms_deform_attn_defaultBackward' in names, names


def test_fallback_without_the_extension(monkeypatch):
    """Where the extension is missing (MMDEFORM_NO_EXT=1), the op is mmcv's PyTorch path
    (same numbers), neighbourhood attention takes its PyTorch path, and importing mmdeform
    warns once instead of failing."""
    value, shapes, start, loc, weights = make_inputs([[6, 8], [3, 4]])
    monkeypatch.setattr(msda_module, 'CPU_KERNEL_AVAILABLE', False)
    out = multi_scale_deformable_attn(value, shapes, start, loc, weights)
    assert torch.equal(out, multi_scale_deformable_attn_pytorch(value, shapes, loc, weights))

    code = ('import sys, warnings\n'
            "sys.modules['mmdeform.ops._msda_cpu'] = None  # as if it was never built\n"
            'with warnings.catch_warnings(record=True) as caught:\n'
            "    warnings.simplefilter('always')\n"
            '    import mmdeform.models  # noqa\n'
            '    import mmdeform.ops\n'
            'msgs = [str(w.message) for w in caught if "CPU kernel" in str(w.message)]\n'
            'print(len(msgs), mmdeform.ops.CPU_KERNEL_AVAILABLE, mmdeform.ops.cpu_kernel_isa(),\n'
            '      mmdeform.ops.NA_KERNEL_AVAILABLE)\n'
            "assert 'falls back to mmcv' in msgs[0], msgs\n")
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ['1', 'False', 'none', 'False']


@pytest.fixture
def no_cuda_backend(monkeypatch):
    """As on a CUDA machine with neither backend: mmcv built CPU-only, triton missing."""
    monkeypatch.delenv('MMDEFORM_MSDA_BACKEND', raising=False)
    monkeypatch.setattr(msda_module, 'mmcv_cuda_op_available', lambda: False)
    monkeypatch.setattr(msda_module, '_triton_importable', lambda: False)

    def no_triton():
        raise RuntimeError("multi_scale_deformable_attn: backend 'triton' needs the triton "
                           "package (No module named 'triton')")

    monkeypatch.setattr(msda_module, '_triton_kernels', no_triton)


def _fake_cuda(monkeypatch):
    """No CUDA here: MSDeformAttn is told its weights are on CUDA, and a dtype change (an
    ``_apply`` as ``.to('cuda')`` is) runs the check that moving it to CUDA runs."""
    from mmdeform.models.layers import MSDeformAttn
    monkeypatch.setattr(MSDeformAttn, '_on_cuda', lambda self: True)


def test_cuda_without_a_backend_stops_when_the_detector_is_moved(no_cuda_backend, monkeypatch):
    from mmdet_reference import build_ours
    from mmengine.config import Config
    cfg = Config.fromfile('tests/data/configs/ddetr_shapes_tiny.py')
    model = build_ours(cfg)  # building needs no backend: nothing says CUDA yet
    _fake_cuda(monkeypatch)
    with pytest.raises(RuntimeError) as err:
        model.to(torch.float64)
    assert str(err.value) == msda_module.NO_CUDA_BACKEND and '\n' not in str(err.value)
    assert 'needs triton (pip install triton) or mmcv compiled with CUDA ops' in str(err.value)
    # the same line at the first call, for a caller that moved only the tensors
    with pytest.raises(RuntimeError, match='needs triton .* or mmcv compiled with CUDA ops'):
        msda_module.resolve_backend(None, on_cuda=True, where='cuda:0')


def test_cuda_backends_that_can_run_pass_the_check(no_cuda_backend, monkeypatch):
    from mmdeform.models.layers import MSDeformAttn
    _fake_cuda(monkeypatch)
    with pytest.raises(RuntimeError, match="backend 'triton' needs the triton package"):
        MSDeformAttn(embed_dims=32, num_heads=4, backend='triton').double()
    with pytest.raises(RuntimeError, match="backend 'mmcv' needs CUDA tensors and mmcv compiled "
                                           'with CUDA'):
        MSDeformAttn(embed_dims=32, num_heads=4, backend='mmcv').double()
    MSDeformAttn(embed_dims=32, num_heads=4, backend='pytorch').double()  # named: allowed
    monkeypatch.setenv('MMDEFORM_MSDA_BACKEND', 'pytorch')
    MSDeformAttn(embed_dims=32, num_heads=4).double()
    monkeypatch.delenv('MMDEFORM_MSDA_BACKEND')
    monkeypatch.setattr(msda_module, 'mmcv_cuda_op_available', lambda: True)
    assert msda_module.check_cuda_backend() == 'mmcv'  # triton cannot run: mmcv's op
    monkeypatch.setattr(msda_module, '_triton_importable', lambda: True)
    assert msda_module.check_cuda_backend() == 'triton'  # both: Triton first
    assert MSDeformAttn(embed_dims=32, num_heads=4).double().value_proj.weight.dtype == \
        torch.float64


def test_unknown_backend_names_list_the_valid_ones(monkeypatch):
    """From the argument or from MMDEFORM_MSDA_BACKEND, at the layer's build and at a call;
    the message says where the name came from."""
    from mmdeform.models.layers import MSDeformAttn
    valid = 'valid: auto, cpp, triton, mmcv, pytorch'
    with pytest.raises(ValueError, match=rf"unknown backend 'gpu' \(from backend=\); {valid}$"):
        MSDeformAttn(embed_dims=32, num_heads=4, backend='gpu')
    monkeypatch.setenv('MMDEFORM_MSDA_BACKEND', 'Triton')
    env_error = rf"unknown backend 'Triton' \(from MMDEFORM_MSDA_BACKEND\); {valid}$"
    with pytest.raises(ValueError, match=env_error):
        MSDeformAttn(embed_dims=32, num_heads=4)
    value, shapes, start, loc, weights = make_inputs([[6, 8], [3, 4]])
    with pytest.raises(ValueError, match=env_error):
        multi_scale_deformable_attn(value, shapes, start, loc, weights)
    # a valid argument wins over a wrong environment, as the order of choice says
    out = multi_scale_deformable_attn(value, shapes, start, loc, weights, backend='pytorch')
    assert torch.equal(out, multi_scale_deformable_attn_pytorch(value, shapes, loc, weights))


@pytest.mark.parametrize('cause', ['no CUDA backend', 'unknown name'])
def test_train_tool_stops_in_one_line_before_training(cause, no_cuda_backend, monkeypatch,
                                                      tmp_path, capsys):
    """tools/train.py: the Runner moves the model to its device when it is built (here the
    fake CUDA request above), so a CUDA run without a backend stops there, before any data
    is read, with the one line; a wrong MMDEFORM_MSDA_BACKEND stops the model's build."""
    from helpers import tool_error
    if cause == 'no CUDA backend':
        _fake_cuda(monkeypatch)
        expected = f'error: BackendUnavailableError: {msda_module.NO_CUDA_BACKEND}'
    else:
        monkeypatch.setenv('MMDEFORM_MSDA_BACKEND', 'gpu')
        expected = ("error: BackendNameError: multi_scale_deformable_attn: unknown backend 'gpu' "
                    '(from MMDEFORM_MSDA_BACKEND); valid: auto, cpp, triton, mmcv, pytorch')
    line = tool_error('tools/train.py', ['tests/data/configs/ddetr_shapes_tiny.py',
                                         '--work-dir', tmp_path], capsys)
    assert line == expected
