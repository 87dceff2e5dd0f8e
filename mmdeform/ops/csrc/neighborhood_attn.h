// 2-D neighbourhood attention on the CPU (DAT++'s local blocks, NATTEN's rule, dilation 1):
// query (i, j) attends to the k x k keys starting at (start(i), start(j)),
// start(i) = clamp(i - k / 2, 0, H - k), so every window lies inside the map.
// Tensors are channel-last and contiguous: q, k, v (N, H, W, C), logits / attention
// (N, H, W, k*k) with slot a*k + b the key (start(i) + a, start(j) + b).
#pragma once
#include <torch/extension.h>

#include <vector>

namespace mmdeform::na {

at::Tensor qk_forward(const at::Tensor& q, const at::Tensor& k, int64_t kernel);
std::vector<at::Tensor> qk_backward(const at::Tensor& grad_logits, const at::Tensor& q,
                                    const at::Tensor& k, int64_t kernel);
at::Tensor av_forward(const at::Tensor& attn, const at::Tensor& v, int64_t kernel);
std::vector<at::Tensor> av_backward(const at::Tensor& grad_out, const at::Tensor& attn,
                                    const at::Tensor& v, int64_t kernel);

}  // namespace mmdeform::na
