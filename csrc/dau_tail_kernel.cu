// dau_tail on CUDA: out = x + s_sp ⊙ (W₁ r) + (W₂·diag(s_ch)) r (DESIGN.md §4) in four launches on the current stream:
//   1. reduce: per-channel sums of r (per tile) and the per-pixel [max_C r, mean_C r] map [B, 2, HW];
//   2. channel attention: one block per batch image, s_ch = sigmoid(W_up relu(W_down mean_HW r)) [B, C];
//   3. spatial attention: s_sp = sigmoid(conv5×5(map)) [B, HW];
//   4. output: a tiled GEMM of [W₁; W₂·diag(s_ch)] with r, epilogue x + s_sp·(W₁ r) + W₂' r.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.h"
#include "cuda_utils.cuh"

namespace dpir_fast {
namespace cuda {
namespace {

// 2. s_ch [B, C]; wd [Cr, C], wu [C, Cr] float32.
__global__ void __launch_bounds__(kThreads) channel_attention_kernel(const float* __restrict__ partial, int ntiles,
                                                                     int C, int Cr, float inv_hw,
                                                                     const float* __restrict__ wd,
                                                                     const float* __restrict__ wu,
                                                                     float* __restrict__ sch) {
  extern __shared__ float smem[];  // mean [C], hidden [Cr], scratch [kThreads]
  float *mean = smem, *hidden = mean + C, *scratch = hidden + Cr;
  const int b = blockIdx.x;
  reduce_tiles(partial + int64_t(b) * ntiles * C, ntiles, C, inv_hw, mean, scratch);
  warp_matvec(wd, mean, Cr, C, hidden, [](int, float s) { return nan_max(s, 0.f); });
  for (int c = threadIdx.x; c < C; c += kThreads) {
    float s = 0.f;
    for (int j = 0; j < Cr; ++j) s += wu[int64_t(c) * Cr + j] * hidden[j];
    sch[int64_t(b) * C + c] = sigmoidf(s);
  }
}

// 3. ssp [B, HW] from pooled [B, 2, H, W] and w_sa [2, 5, 5], zero padding 2.
__global__ void __launch_bounds__(kThreads) spatial_attention_kernel(const float* __restrict__ pooled,
                                                                     const float* __restrict__ wsa, int64_t B,
                                                                     int H, int W, float* __restrict__ ssp) {
  __shared__ float w[50];
  if (threadIdx.x < 50) w[threadIdx.x] = wsa[threadIdx.x];
  __syncthreads();
  const int64_t HW = int64_t(H) * W, idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= B * HW) return;
  const int64_t b = idx / HW;
  const int i = int((idx % HW) / W), j = int(idx % W);
  float acc = 0.f;
  for (int ch = 0; ch < 2; ++ch) {
    const float* src = pooled + (b * 2 + ch) * HW;
#pragma unroll
    for (int u = 0; u < 5; ++u) {
      const int y = i + u - 2;
      if (y < 0 || y >= H) continue;
#pragma unroll
      for (int v = 0; v < 5; ++v) {
        const int xx = j + v - 2;
        if (xx >= 0 && xx < W) acc += w[(ch * 5 + u) * 5 + v] * src[int64_t(y) * W + xx];
      }
    }
  }
  ssp[idx] = sigmoidf(acc);
}

constexpr int kTM = 64;  // output channels of a block (16 thread rows × 4)
constexpr int kTN = 64;  // pixels of a block (16 thread columns × 4)

// 4. out [B, C, HW] (NCHW) or [B, HW, C] (CL); w [C, 2C] float32 = [W₁ | W₂]. KC input channels per step;
// LV-wide loads along the contiguous dimension (LV > 1: that dimension is a multiple of LV and all pointers are
// 16-byte aligned, so the thread's 4 outputs along it are one aligned store).
template <typename T, int KC, int LV, bool CL>
__global__ void __launch_bounds__(kThreads) output_kernel(const T* __restrict__ r, const T* __restrict__ x,
                                                          const float* __restrict__ w, const float* __restrict__ sch,
                                                          const float* __restrict__ ssp, int C, int64_t HW,
                                                          T* __restrict__ out) {
  __shared__ __align__(16) float ws1[KC][kTM];
  __shared__ __align__(16) float ws2[KC][kTM];
  __shared__ __align__(16) float rs[KC][kTN];
  const int b = blockIdx.z, m0 = blockIdx.y * kTM, tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t n0 = int64_t(blockIdx.x) * kTN;
  const T* rb = r + int64_t(b) * C * HW;
  float acc1[4][4] = {}, acc2[4][4] = {};
  for (int k0 = 0; k0 < C; k0 += KC) {
    for (int e = threadIdx.x; e < KC * kTM; e += kThreads) {  // consecutive threads: consecutive k of one W row
      const int m = e / KC, k = e % KC, gm = m0 + m, gk = k0 + k;
      const bool ok = gm < C && gk < C;
      ws1[k][m] = ok ? w[int64_t(gm) * 2 * C + gk] : 0.f;
      ws2[k][m] = ok ? w[int64_t(gm) * 2 * C + C + gk] * sch[int64_t(b) * C + gk] : 0.f;
    }
    for (int e = threadIdx.x; e < KC * kTN / LV; e += kThreads) {
      float v[LV] = {};
      if (!CL) {  // row k of the tile: LV consecutive pixels
        const int k = e / (kTN / LV), n = (e % (kTN / LV)) * LV;
        if (k0 + k < C && n0 + n < HW) load_pack<T, LV>(rb + int64_t(k0 + k) * HW + n0 + n, v);
#pragma unroll
        for (int j = 0; j < LV; ++j) rs[k][n + j] = v[j];
      } else {  // pixel n of the tile: LV consecutive channels
        const int n = e / (KC / LV), k = (e % (KC / LV)) * LV;
        if (k0 + k < C && n0 + n < HW) load_pack<T, LV>(rb + (n0 + n) * C + k0 + k, v);
#pragma unroll
        for (int j = 0; j < LV; ++j) rs[k + j][n] = v[j];
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < KC; ++k) {
      const float4 a1 = *reinterpret_cast<const float4*>(&ws1[k][ty * 4]);
      const float4 a2 = *reinterpret_cast<const float4*>(&ws2[k][ty * 4]);
      const float4 bv = *reinterpret_cast<const float4*>(&rs[k][tx * 4]);
      const float w1[4] = {a1.x, a1.y, a1.z, a1.w}, w2[4] = {a2.x, a2.y, a2.z, a2.w}, rv[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc1[i][j] += w1[i] * rv[j], acc2[i][j] += w2[i] * rv[j];
    }
    __syncthreads();
  }
  const float* sb = ssp + int64_t(b) * HW;
  const int gm0 = m0 + ty * 4;
  const int64_t gn0 = n0 + tx * 4;
  if (LV > 1) {  // 4 outputs along the contiguous dimension at once (all valid or all out of range), a across it
    if (gm0 >= C || gn0 >= HW) return;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      if (CL ? gn0 + a >= HW : gm0 + a >= C) break;
      float xv[4], o[4];
      const int64_t off = CL ? (int64_t(b) * HW + gn0 + a) * C + gm0 : (int64_t(b) * C + gm0 + a) * HW + gn0;
      load_pack<T, 4>(x + off, xv);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int i = CL ? q : a, j = CL ? a : q;  // i: channel, j: pixel
        o[q] = xv[q] + sb[gn0 + j] * acc1[i][j] + acc2[i][j];
      }
      store_pack<T, 4>(out + off, o);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int gm = gm0 + i;
        const int64_t gn = gn0 + j;
        if (gm >= C || gn >= HW) continue;
        const int64_t off = CL ? (int64_t(b) * HW + gn) * C + gm : (int64_t(b) * C + gm) * HW + gn;
        out[off] = static_cast<T>(static_cast<float>(x[off]) + sb[gn] * acc1[i][j] + acc2[i][j]);
      }
  }
}

template <typename T, int LV, bool CL>
void launch_output(const T* r, const T* x, const float* w, const float* sch, const float* ssp, int64_t B, int C,
                   int64_t HW, T* out, cudaStream_t stream) {
  constexpr int KC = 64 / sizeof(T);  // 16 (float32) or 32 (16-bit): one 16-byte load per thread and step
  const dim3 grid((HW + kTN - 1) / kTN, (C + kTM - 1) / kTM, B);
  output_kernel<T, KC, LV, CL><<<grid, kThreads, 0, stream>>>(r, x, w, sch, ssp, C, HW, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor dau_tail_cuda(const at::Tensor& r_in, const at::Tensor& x_in, const at::Tensor& w_sa,
                         const at::Tensor& w_ca_down, const at::Tensor& w_ca_up, const at::Tensor& w_out) {
  check_dau_tail(r_in, x_in, w_sa, w_ca_down, w_ca_up, w_out);
  const c10::cuda::CUDAGuard guard(r_in.device());
  const auto fmt = layout_of(r_in);
  const at::Tensor r = r_in.contiguous(fmt), x = x_in.contiguous(fmt);
  const int64_t B = r.size(0), C = r.size(1), H = r.size(2), W = r.size(3), HW = H * W;
  TORCH_CHECK(C <= kMaxChannels, "dpir_fast::dau_tail: r must have at most ", kMaxChannels,
              " channels on CUDA, got ", C);
  TORCH_CHECK(B <= 65535, "dpir_fast::dau_tail: batch must be at most 65535 on CUDA, got ", B);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor wd = as_matrix(w_ca_down), wu = as_matrix(w_ca_up), wo = as_matrix(w_out);
  const at::Tensor wsa = w_sa.to(at::kFloat).contiguous();
  const int Cr = int(wd.size(0));
  const auto f32 = r.options().dtype(at::kFloat);
  at::Tensor out = at::empty(r.sizes(), r.options().memory_format(fmt));
  at::Tensor pooled = at::empty({B, 2, HW}, f32), sch = at::empty({B, C}, f32), ssp = at::empty({B, HW}, f32);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DPIR_FAST_DISPATCH(r.scalar_type(), "dpir_fast::dau_tail", [&] {
    using T = scalar_t;
    const T *rp = r.const_data_ptr<T>(), *xp = x.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    const Inputs<T, 1> in{{rp}};
    const ReducePlan plan = plan_reduce(in, B, int(C), HW, nhwc);
    at::Tensor partial = at::empty({B, plan.ntiles, C}, f32);
    launch_reduce<T, 1, true>(plan, in, B, int(C), HW, nhwc, partial.mutable_data_ptr<float>(),
                              pooled.mutable_data_ptr<float>(), stream);
    channel_attention_kernel<<<B, kThreads, sizeof(float) * (C + Cr + kThreads), stream>>>(
        partial.const_data_ptr<float>(), plan.ntiles, int(C), Cr, 1.f / HW, wd.const_data_ptr<float>(),
        wu.const_data_ptr<float>(), sch.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    spatial_attention_kernel<<<(B * HW + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        pooled.const_data_ptr<float>(), wsa.const_data_ptr<float>(), B, int(H), int(W), ssp.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int kVec = 16 / sizeof(T);
    const bool vec = (nhwc ? C % kVec : HW % kVec) == 0 && aligned16(rp) && aligned16(xp) && aligned16(op);
    const float *wp = wo.const_data_ptr<float>(), *sp = sch.const_data_ptr<float>(), *ap = ssp.const_data_ptr<float>();
    if (nhwc && vec) launch_output<T, kVec, true>(rp, xp, wp, sp, ap, B, int(C), HW, op, stream);
    else if (nhwc) launch_output<T, 1, true>(rp, xp, wp, sp, ap, B, int(C), HW, op, stream);
    else if (vec) launch_output<T, kVec, false>(rp, xp, wp, sp, ap, B, int(C), HW, op, stream);
    else launch_output<T, 1, false>(rp, xp, wp, sp, ap, B, int(C), HW, op, stream);
  });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(dpir_fast, CUDA, m) { m.impl("dau_tail", &cuda::dau_tail_cuda); }

}  // namespace dpir_fast
