// Multi-scale deformable attention on the CPU: the per-row kernels.
//
// This header is compiled once per instruction set (kernel_default.cpp, kernel_avx2.cpp),
// each time with its own CPU_CAPABILITY, so at::vec::Vectorized is the SSE/AVX2 type of
// that translation unit and the functions land in namespace mmdeform::msda::<ISA>.
// It includes only ATen's vector headers: the threading and the tensor checks live in
// ms_deform_attn_cpu.cpp, compiled once with the default flags.
//
// Semantics are those of mmcv's multi_scale_deformable_attn_pytorch (F.grid_sample,
// bilinear, zero padding, align_corners=False): a location (x, y) in [0, 1] of level l
// is read at pixel (x * W_l - 0.5, y * H_l - 0.5), and each of the four bilinear
// corners that falls outside the map contributes zero.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "ms_deform_attn_args.h"

namespace mmdeform::msda {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// The four bilinear corners of one sampling point: value-row offsets (-1 when the corner
// is outside the map) and interpolation weights, plus the fractional parts the
// location gradient needs.
template <typename T>
struct Bilinear {
  int64_t row[4];
  T weight[4];
  T lx, ly;
  bool any;

  // x, y in pixels of a map of H x W; row_stride = M * D.
  inline void setup(T x, T y, int64_t H, int64_t W, int64_t row_stride) {
    // floor() of values far outside the map would overflow int64: such points read
    // nothing, exactly as grid_sample's zero padding (a NaN location also lands here).
    any = x >= T(-1) && y >= T(-1) && x < T(W) && y < T(H);
    if (!any) return;
    const T x0f = std::floor(x), y0f = std::floor(y);
    const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
    lx = x - x0f;
    ly = y - y0f;
    const T hx = T(1) - lx, hy = T(1) - ly;
    const bool x0_in = x0 >= 0, x1_in = x0 + 1 < W, y0_in = y0 >= 0, y1_in = y0 + 1 < H;
    row[0] = (y0_in && x0_in) ? (y0 * W + x0) * row_stride : -1;
    row[1] = (y0_in && x1_in) ? (y0 * W + x0 + 1) * row_stride : -1;
    row[2] = (y1_in && x0_in) ? ((y0 + 1) * W + x0) * row_stride : -1;
    row[3] = (y1_in && x1_in) ? ((y0 + 1) * W + x0 + 1) * row_stride : -1;
    weight[0] = hy * hx;
    weight[1] = hy * lx;
    weight[2] = ly * hx;
    weight[3] = ly * lx;
  }
};

// Sum of a vector's lanes in a fixed order (the result does not depend on threads).
template <typename T>
inline T lane_sum(const Vectorized<T>& v) {
  __at_align__ T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T s = T(0);
  for (int i = 0; i < Vectorized<T>::size(); ++i) s += lanes[i];
  return s;
}

// The four lane sums of d[0..3] (fixed order). With AVX2 three horizontal adds do all
// four at once; this is a fifth of the backward's instructions otherwise.
template <typename T>
inline void lane_sums4(const Vectorized<T> (&d)[4], T (&out)[4]) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 t01 = _mm256_hadd_ps(d[0], d[1]);  // d0 01 23, d1 01 23 | d0 45 67, d1 45 67
    const __m256 t23 = _mm256_hadd_ps(d[2], d[3]);
    const __m256 t = _mm256_hadd_ps(t01, t23);      // d0..d3 over lanes 0-3 | over lanes 4-7
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    return;
  }
#endif
  for (int c = 0; c < 4; ++c) out[c] = lane_sum(d[c]);
}

// ---------------------------------------------------------------------------------------
// Forward: out[b, q, m, :] = sum_{l,k} A[b,q,m,l,k] * bilinear(value_l[b, :, m, :], loc).
// NV > 0: D == NV * Vectorized<T>::size(), accumulators in registers.
// NV == 0: any D, accumulated in the output row.
template <typename T, int NV>
void forward_rows(const Args<T>& a, T* out, int64_t begin, int64_t end) {
  using Vec = Vectorized<T>;
  constexpr int S = Vec::size();
  const int64_t M = a.M, D = a.D, L = a.L, K = a.K, Nq = a.Nq, Nv = a.Nv;
  const int64_t row_stride = M * D;
  // Heads in the inner loop: a value row holds all heads (M * D, 1 KiB), and a loop over
  // one head would use only every M-th cache set (the backward copies its head instead).
  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / Nq;
    for (int64_t m = 0; m < M; ++m) {
      const int64_t head = bq * M + m;
      const T* loc = a.loc + head * L * K * 2;
      const T* attn = a.attn + head * L * K;
      T* out_row = out + head * D;
      Vec acc[NV > 0 ? NV : 1];
      if constexpr (NV > 0) {
        for (int v = 0; v < NV; ++v) acc[v] = Vec(T(0));
      } else {
        for (int64_t d = 0; d < D; ++d) out_row[d] = T(0);
      }
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = a.shapes[2 * l], W = a.shapes[2 * l + 1];
        const T* base = a.value + (b * Nv + a.level_start[l]) * row_stride + m * D;
        for (int64_t k = 0; k < K; ++k, loc += 2, ++attn) {
          Bilinear<T> bl;
          bl.setup(loc[0] * T(W) - T(0.5), loc[1] * T(H) - T(0.5), H, W, row_stride);
          if (!bl.any) continue;
          for (int c = 0; c < 4; ++c) {
            if (bl.row[c] < 0) continue;
            const T* v = base + bl.row[c];
            const T w = *attn * bl.weight[c];
            const Vec wv(w);
            if constexpr (NV > 0) {
              for (int i = 0; i < NV; ++i) acc[i] = at::vec::fmadd(wv, Vec::loadu(v + i * S), acc[i]);
            } else {
              int64_t d = 0;
              for (; d + S <= D; d += S)
                at::vec::fmadd(wv, Vec::loadu(v + d), Vec::loadu(out_row + d)).store(out_row + d);
              for (; d < D; ++d) out_row[d] += w * v[d];
            }
          }
        }
      }
      if constexpr (NV > 0) {
        for (int i = 0; i < NV; ++i) acc[i].store(out_row + i * S);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward for the (batch, head) pairs [begin, end). A pair owns its head's value
// gradient grad_value[b, :, m, :] and the location / weight gradients of its points,
// so pairs run in parallel without races, and each visits its queries in order: the
// result is the same bit for bit whatever the number of threads.
//
// A pair works on a contiguous (Nv, D) copy of its head's value and value gradient:
// its scattered reads and writes then stay within a few pages instead of striding over
// all heads' rows (1 KiB apart, which also maps one head to every M-th cache set); this
// is about twice as fast as working in place. Rows outside every level are zero.
template <typename T, int NV>
void backward_heads(const Args<T>& a, const T* grad_out, T* grad_value, T* grad_loc,
                    T* grad_attn, int64_t begin, int64_t end) {
  using Vec = Vectorized<T>;
  constexpr int S = Vec::size();
  const int64_t M = a.M, D = a.D, L = a.L, K = a.K, Nq = a.Nq, Nv = a.Nv;
  const int64_t row_stride = M * D;
  std::unique_ptr<T[]> value_head(new T[Nv * D]), grad_head(new T[Nv * D]);
  for (int64_t bm = begin; bm < end; ++bm) {
    const int64_t b = bm / M, m = bm % M;
    const int64_t first_row = b * Nv * row_stride + m * D;
    for (int64_t r = 0; r < Nv; ++r)
      std::copy_n(a.value + first_row + r * row_stride, D, &value_head[r * D]);
    std::fill_n(grad_head.get(), Nv * D, T(0));
    for (int64_t q = 0; q < Nq; ++q) {
      const int64_t head = (b * Nq + q) * M + m;
      const T* g = grad_out + head * D;
      const T* loc = a.loc + head * L * K * 2;
      const T* attn = a.attn + head * L * K;
      T* gloc = grad_loc + head * L * K * 2;
      T* gattn = grad_attn + head * L * K;
      Vec gv[NV > 0 ? NV : 1];
      if constexpr (NV > 0) {
        for (int i = 0; i < NV; ++i) gv[i] = Vec::loadu(g + i * S);
      }
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = a.shapes[2 * l], W = a.shapes[2 * l + 1];
        const T* vbase = &value_head[a.level_start[l] * D];
        T* gbase = &grad_head[a.level_start[l] * D];
        for (int64_t k = 0; k < K; ++k, loc += 2, ++attn, gloc += 2, ++gattn) {
          Bilinear<T> bl;
          bl.setup(loc[0] * T(W) - T(0.5), loc[1] * T(H) - T(0.5), H, W, D);
          if (!bl.any) {
            gloc[0] = gloc[1] = gattn[0] = T(0);
            continue;
          }
          Vec dots[4] = {Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};  // grad_out * corner
          T tail[4] = {T(0), T(0), T(0), T(0)};
          for (int c = 0; c < 4; ++c) {
            if (bl.row[c] < 0) continue;
            const T* v = vbase + bl.row[c];
            T* gvrow = gbase + bl.row[c];
            const T w = *attn * bl.weight[c];
            const Vec wv(w);
            if constexpr (NV > 0) {
              for (int i = 0; i < NV; ++i) {
                dots[c] = at::vec::fmadd(gv[i], Vec::loadu(v + i * S), dots[c]);
                at::vec::fmadd(wv, gv[i], Vec::loadu(gvrow + i * S)).store(gvrow + i * S);
              }
            } else {
              int64_t i = 0;
              for (; i + S <= D; i += S) {
                const Vec gi = Vec::loadu(g + i);
                dots[c] = at::vec::fmadd(gi, Vec::loadu(v + i), dots[c]);
                at::vec::fmadd(wv, gi, Vec::loadu(gvrow + i)).store(gvrow + i);
              }
              for (; i < D; ++i) {
                tail[c] += g[i] * v[i];
                gvrow[i] += w * g[i];
              }
            }
          }
          T dot[4];  // <grad_out, corner value>, zero for corners outside the map
          lane_sums4(dots, dot);
          for (int c = 0; c < 4; ++c) dot[c] += tail[c];
          const T lx = bl.lx, ly = bl.ly, hx = T(1) - lx, hy = T(1) - ly;
          gattn[0] = bl.weight[0] * dot[0] + bl.weight[1] * dot[1] + bl.weight[2] * dot[2] +
                     bl.weight[3] * dot[3];
          // d(pixel)/d(location) is W (x) and H (y).
          gloc[0] = *attn * (hy * (dot[1] - dot[0]) + ly * (dot[3] - dot[2])) * T(W);
          gloc[1] = *attn * (hx * (dot[2] - dot[0]) + lx * (dot[3] - dot[1])) * T(H);
        }
      }
    }
    for (int64_t r = 0; r < Nv; ++r)
      std::copy_n(&grad_head[r * D], D, grad_value + first_row + r * row_stride);
  }
}

// The register-blocked variants cover D = S, 2S, 4S, 8S; anything else takes NV = 0.
template <typename T>
inline int blocks_for(int64_t D) {
  constexpr int S = Vectorized<T>::size();
  if (D % S != 0) return 0;
  const int64_t nv = D / S;
  return (nv == 1 || nv == 2 || nv == 4 || nv == 8) ? static_cast<int>(nv) : 0;
}

template <typename T>
void forward_dispatch(const Args<T>& a, T* out, int64_t begin, int64_t end) {
  switch (blocks_for<T>(a.D)) {
    case 1: return forward_rows<T, 1>(a, out, begin, end);
    case 2: return forward_rows<T, 2>(a, out, begin, end);
    case 4: return forward_rows<T, 4>(a, out, begin, end);
    case 8: return forward_rows<T, 8>(a, out, begin, end);
    default: return forward_rows<T, 0>(a, out, begin, end);
  }
}

template <typename T>
void backward_dispatch(const Args<T>& a, const T* grad_out, T* grad_value, T* grad_loc,
                       T* grad_attn, int64_t begin, int64_t end) {
  switch (blocks_for<T>(a.D)) {
    case 1: return backward_heads<T, 1>(a, grad_out, grad_value, grad_loc, grad_attn, begin, end);
    case 2: return backward_heads<T, 2>(a, grad_out, grad_value, grad_loc, grad_attn, begin, end);
    case 4: return backward_heads<T, 4>(a, grad_out, grad_value, grad_loc, grad_attn, begin, end);
    case 8: return backward_heads<T, 8>(a, grad_out, grad_value, grad_loc, grad_attn, begin, end);
    default: return backward_heads<T, 0>(a, grad_out, grad_value, grad_loc, grad_attn, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace mmdeform::msda

// One translation unit per instruction set defines these entry points.
#define MMDEFORM_MSDA_DEFINE_ENTRY_POINTS(ISA)                                                 \
  namespace mmdeform::msda::entry_##ISA {                                                      \
  void forward(const Args<float>& a, float* out, int64_t b, int64_t e) {                       \
    mmdeform::msda::forward_dispatch<float>(a, out, b, e);                                     \
  }                                                                                            \
  void forward(const Args<double>& a, double* out, int64_t b, int64_t e) {                     \
    mmdeform::msda::forward_dispatch<double>(a, out, b, e);                                    \
  }                                                                                            \
  void backward(const Args<float>& a, const float* g, float* gv, float* gl, float* ga,         \
                int64_t b, int64_t e) {                                                        \
    mmdeform::msda::backward_dispatch<float>(a, g, gv, gl, ga, b, e);                          \
  }                                                                                            \
  void backward(const Args<double>& a, const double* g, double* gv, double* gl, double* ga,    \
                int64_t b, int64_t e) {                                                        \
    mmdeform::msda::backward_dispatch<double>(a, g, gv, gl, ga, b, e);                         \
  }                                                                                            \
  }
