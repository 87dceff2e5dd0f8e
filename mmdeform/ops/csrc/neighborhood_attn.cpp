// 2-D neighbourhood attention on the CPU: the two products around the softmax
// (logits = q . k over each window, out = attention . v over each window) and their
// gradients. The softmax and the relative position bias stay in PyTorch.
//
// Forward: threads over rows of queries. Backward: one task per (batch, head) map n,
// which owns the key / value gradient of that map, so the scatter into it is
// race-free and the result does not depend on the thread count.
#include "neighborhood_attn.h"

#include <algorithm>

namespace mmdeform::na {
namespace {

struct Shape {
  int64_t N, H, W, C, K;
  int64_t start(int64_t i, int64_t length) const {
    return std::min(std::max<int64_t>(i - K / 2, 0), length - K);
  }
};

Shape check(const at::Tensor& x, const char* name, int64_t kernel) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() == 4,
              "mmdeform.ops neighbourhood attention: ", name,
              " must be a contiguous CPU tensor (N, H, W, C), got ", x.sizes());
  TORCH_CHECK(kernel >= 1 && kernel % 2 == 1, "mmdeform.ops neighbourhood attention: kernel must "
              "be odd and positive, got ", kernel);
  TORCH_CHECK(x.size(1) >= kernel && x.size(2) >= kernel, "mmdeform.ops neighbourhood attention: ",
              name, " is ", x.size(1), " x ", x.size(2), ", smaller than the kernel ", kernel,
              " (pad the map first)");
  return Shape{x.size(0), x.size(1), x.size(2), x.size(3), kernel};
}

void check_pair(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(),
              "mmdeform.ops neighbourhood attention: ", what, " must share a dtype");
}

void check_window_tensor(const at::Tensor& t, const Shape& s, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.sizes() == at::IntArrayRef({s.N, s.H, s.W, s.K * s.K}),
              "mmdeform.ops neighbourhood attention: ", name, " must be contiguous (", s.N, ", ",
              s.H, ", ", s.W, ", ", s.K * s.K, "), got ", t.sizes());
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += alpha * x[c];
}

// Calls f(slot, pointer to the key row) for the k*k keys of query (i, j) of map base.
template <typename T, typename F>
inline void for_window(const Shape& s, const T* base, int64_t i, int64_t j, F&& f) {
  const int64_t r0 = s.start(i, s.H), c0 = s.start(j, s.W);
  for (int64_t a = 0; a < s.K; ++a) {
    const T* row = base + ((r0 + a) * s.W + c0) * s.C;
    for (int64_t b = 0; b < s.K; ++b) f(a * s.K + b, row + b * s.C);
  }
}

// Calls f(query, n, i, j) for every query (i, j) of every map n, query = (n*H + i)*W + j.
// The forward threads over rows of queries; a backward (per_map) gives each task whole
// maps, so that its scatter into map n's gradient has no other writer.
template <typename F>
void for_each_query(const Shape& s, bool per_map, F&& f) {
  const int64_t rows = per_map ? s.H : 1;  // rows of queries per task
  at::parallel_for(0, s.N * s.H / rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin * rows; row < end * rows; ++row)
      for (int64_t j = 0; j < s.W; ++j) f(row * s.W + j, row / s.H, row % s.H, j);
  });
}

}  // namespace

at::Tensor qk_forward(const at::Tensor& q, const at::Tensor& k, int64_t kernel) {
  const Shape s = check(q, "q", kernel);
  TORCH_CHECK(k.sizes() == q.sizes(), "mmdeform.ops neighbourhood attention: k ", k.sizes(),
              " must match q ", q.sizes());
  check(k, "k", kernel);
  check_pair(q, k, "q and k");
  at::Tensor logits = at::empty({s.N, s.H, s.W, s.K * s.K}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mmdeform_na_qk_forward", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    scalar_t* lp = logits.data_ptr<scalar_t>();
    for_each_query(s, false, [&](int64_t query, int64_t n, int64_t i, int64_t j) {
      const scalar_t* qv = qp + query * s.C;
      scalar_t* out = lp + query * s.K * s.K;
      for_window(s, kp + n * s.H * s.W * s.C, i, j, [&](int64_t slot, const scalar_t* key) {
        out[slot] = dot(qv, key, s.C);
      });
    });
  });
  return logits;
}

std::vector<at::Tensor> qk_backward(const at::Tensor& grad_logits, const at::Tensor& q,
                                    const at::Tensor& k, int64_t kernel) {
  const Shape s = check(q, "q", kernel);
  check(k, "k", kernel);
  check_window_tensor(grad_logits, s, "grad_logits");
  check_pair(q, grad_logits, "q and grad_logits");
  at::Tensor grad_q = at::empty_like(q), grad_k = at::zeros_like(k);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mmdeform_na_qk_backward", [&] {
    const scalar_t* g = grad_logits.data_ptr<scalar_t>();
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    scalar_t* gq = grad_q.data_ptr<scalar_t>();
    scalar_t* gk = grad_k.data_ptr<scalar_t>();
    for_each_query(s, true, [&](int64_t query, int64_t n, int64_t i, int64_t j) {
      const scalar_t* gl = g + query * s.K * s.K;
      const scalar_t* qv = qp + query * s.C;
      scalar_t* gqv = gq + query * s.C;
      std::fill(gqv, gqv + s.C, scalar_t(0));
      for_window(s, kp + n * s.H * s.W * s.C, i, j, [&](int64_t slot, const scalar_t* key) {
        axpy(gl[slot], key, gqv, s.C);
        axpy(gl[slot], qv, gk + (key - kp), s.C);
      });
    });
  });
  return {grad_q, grad_k};
}

at::Tensor av_forward(const at::Tensor& attn, const at::Tensor& v, int64_t kernel) {
  const Shape s = check(v, "v", kernel);
  check_window_tensor(attn, s, "attn");
  check_pair(attn, v, "attn and v");
  at::Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "mmdeform_na_av_forward", [&] {
    const scalar_t* ap = attn.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_query(s, false, [&](int64_t query, int64_t n, int64_t i, int64_t j) {
      const scalar_t* w = ap + query * s.K * s.K;
      scalar_t* o = op + query * s.C;
      std::fill(o, o + s.C, scalar_t(0));
      for_window(s, vp + n * s.H * s.W * s.C, i, j, [&](int64_t slot, const scalar_t* value) {
        axpy(w[slot], value, o, s.C);
      });
    });
  });
  return out;
}

std::vector<at::Tensor> av_backward(const at::Tensor& grad_out, const at::Tensor& attn,
                                    const at::Tensor& v, int64_t kernel) {
  const Shape s = check(v, "v", kernel);
  check_window_tensor(attn, s, "attn");
  TORCH_CHECK(grad_out.sizes() == v.sizes() && grad_out.is_contiguous(),
              "mmdeform.ops neighbourhood attention: grad_out must be contiguous ", v.sizes(),
              ", got ", grad_out.sizes());
  check_pair(attn, v, "attn and v");
  check_pair(grad_out, v, "grad_out and v");
  at::Tensor grad_attn = at::empty_like(attn), grad_v = at::zeros_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "mmdeform_na_av_backward", [&] {
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const scalar_t* ap = attn.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* ga = grad_attn.data_ptr<scalar_t>();
    scalar_t* gv = grad_v.data_ptr<scalar_t>();
    for_each_query(s, true, [&](int64_t query, int64_t n, int64_t i, int64_t j) {
      const scalar_t* go = g + query * s.C;
      const scalar_t* w = ap + query * s.K * s.K;
      scalar_t* gw = ga + query * s.K * s.K;
      for_window(s, vp + n * s.H * s.W * s.C, i, j, [&](int64_t slot, const scalar_t* value) {
        gw[slot] = dot(go, value, s.C);
        axpy(w[slot], go, gv + (value - vp), s.C);
      });
    });
  });
  return {grad_attn, grad_v};
}

}  // namespace mmdeform::na
