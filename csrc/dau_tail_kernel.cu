// dau_attention on CUDA, the attention half of dau_tail (DESIGN.md §4), three launches on the current stream:
//   1. reduce: per-channel sums of r (per tile) and the per-pixel [max_C r, mean_C r] map [B, 2, HW];
//   2. channel attention, one block per batch image: s_ch = sigmoid(W_up relu(W_down mean_HW r)), written folded
//      into the GEMM operand fold [B, C, 2C] = [W₁ᵀ | (W₂·diag(s_ch))ᵀ] in r's dtype;
//   3. spatial attention: s_sp = sigmoid(conv5×5(map)) [B, H, W].
// The tail's GEMM out = x + s_sp ⊙ (W₁ r) + W₂' r runs on tensor cores in Triton (kernels/dau_tail.py), which
// registers itself as dau_tail's CUDA kernel.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "common.h"
#include "cuda_utils.cuh"

namespace dpir_fast {
namespace cuda {
namespace {

// 2. fold [B, C, 2C] (T); wd [Cr, C], wu [C, Cr], wo [C, 2C] float32.
template <typename T>
__global__ void __launch_bounds__(kThreads) channel_attention_kernel(const float* __restrict__ partial, int ntiles,
                                                                     int C, int Cr, float inv_hw,
                                                                     const float* __restrict__ wd,
                                                                     const float* __restrict__ wu,
                                                                     const float* __restrict__ wo,
                                                                     T* __restrict__ fold) {
  extern __shared__ float smem[];  // mean [C], hidden [Cr], s_ch [C], scratch [kThreads]
  float *mean = smem, *hidden = mean + C, *sch = hidden + Cr, *scratch = sch + C;
  const int b = blockIdx.x;
  reduce_tiles(partial + int64_t(b) * ntiles * C, ntiles, C, inv_hw, mean, scratch);
  warp_matvec(wd, mean, Cr, C, hidden, [](int, float s) { return nan_max(s, 0.f); });
  for (int c = threadIdx.x; c < C; c += kThreads) {
    float s = 0.f;
    for (int j = 0; j < Cr; ++j) s += wu[c * Cr + j] * hidden[j];
    sch[c] = sigmoidf(s);
  }
  __syncthreads();
  T* out = fold + int64_t(b) * C * 2 * C;
  for (int e = threadIdx.x; e < C * 2 * C; e += kThreads) {  // consecutive threads: consecutive o of one row k
    const int k = e / (2 * C), o = e % (2 * C);
    out[e] = static_cast<T>(o < C ? wo[o * 2 * C + k] : wo[(o - C) * 2 * C + C + k] * sch[k]);
  }
}

constexpr int kTileX = 32, kTileY = kThreads / kTileX;

// 3. ssp [B, H, W] from pooled [B, 2, H, W] and w_sa [2, 5, 5], zero padding 2; grid (⌈W/32⌉, ⌈H/8⌉, B).
__global__ void __launch_bounds__(kThreads) spatial_attention_kernel(const float* __restrict__ pooled,
                                                                     const float* __restrict__ wsa, int H, int W,
                                                                     float* __restrict__ ssp) {
  __shared__ float w[50];
  if (threadIdx.x < 50) w[threadIdx.x] = wsa[threadIdx.x];
  __syncthreads();
  const int j = blockIdx.x * kTileX + threadIdx.x % kTileX, i = blockIdx.y * kTileY + threadIdx.x / kTileX;
  if (i >= H || j >= W) return;
  const int64_t HW = int64_t(H) * W, b = blockIdx.z;
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
  ssp[b * HW + int64_t(i) * W + j] = sigmoidf(acc);
}

std::tuple<at::Tensor, at::Tensor> dau_attention_cuda(const at::Tensor& r_in, const at::Tensor& w_sa,
                                                      const at::Tensor& w_ca_down, const at::Tensor& w_ca_up,
                                                      const at::Tensor& w_out) {
  check_dau_weights("dpir_fast::dau_attention", r_in, w_sa, w_ca_down, w_ca_up, w_out);
  const c10::cuda::CUDAGuard guard(r_in.device());
  const auto fmt = layout_of(r_in);
  const at::Tensor r = r_in.contiguous(fmt);
  const int64_t B = r.size(0), C = r.size(1), H = r.size(2), W = r.size(3), HW = H * W;
  TORCH_CHECK(C <= kMaxChannels, "dpir_fast::dau_attention: r must have at most ", kMaxChannels,
              " channels on CUDA, got ", C);
  TORCH_CHECK(B <= 65535, "dpir_fast::dau_attention: batch must be at most 65535 on CUDA, got ", B);
  TORCH_CHECK((H + kTileY - 1) / kTileY <= 65535, "dpir_fast::dau_attention: height must be at most ",
              65535 * kTileY, " on CUDA, got ", H);
  const at::Tensor wd = as_matrix(w_ca_down), wu = as_matrix(w_ca_up), wo = as_matrix(w_out);
  const at::Tensor wsa = w_sa.to(at::kFloat).contiguous();
  const int Cr = int(wd.size(0));
  const auto f32 = r.options().dtype(at::kFloat);
  at::Tensor fold = at::empty({B, C, 2 * C}, r.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor pooled = at::empty({B, 2, HW}, f32), ssp = at::empty({B, H, W}, f32);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DPIR_FAST_DISPATCH(r.scalar_type(), "dpir_fast::dau_attention", [&] {
    using T = scalar_t;
    const Inputs<T, 1> in{{r.const_data_ptr<T>()}};
    const ReducePlan plan = plan_reduce(in, B, int(C), HW, fmt == at::MemoryFormat::ChannelsLast);
    at::Tensor partial = at::empty({B, plan.ntiles, C}, f32);
    launch_reduce<T, 1, true>(plan, in, B, int(C), HW, fmt == at::MemoryFormat::ChannelsLast,
                              partial.mutable_data_ptr<float>(), pooled.mutable_data_ptr<float>(), stream);
    channel_attention_kernel<T><<<B, kThreads, sizeof(float) * (2 * C + Cr + kThreads), stream>>>(
        partial.const_data_ptr<float>(), plan.ntiles, int(C), Cr, 1.f / HW, wd.const_data_ptr<float>(),
        wu.const_data_ptr<float>(), wo.const_data_ptr<float>(), fold.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const dim3 grid((W + kTileX - 1) / kTileX, (H + kTileY - 1) / kTileY, B);
  spatial_attention_kernel<<<grid, kThreads, 0, stream>>>(pooled.const_data_ptr<float>(), wsa.const_data_ptr<float>(),
                                                          int(H), int(W), ssp.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {fold, ssp};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(dpir_fast, CUDA, m) { m.impl("dau_attention", &cuda::dau_attention_cuda); }

}  // namespace dpir_fast
