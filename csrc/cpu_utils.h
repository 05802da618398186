// Vectorised row helpers of the CPU kernels: every kernel computes in float32 on rows of its tensors.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace dpir_fast {
namespace cpu {

using Vec = at::vec::Vectorized<float>;

// n values of src as float: src itself for float, else converted into tmp.
template <typename T>
inline const float* load_row(const T* src, float* tmp, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    at::vec::convert(src, tmp, n);
    return tmp;
  }
}

// Where a float row bound for dst is computed: dst itself for float, else tmp (then store_row).
template <typename T>
inline float* out_row(T* dst, float* tmp) {
  if constexpr (std::is_same_v<T, float>) {
    return dst;
  } else {
    return tmp;
  }
}

template <typename T>
inline void store_row(T* dst, const float* src, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) {
    at::vec::convert(src, dst, n);
  }
}

// max(a, b) that keeps NaN, as torch.amax and relu do (std::max keeps it only as its first argument, fmax never);
// cuda::nan_max on the device.
inline float nan_max(float a, float b) { return (std::isnan(a) || a > b) ? a : b; }

inline float sum_all(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

inline float max_all(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

// acc[i] += a[i] for i < n.
inline void add_to(float* acc, const float* a, int64_t n) {
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) (Vec::loadu(acc + i) + Vec::loadu(a + i)).store(acc + i);
  for (; i < n; ++i) acc[i] += a[i];
}

// Σ a[i].
inline float row_sum(const float* a, int64_t n) {
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) acc = acc + Vec::loadu(a + i);
  float s = sum_all(acc);
  for (; i < n; ++i) s += a[i];
  return s;
}

inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

// acc[i][j] = Σ_k a[i][k] · b[k·ldb + j] for i < 4, j < 16: the register block of the CPU GEMMs. AVX2/FMA when the
// CPU has it (chosen at run time, so the extension builds and runs without -mavx2), plain loops otherwise.
void gemm_4x16_generic(int64_t K, const float* const a[4], const float* b, int64_t ldb, float (*acc)[16]);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2,fma"))) void gemm_4x16_avx2(int64_t K, const float* const a[4], const float* b,
                                                        int64_t ldb, float (*acc)[16]);
#endif

inline void gemm_4x16(int64_t K, const float* const a[4], const float* b, int64_t ldb, float (*acc)[16]) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return gemm_4x16_avx2(K, a, b, ldb, acc);
#endif
  gemm_4x16_generic(K, a, b, ldb, acc);
}

// Pixel tiles of a [B, HW] problem: ceil(HW / tile) tiles per batch, tile chosen so a tile's working set fits L2.
struct Tiling {
  int64_t tile, per_batch;
  Tiling(int64_t hw, int64_t target) : tile(std::max<int64_t>(1, std::min(hw, target))),
                                       per_batch((hw + tile - 1) / tile) {}
};

}  // namespace cpu
}  // namespace dpir_fast
