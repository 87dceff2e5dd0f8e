// Multi-scale deformable attention on the CPU: checks, threading and instruction-set choice.
// The arithmetic is in ms_deform_attn_kernel.h.
#include <torch/extension.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>
#include <string>

#include "ms_deform_attn_args.h"
#include "neighborhood_attn.h"

namespace mmdeform::msda {
namespace {

// "avx2" where this build has the AVX2 kernels and the CPU runs them, else "default".
// MMDEFORM_MSDA_ISA=default forces the portable kernels (the tests compare both).
std::string& isa_setting() {
  static std::string isa = [] {
    const char* env = std::getenv("MMDEFORM_MSDA_ISA");
    return std::string(env ? env : "auto");
  }();
  return isa;
}

bool use_avx2() {
#ifdef MMDEFORM_MSDA_HAVE_AVX2
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const std::string& isa = isa_setting();
  if (isa == "default") return false;
  TORCH_CHECK(isa == "auto" || isa == "avx2",
              "mmdeform.ops: MMDEFORM_MSDA_ISA must be auto, avx2 or default, got '", isa, "'");
  TORCH_CHECK(isa != "avx2" || cpu_has, "mmdeform.ops: MMDEFORM_MSDA_ISA=avx2 but this CPU lacks AVX2/FMA");
  return cpu_has;
#else
  return false;
#endif
}

std::string current_isa() { return use_avx2() ? "avx2" : "default"; }

void set_isa(const std::string& isa) {
  TORCH_CHECK(isa == "auto" || isa == "avx2" || isa == "default",
              "mmdeform.ops.set_isa: expected auto, avx2 or default, got '", isa, "'");
  isa_setting() = isa;
  use_avx2();  // raises now if avx2 is forced on a CPU without it
}

// Checks shapes, dtypes and levels; returns the sizes. The Python wrapper makes the
// tensors contiguous and of one floating dtype, so these are the C++ caller's errors.
template <typename T>
Args<T> make_args(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& level_start,
                  const at::Tensor& loc, const at::Tensor& attn) {
  for (const at::Tensor* t : {&value, &shapes, &level_start, &loc, &attn}) {
    TORCH_CHECK(t->device().is_cpu(), "mmdeform.ops: expected CPU tensors");
    TORCH_CHECK(t->is_contiguous(), "mmdeform.ops: expected contiguous tensors");
  }
  TORCH_CHECK(value.dim() == 4, "value must be (B, Nv, M, D), got ", value.sizes());
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2,
              "sampling_locations must be (B, Nq, M, L, K, 2), got ", loc.sizes());
  const int64_t B = value.size(0), Nv = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Nq = loc.size(1), L = loc.size(3), K = loc.size(4);
  TORCH_CHECK(loc.size(0) == B && loc.size(2) == M,
              "sampling_locations ", loc.sizes(), " does not match value ", value.sizes(),
              " in batch or heads");
  TORCH_CHECK(attn.sizes() == at::IntArrayRef({B, Nq, M, L, K}),
              "attention_weights must be (B, Nq, M, L, K) = (", B, ", ", Nq, ", ", M, ", ", L,
              ", ", K, "), got ", attn.sizes());
  TORCH_CHECK(shapes.scalar_type() == at::kLong && shapes.dim() == 2 && shapes.size(0) == L &&
                  shapes.size(1) == 2,
              "spatial_shapes must be int64 (L, 2) with L = ", L, ", got ", shapes.scalar_type(),
              " ", shapes.sizes());
  TORCH_CHECK(level_start.scalar_type() == at::kLong && level_start.numel() == L,
              "level_start_index must be int64 with L = ", L, " entries, got ",
              level_start.scalar_type(), " ", level_start.sizes());
  const int64_t* hw = shapes.data_ptr<int64_t>();
  const int64_t* start = level_start.data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(hw[2 * l] > 0 && hw[2 * l + 1] > 0, "spatial_shapes[", l, "] = (", hw[2 * l], ", ",
                hw[2 * l + 1], ") must be positive");
    TORCH_CHECK(start[l] >= 0 && start[l] + hw[2 * l] * hw[2 * l + 1] <= Nv, "level ", l,
                " (start ", start[l], ", ", hw[2 * l], " x ", hw[2 * l + 1],
                ") reaches past the ", Nv, " value rows");
  }
  return Args<T>{value.data_ptr<T>(), loc.data_ptr<T>(), attn.data_ptr<T>(), hw, start,
                 B, Nv, M, D, Nq, L, K};
}

// A fresh large tensor is mapped anew by malloc, and its first write costs a page fault
// per 4 KiB: for the backward's three gradients at 800x1066 that was ~11k faults, more
// time than the arithmetic. Transparent huge pages, where the kernel allows them
// (madvise mode, the default on many systems), make that a fault per 2 MiB.
at::Tensor empty_huge(const at::Tensor& like, at::IntArrayRef sizes = {}) {
  at::Tensor t = sizes.empty() ? at::empty_like(like) : at::empty(sizes, like.options());
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kPage = 4096, kHuge = 2 << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kPage - 1) & ~(kPage - 1);
  if (end > first + 2 * kHuge) madvise(reinterpret_cast<void*>(first), (end - first) & ~(kPage - 1), MADV_HUGEPAGE);
#endif
  return t;
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& level_start,
                   const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK(loc.scalar_type() == value.scalar_type() && attn.scalar_type() == value.scalar_type(),
              "mmdeform.ops: value, sampling_locations and attention_weights must share a dtype");
  at::Tensor out = at::empty({loc.size(0), loc.size(1), value.size(2) * value.size(3)},
                             value.options());
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "mmdeform_msda_forward", [&] {
    const Args<scalar_t> a = make_args<scalar_t>(value, shapes, level_start, loc, attn);
    scalar_t* o = out.data_ptr<scalar_t>();
    // About 16 sampled rows of D channels per (query, head): a few hundred queries a task.
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, a.M * a.L * a.K));
    at::parallel_for(0, a.B * a.Nq, grain, [&](int64_t begin, int64_t end) {
#ifdef MMDEFORM_MSDA_HAVE_AVX2
      if (avx2) return entry_AVX2::forward(a, o, begin, end);
#endif
      entry_DEFAULT::forward(a, o, begin, end);
    });
  });
  return out;
}

std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& value,
                                 const at::Tensor& shapes, const at::Tensor& level_start,
                                 const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == value.scalar_type() &&
                  grad_out.numel() == loc.size(0) * loc.size(1) * value.size(2) * value.size(3),
              "mmdeform.ops: grad_output must be contiguous (B, Nq, M*D) of the value's dtype");
  at::Tensor grad_value;
  at::Tensor grad_loc = empty_huge(loc);
  at::Tensor grad_attn = empty_huge(attn);
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "mmdeform_msda_backward", [&] {
    const Args<scalar_t> a = make_args<scalar_t>(value, shapes, level_start, loc, attn);
    grad_value = empty_huge(value);  // the kernel writes every row
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    scalar_t* gv = grad_value.data_ptr<scalar_t>();
    scalar_t* gl = grad_loc.data_ptr<scalar_t>();
    scalar_t* ga = grad_attn.data_ptr<scalar_t>();
    // Each thread's copy of one head's value and value gradient (see the kernel).
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), a.B * a.M);
    at::Tensor scratch = empty_huge(value, {threads, 2 * a.Nv * a.D});
    // One task per (batch, head): it owns that head's value gradient.
    at::parallel_for(0, a.B * a.M, 1, [&](int64_t begin, int64_t end) {
      scalar_t* own = scratch[at::get_thread_num()].data_ptr<scalar_t>();
#ifdef MMDEFORM_MSDA_HAVE_AVX2
      if (avx2) return entry_AVX2::backward(a, g, gv, gl, ga, own, begin, end);
#endif
      entry_DEFAULT::backward(a, g, gv, gl, ga, own, begin, end);
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace
}  // namespace mmdeform::msda


PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mmdeform: multi-scale deformable attention and neighbourhood attention on the CPU";
  m.def("forward", &mmdeform::msda::forward, "forward (value, spatial_shapes, level_start_index, "
        "sampling_locations, attention_weights) -> (B, Nq, M*D)");
  m.def("backward", &mmdeform::msda::backward, "backward (grad_output, value, spatial_shapes, "
        "level_start_index, sampling_locations, attention_weights) -> (grad_value, "
        "grad_sampling_locations, grad_attention_weights)");
  m.def("isa", &mmdeform::msda::current_isa, "the kernels in use: avx2 or default");
  m.def("set_isa", &mmdeform::msda::set_isa, "auto | avx2 | default");
  m.def("na_qk_forward", &mmdeform::na::qk_forward, "(q, k, kernel) -> logits (N, H, W, k*k)");
  m.def("na_qk_backward", &mmdeform::na::qk_backward, "(grad_logits, q, k, kernel) -> (dq, dk)");
  m.def("na_av_forward", &mmdeform::na::av_forward, "(attn, v, kernel) -> out (N, H, W, C)");
  m.def("na_av_backward", &mmdeform::na::av_backward, "(grad_out, attn, v, kernel) -> (dattn, dv)");
}
