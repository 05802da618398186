// Device helpers shared by the CUDA kernels: packed 16-byte loads, warp-shuffle reductions, and the first pass of
// both ops (per-channel sums over a tile of pixels, optionally per-pixel max/mean over channels).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace dpir_fast {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChannels = 1024;     // bounds the shared memory (32 KiB) and the registers of the reductions
constexpr int kReduceBlocksPerSm = 4;  // pass 1 is sized for this many resident blocks per SM

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// N consecutive values at p (aligned to N elements) as float.
template <typename T, int N>
__device__ __forceinline__ void load_pack(const T* __restrict__ p, float (&out)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = static_cast<float>(pack.v[j]);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* __restrict__ p, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int j = 0; j < N; ++j) pack.v[j] = static_cast<T>(in[j]);
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// Reductions over aligned groups of `width` lanes (a power of two ≤ 32); every lane of the warp must call.
__device__ __forceinline__ float group_sum(float v, int width = 32) {
  for (int o = width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// max(a, b) that keeps NaN, as torch.amax and relu do (fmaxf drops it); cpu::nan_max on the host.
__device__ __forceinline__ float nan_max(float a, float b) { return (::isnan(a) || a > b) ? a : b; }

__device__ __forceinline__ float group_max(float v, int width = 32) {
  for (int o = width / 2; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Halving steps O, O/2, ..., 1 of warp_transpose_sum: lanes with bit O set keep v[O, 2O), the others v[0, O); each
// adds its partner's copy of the half it keeps into v[0, O).
template <int O, int N>
__device__ __forceinline__ void transpose_sum_steps(float (&v)[N], int lane) {
  if constexpr (O > 0) {
    const bool upper = lane & O;
#pragma unroll
    for (int i = 0; i < O; ++i) {
      const float lo = v[i], hi = v[i + O];  // values, not a select of addresses (that goes to local memory)
      v[i] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, O);
    }
    transpose_sum_steps<O / 2>(v, lane);
  }
}

// Lane l gets Σ over the warp's lanes of v[l % N] (N a power of two ≤ 32): a reduce-scatter within groups of N
// lanes, then a butterfly across the groups; N - 1 + log2(32 / N) shuffles instead of 5 N.
template <int N>
__device__ __forceinline__ float warp_transpose_sum(float (&v)[N]) {
  const int lane = threadIdx.x % 32;
  transpose_sum_steps<N / 2>(v, lane);
  float s = v[0];
#pragma unroll
  for (int o = N; o < 32; o *= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + expf(-v)); }

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

inline int sm_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Blocks of `kernel` with `threads` threads that fit on the device at once: the grid of a one-wave grid-stride loop.
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads, size_t smem = 0) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return std::max(per_sm, 1) * sm_count();
}

// Out[b, c] = mean over HW of partial[b, :, c] (the tiles of the first pass), into shared memory.
// `scratch` holds blockDim.x floats; ends with a __syncthreads().
__device__ inline void reduce_tiles(const float* __restrict__ partial, int ntiles, int C, float scale,
                                    float* out, float* scratch) {
  const int tid = threadIdx.x, n = blockDim.x;
  if (C <= n && n % C == 0) {  // thread tid always sees channel tid % C
    float acc = 0.f;
    for (int i = tid; i < ntiles * C; i += n) acc += partial[i];
    scratch[tid] = acc;
    __syncthreads();
    if (tid < C) {
      float s = 0.f;
      for (int k = tid; k < n; k += C) s += scratch[k];
      out[tid] = s * scale;
    }
  } else {
    for (int c = tid; c < C; c += n) {
      float s = 0.f;
      for (int t = 0; t < ntiles; ++t) s += partial[t * C + c];
      out[c] = s * scale;
    }
  }
  __syncthreads();
}

// out[j] = act(j, Σ_c w[j, c] · v[c]) for j < rows: one warp per row (w [rows, cols] global, v and out shared);
// ends with a __syncthreads().
template <typename Act>
__device__ inline void warp_matvec(const float* __restrict__ w, const float* v, int rows, int cols, float* out,
                                   Act act) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < rows; j += blockDim.x / 32) {
    float s = 0.f;
    for (int c = lane; c < cols; c += 32) s += w[int64_t(j) * cols + c] * v[c];
    s = group_sum(s);
    if (lane == 0) out[j] = act(j, s);
  }
  __syncthreads();
}

template <typename T, int NIN>
struct Inputs {
  const T* p[NIN];
};

// NCHW pass 1: thread = VEC consecutive pixels, loop over channels kChunk at a time; a warp transpose-sums each
// chunk so lane l < kChunk adds the warp's total of channel c0 + l to the warp's shared row (one conflict-free
// read-modify-write per chunk). partial [B, ntiles, C]; with POOL also pooled [B, 2, HW] = (max_C, mean_C).
template <typename T, int VEC, int NIN, bool POOL>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm)
    reduce_nchw_kernel(Inputs<T, NIN> in, int C, int64_t HW, int iters, float* __restrict__ partial,
                       float* __restrict__ pooled) {
  constexpr int kChunk = 8;
  extern __shared__ float rows[];  // [kWarps, C]
  const int b = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = threadIdx.x; i < kWarps * C; i += kThreads) rows[i] = 0.f;
  __syncthreads();
  float* row = rows + warp * C;
  for (int it = 0; it < iters; ++it) {  // same trip counts in every thread: the shuffles see all lanes
    const int64_t p = ((int64_t(blockIdx.x) * iters + it) * kThreads + threadIdx.x) * VEC;
    const bool valid = p < HW;  // VEC > 1 only when HW % VEC == 0
    int64_t off = int64_t(b) * C * HW + p;  // advances by HW per channel
    float mx[VEC], sm[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) mx[j] = -INFINITY, sm[j] = 0.f;
    for (int c0 = 0; c0 < C; c0 += kChunk) {
      float s[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i, off += HW) {
        float v[VEC] = {};
        const bool live = c0 + i < C;
        if (valid && live) {
#pragma unroll
          for (int k = 0; k < NIN; ++k) {
            float t[VEC];
            load_pack<T, VEC>(in.p[k] + off, t);
#pragma unroll
            for (int j = 0; j < VEC; ++j) v[j] += t[j];
          }
        }
        s[i] = 0.f;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          s[i] += v[j];
          if (POOL && live) mx[j] = nan_max(v[j], mx[j]), sm[j] += v[j];
        }
      }
      const float total = warp_transpose_sum(s);
      if (lane < kChunk && c0 + lane < C) row[c0 + lane] += total;
    }
    if (POOL && valid) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        pooled[int64_t(b) * 2 * HW + p + j] = mx[j];
        pooled[(int64_t(b) * 2 + 1) * HW + p + j] = sm[j] / C;
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += kThreads) {
    float s = 0.f;
    for (int w = 0; w < kWarps; ++w) s += rows[w * C + c];
    partial[(int64_t(b) * gridDim.x + blockIdx.x) * C + c] = s;
  }
}

// NHWC pass 1: a group of `lpp` lanes per pixel (a power of two ≤ 32); lane `sub` of the group owns the channel
// vectors sub, sub + lpp, ... and sums them in registers over the whole tile; per-pixel max/mean by group shuffles.
// At the end each lane writes its sums once into its group's shared row, and the rows are summed into partial.
// Needs lpp = 32 or lpp ≥ C / VEC (plan_reduce), so that kSlots vectors per lane cover all C ≤ kMaxChannels.
template <typename T, int VEC, int NIN, bool POOL>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm)
    reduce_nhwc_kernel(Inputs<T, NIN> in, int C, int64_t HW, int iters, int lpp, float* __restrict__ partial,
                       float* __restrict__ pooled) {
  constexpr int kSlots = kMaxChannels / (32 * VEC);
  extern __shared__ float rows[];  // [kThreads / lpp, C]
  const int b = blockIdx.y, shift = __ffs(lpp) - 1, groups = kThreads >> shift;
  const int group = threadIdx.x >> shift, sub = threadIdx.x & (lpp - 1);
  const int cv = C / VEC;  // VEC > 1 only when C % VEC == 0
  float acc[kSlots][VEC] = {};
  int64_t p = int64_t(blockIdx.x) * iters * groups + group;
  int64_t off = (int64_t(b) * HW + p) * C;  // of the pixel's channel 0; advances by groups · C per step
  for (int it = 0; it < iters; ++it, p += groups, off += groups * C) {
    float mx = -INFINITY, sm = 0.f;
    if (p < HW) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int v = sub + s * lpp;
        if (v >= cv) break;
        float x[VEC] = {};
#pragma unroll
        for (int k = 0; k < NIN; ++k) {
          float t[VEC];
          load_pack<T, VEC>(in.p[k] + off + v * VEC, t);
#pragma unroll
          for (int j = 0; j < VEC; ++j) x[j] += t[j];
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          acc[s][j] += x[j];
          if (POOL) mx = nan_max(x[j], mx), sm += x[j];
        }
      }
    }
    if (POOL) {
      mx = group_max(mx, lpp);
      sm = group_sum(sm, lpp);
      if (sub == 0 && p < HW) {
        pooled[int64_t(b) * 2 * HW + p] = mx;
        pooled[(int64_t(b) * 2 + 1) * HW + p] = sm / C;
      }
    }
  }
  float* row = rows + group * C;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int v = sub + s * lpp;
    if (v >= cv) break;
#pragma unroll
    for (int j = 0; j < VEC; ++j) row[v * VEC + j] = acc[s][j];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += kThreads) {
    float s = 0.f;
    for (int g = 0; g < groups; ++g) s += rows[g * C + c];
    partial[(int64_t(b) * gridDim.x + blockIdx.x) * C + c] = s;
  }
}

// How pass 1 splits [B, HW] into blocks: ntiles blocks per batch image of `iters` steps each.
struct ReducePlan {
  int vec, lpp, iters, ntiles;
  size_t smem;
};

template <typename T, int NIN>
ReducePlan plan_reduce(const Inputs<T, NIN>& in, int64_t B, int C, int64_t HW, bool nhwc) {
  constexpr int kVec = 16 / sizeof(T);
  bool vec_ok = (nhwc ? C % kVec : HW % kVec) == 0;
  for (int k = 0; k < NIN; ++k) vec_ok = vec_ok && aligned16(in.p[k]);
  ReducePlan plan{vec_ok ? kVec : 1, 1, 1, 1, 0};
  const int cv = C / plan.vec;
  while (plan.lpp < 32 && plan.lpp < cv) plan.lpp *= 2;
  const int64_t unit = nhwc ? kThreads / plan.lpp : int64_t(kThreads) * plan.vec;  // pixels of one step
  const int64_t steps = (HW + unit - 1) / unit;
  const int64_t want = std::max<int64_t>(1, (kReduceBlocksPerSm * sm_count() + B - 1) / B);
  plan.iters = int((steps + std::min(steps, want) - 1) / std::min(steps, want));
  plan.ntiles = int((steps + plan.iters - 1) / plan.iters);
  plan.smem = sizeof(float) * C * (nhwc ? kThreads / plan.lpp : kWarps);
  return plan;
}

template <typename T, int NIN, bool POOL>
void launch_reduce(const ReducePlan& plan, const Inputs<T, NIN>& in, int64_t B, int C, int64_t HW, bool nhwc,
                   float* partial, float* pooled, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const dim3 grid(plan.ntiles, B);
  if (nhwc && plan.vec > 1) {
    reduce_nhwc_kernel<T, kVec, NIN, POOL><<<grid, kThreads, plan.smem, stream>>>(in, C, HW, plan.iters, plan.lpp,
                                                                                   partial, pooled);
  } else if (nhwc) {
    reduce_nhwc_kernel<T, 1, NIN, POOL><<<grid, kThreads, plan.smem, stream>>>(in, C, HW, plan.iters, plan.lpp,
                                                                               partial, pooled);
  } else if (plan.vec > 1) {
    reduce_nchw_kernel<T, kVec, NIN, POOL><<<grid, kThreads, plan.smem, stream>>>(in, C, HW, plan.iters, partial,
                                                                                   pooled);
  } else {
    reduce_nchw_kernel<T, 1, NIN, POOL><<<grid, kThreads, plan.smem, stream>>>(in, C, HW, plan.iters, partial,
                                                                               pooled);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace dpir_fast
