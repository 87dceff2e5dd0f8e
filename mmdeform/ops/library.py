"""Our kernels as PyTorch operators: ``torch.ops.mmdeform.*``.

Registered with ``torch.library`` (torch>=2.4) so that ``torch.compile`` and
``torch.export`` see one opaque operator where they used to stop at our Python
autograd Functions (a graph break at every attention layer)::

    ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index,
                   Tensor sampling_locations, Tensor attention_weights) -> Tensor
    ms_deform_attn_backward(Tensor grad_output, <the five inputs>) -> (Tensor, Tensor, Tensor)
    na_qk(Tensor q, Tensor k, int kernel) -> Tensor
    na_qk_backward(Tensor grad, Tensor q, Tensor k, int kernel) -> (Tensor, Tensor)
    na_av(Tensor attn, Tensor v, int kernel) -> Tensor
    na_av_backward(Tensor grad, Tensor attn, Tensor v, int kernel) -> (Tensor, Tensor)

in mmcv's layout (see :mod:`.ms_deform_attn` and :mod:`.neighborhood_attn` for the maths).
Each has a fake (meta) implementation for tracing; the forwards get autograd through
``register_autograd`` and their backward operators.

Kernels per device:

* CPU: the C++ kernels (``_msda_cpu``), float32 / float64; the Python wrappers cast
  fp16 / bf16 to float32 first, as before.
* CUDA: the Triton kernels; for deformable attention mmcv's compiled op instead where
  ``MMDEFORM_MSDA_BACKEND`` / ``'auto'`` chooses it (``resolve_backend``). These are
  plain CUDA kernels of the operator rather than ``torch.library.triton_op``: inductor
  then keeps them opaque, which costs nothing for kernels that are already one launch
  per product, and mmcv's op can sit behind the same name.

:data:`REGISTERED` is False on torch<2.4 (no ``torch.library.custom_op``); the wrappers
then keep calling the kernels through autograd Functions.

ONNX: :func:`onnx_translations` gives ``torch.onnx.export(..., dynamo=True)`` a
translation of ``ms_deform_attn`` into standard operators (one ``GridSample`` per
level, opset >= 16), reading the level shapes and starts from the graph's tensors, and
of torchvision's ``deform_conv2d`` into ``DeformConv`` (opset 19). Neighbourhood
attention takes its PyTorch path while ``torch.export`` traces (``_product``), so
``na_qk`` / ``na_av`` never reach an exported graph.
"""
import contextlib
from typing import Tuple

import torch
from torch import Tensor

from .ms_deform_attn import _msda_cpu, _triton_kernels, resolve_backend

REGISTERED = hasattr(torch.library, 'custom_op') and _msda_cpu is not None
_NA = 'neighbourhood attention'


def _cuda(tensor: Tensor):
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _mmcv_ext():
    from mmcv.utils import ext_loader
    return ext_loader.load_ext('_ext', ['ms_deform_attn_forward', 'ms_deform_attn_backward'])


if REGISTERED:
    from torch.library import custom_op

    # --------------------------------------------------- deformable attention
    @custom_op('mmdeform::ms_deform_attn', mutates_args=(), device_types='cpu')
    def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
        return _msda_cpu.forward(value, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights)

    @ms_deform_attn.register_kernel('cuda')
    def _msda_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights):
        if resolve_backend(None, on_cuda=True, where=str(value.device)) == 'mmcv':
            return _mmcv_ext().ms_deform_attn_forward(
                value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights, im2col_step=64)
        with _cuda(value):
            return _triton_kernels()._forward(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights)

    @ms_deform_attn.register_fake
    def _msda_fake(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights):
        batch, queries, heads = sampling_locations.shape[:3]
        return value.new_empty((batch, queries, heads * value.shape[3]))

    @custom_op('mmdeform::ms_deform_attn_backward', mutates_args=(), device_types='cpu')
    def ms_deform_attn_backward(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor,
                                level_start_index: Tensor, sampling_locations: Tensor,
                                attention_weights: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        grads = _msda_cpu.backward(grad_output.contiguous(), value, spatial_shapes,
                                   level_start_index, sampling_locations, attention_weights)
        return tuple(grads)

    @ms_deform_attn_backward.register_kernel('cuda')
    def _msda_backward_cuda(grad_output, value, spatial_shapes, level_start_index,
                            sampling_locations, attention_weights):
        grad_output = grad_output.contiguous()
        if resolve_backend(None, on_cuda=True, where=str(value.device)) == 'mmcv':
            grads = (torch.zeros_like(value), torch.zeros_like(sampling_locations),
                     torch.zeros_like(attention_weights))
            _mmcv_ext().ms_deform_attn_backward(value, spatial_shapes, level_start_index,
                                                sampling_locations, attention_weights,
                                                grad_output, *grads, im2col_step=64)
            return grads
        kernels = _triton_kernels()
        with _cuda(value):
            return kernels._backward(grad_output, value, spatial_shapes, level_start_index,
                                     sampling_locations, attention_weights,
                                     kernels.deterministic_default())

    @ms_deform_attn_backward.register_fake
    def _msda_backward_fake(grad_output, value, spatial_shapes, level_start_index,
                            sampling_locations, attention_weights):
        return (torch.empty_like(value), torch.empty_like(sampling_locations),
                torch.empty_like(attention_weights))

    def _msda_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _msda_grad(ctx, grad_output):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.mmdeform.ms_deform_attn_backward(
            grad_output, value, shapes, starts, locations, weights)
        return grad_value, None, None, grad_locations, grad_weights

    ms_deform_attn.register_autograd(_msda_grad, setup_context=_msda_setup)

    # ------------------------------------------------ neighbourhood attention
    # one forward and one backward operator per product; 'qk': (q, k) -> logits,
    # 'av': (attn, v) -> out. CUDA: the Triton kernels (window dot / sum, inverse sum).
    def _na_triton(name: str, a: Tensor, b: Tensor, kernel: int) -> Tensor:
        kernels = _triton_kernels('na_triton', _NA)
        out = (kernels.window_dot if name == 'qk' else kernels.window_sum)(a, b, kernel)
        return out.to(torch.promote_types(a.dtype, b.dtype))

    def _na_triton_backward(name: str, grad: Tensor, a: Tensor, b: Tensor, kernel: int):
        kernels = _triton_kernels('na_triton', _NA)
        grad = grad.contiguous()
        if name == 'qk':
            grad_a, grad_b = (kernels.window_sum(grad, b, kernel),
                              kernels.inverse_sum(grad, a, kernel))
        else:
            grad_a, grad_b = (kernels.window_dot(grad, b, kernel),
                              kernels.inverse_sum(a, grad, kernel))
        return grad_a.to(a.dtype), grad_b.to(b.dtype)

    def _register_na(name: str, out_channels) -> None:
        """``mmdeform::na_{name}`` and its backward; ``out_channels(a, b, kernel)``
        gives the forward's last dimension."""
        def forward(a: Tensor, b: Tensor, kernel: int) -> Tensor:
            return getattr(_msda_cpu, f'na_{name}_forward')(a, b, kernel)

        def backward(grad: Tensor, a: Tensor, b: Tensor, kernel: int) -> Tuple[Tensor, Tensor]:
            return tuple(getattr(_msda_cpu, f'na_{name}_backward')(grad.contiguous(), a, b,
                                                                   kernel))

        fwd = custom_op(f'mmdeform::na_{name}', forward, mutates_args=(), device_types='cpu')
        bwd = custom_op(f'mmdeform::na_{name}_backward', backward, mutates_args=(),
                        device_types='cpu')
        fwd.register_kernel('cuda')(lambda a, b, kernel: _na_triton(name, a, b, kernel))
        bwd.register_kernel('cuda')(
            lambda grad, a, b, kernel: _na_triton_backward(name, grad, a, b, kernel))
        fwd.register_fake(lambda a, b, kernel: b.new_empty(
            (*b.shape[:3], out_channels(a, b, kernel)), dtype=torch.promote_types(a.dtype,
                                                                                   b.dtype)))
        bwd.register_fake(lambda grad, a, b, kernel: (torch.empty_like(a), torch.empty_like(b)))

        def setup(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], inputs[1])
            ctx.kernel = inputs[2]

        def grad_fn(ctx, grad):
            a, b = ctx.saved_tensors
            grad_a, grad_b = getattr(torch.ops.mmdeform, f'na_{name}_backward')(
                grad, a, b, ctx.kernel)
            return grad_a, grad_b, None

        fwd.register_autograd(grad_fn, setup_context=setup)

    _register_na('qk', lambda q, k, kernel: kernel * kernel)
    _register_na('av', lambda attn, v, kernel: v.shape[-1])


# ------------------------------------------------------------------ ONNX
def ms_deform_attn_onnx(value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights, bilinear: str = 'bilinear'):
    """``ms_deform_attn`` in standard ONNX operators, for the dynamo exporter's
    ``custom_translation_table``: per level, the value rows ``[start_l, start_l + H_l W_l)``
    reshaped to ``(B*M, D, H_l, W_l)`` and read by ``GridSample`` (bilinear, zeros,
    ``align_corners=0``: mmcv's semantics) at ``2 * loc - 1``; then the weighted sum over
    levels and points. ``H_l``, ``W_l`` and ``start_l`` are gathered from the graph's
    ``spatial_shapes`` / ``level_start_index``, so the file works at any input size. The
    number of levels is read from the (static) shape of ``sampling_locations``.
    ``bilinear`` is GridSample's name of the mode: ``'linear'`` from opset 20 on."""
    from onnxscript import opset18 as op

    def ints(*values):
        return op.Constant(value_ints=list(values))

    levels = sampling_locations.shape[3]
    value_shape, loc_shape = op.Shape(value), op.Shape(sampling_locations)  # B Nv M D / B Nq M L K 2
    batch, heads, dims = (op.Slice(value_shape, ints(i), ints(i + 1)) for i in (0, 2, 3))
    queries, points = (op.Slice(loc_shape, ints(i), ints(i + 1)) for i in (1, 4))
    batch_heads = op.Mul(batch, heads)
    value = op.Transpose(value, perm=[0, 2, 3, 1])  # B M D Nv
    grids = op.Sub(op.Mul(sampling_locations, op.CastLike(2.0, sampling_locations)),
                   op.CastLike(1.0, sampling_locations))
    grids = op.Transpose(grids, perm=[0, 2, 3, 1, 4, 5])  # B M L Nq K 2
    sampled = []
    for lvl in range(levels):
        hw = op.Gather(spatial_shapes, op.Constant(value_int=lvl), axis=0)
        start = op.Gather(level_start_index, ints(lvl), axis=0)
        # H_l * W_l by Mul (ReduceProd's axes moved from attribute to input at opset 18)
        cells = op.Mul(op.Slice(hw, ints(0), ints(1)), op.Slice(hw, ints(1), ints(2)))
        rows = op.Slice(value, start, op.Add(start, cells), ints(3))
        rows = op.Reshape(rows, op.Concat(batch_heads, dims, hw, axis=0))
        grid = op.Gather(grids, op.Constant(value_int=lvl), axis=2)  # B M Nq K 2
        grid = op.Reshape(grid, op.Concat(batch_heads, queries, points, ints(2), axis=0))
        sampled.append(op.Unsqueeze(op.GridSample(rows, grid, mode=bilinear,
                                                  padding_mode='zeros', align_corners=0),
                                    ints(3)))  # B*M D Nq 1 K
    sampled = op.Reshape(op.Concat(*sampled, axis=3),
                         op.Concat(batch_heads, dims, queries, ints(-1), axis=0))
    weights = op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4])  # B M Nq L K
    weights = op.Unsqueeze(op.Reshape(weights, op.Concat(batch_heads, queries, ints(-1),
                                                         axis=0)), ints(1))
    out = op.ReduceSum(op.Mul(sampled, weights), ints(-1), keepdims=0)  # B*M D Nq
    out = op.Transpose(op.Reshape(out, op.Concat(batch, heads, dims, queries, axis=0)),
                       perm=[0, 3, 1, 2])
    return op.Reshape(out, op.Concat(batch, queries, ints(-1), axis=0))


def deform_conv2d_onnx(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, groups, offset_groups, use_mask):
    """torchvision's ``deform_conv2d`` (DCNv2 when ``use_mask``) as ONNX ``DeformConv``
    (opset 19), which has its layout: offsets ``(N, 2 * offset_groups * kh * kw, H, W)``
    with ``(dy, dx)`` per tap, the mask ``(N, offset_groups * kh * kw, H, W)``."""
    from onnxscript import opset19 as op
    inputs = (input, weight, offset, bias, mask) if use_mask else (input, weight, offset, bias)
    return op.DeformConv(*inputs, dilations=[dilation_h, dilation_w], group=groups,
                         offset_group=offset_groups, pads=[pad_h, pad_w, pad_h, pad_w],
                         strides=[stride_h, stride_w])


def onnx_translations(opset: int = 18) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: our
    deformable attention, and torchvision's deformable convolution (the DCN backbones
    run it while exporting, :mod:`.deform_conv`)."""
    if not REGISTERED:
        return {}
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    def msda(*args):  # GridSample's 'bilinear' is called 'linear' from opset 20 on
        return ms_deform_attn_onnx(*args, bilinear='linear' if opset >= 20 else 'bilinear')

    return {torch.ops.mmdeform.ms_deform_attn.default: msda,
            torch.ops.torchvision.deform_conv2d.default: deform_conv2d_onnx}
