// What the kernels of every instruction set share: the inputs as raw pointers and sizes,
// and the declarations of each instruction set's entry points.
#pragma once

#include <cstdint>

namespace mmdeform::msda {

// All tensors contiguous, in mmcv's layout:
//   value (B, Nv, M, D); loc (B, Nq, M, L, K, 2) with (x, y) in [0, 1];
//   attn (B, Nq, M, L, K); shapes (L, 2) = (H, W); level_start (L).
template <typename T>
struct Args {
  const T* value;
  const T* loc;
  const T* attn;
  const int64_t* shapes;
  const int64_t* level_start;
  int64_t B, Nv, M, D, Nq, L, K;
};

#define MMDEFORM_MSDA_DECLARE_ENTRY_POINTS(ISA)                                                \
  namespace entry_##ISA {                                                                      \
  void forward(const Args<float>&, float*, int64_t, int64_t);                                  \
  void forward(const Args<double>&, double*, int64_t, int64_t);                                \
  void backward(const Args<float>&, const float*, float*, float*, float*, int64_t, int64_t);   \
  void backward(const Args<double>&, const double*, double*, double*, double*, int64_t,        \
                int64_t);                                                                      \
  }

MMDEFORM_MSDA_DECLARE_ENTRY_POINTS(DEFAULT)
MMDEFORM_MSDA_DECLARE_ENTRY_POINTS(AVX2)

}  // namespace mmdeform::msda
