// skff on CUDA: selective kernel feature fusion of three streams (DESIGN.md §4) in three launches on the current
// stream: per-tile channel sums of x0 + x1 + x2 (no U tensor), the per-batch MLP + softmax in one block, and the
// weighted sum out = Σ_k a_k ⊙ x_k with 16-byte loads and stores.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.h"
#include "cuda_utils.cuh"

namespace dpir_fast {
namespace cuda {
namespace {

struct UpWeights {
  const float* w[3];  // [C, d] float32 each
};

// attn [B, 3, C] = softmax over k of W_up[k] · PReLU(W_down · mean_HW(x0 + x1 + x2)); one block per batch image.
__global__ void __launch_bounds__(kThreads) attention_kernel(const float* __restrict__ partial, int ntiles, int C,
                                                             int d, float inv_hw, const float* __restrict__ wd,
                                                             const float* __restrict__ slope, int nslope,
                                                             UpWeights wu, float* __restrict__ attn) {
  extern __shared__ float smem[];  // mean [C], z [d], scratch [kThreads]
  float *mean = smem, *z = mean + C, *scratch = z + d;
  const int b = blockIdx.x;
  reduce_tiles(partial + int64_t(b) * ntiles * C, ntiles, C, inv_hw, mean, scratch);
  warp_matvec(wd, mean, d, C, z, [=](int j, float s) { return s >= 0.f ? s : slope[nslope == 1 ? 0 : j] * s; });
  for (int c = threadIdx.x; c < C; c += kThreads) {
    float l[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      l[k] = 0.f;
      for (int j = 0; j < d; ++j) l[k] += wu.w[k][int64_t(c) * d + j] * z[j];
    }
    const float m = nan_max(l[0], nan_max(l[1], l[2]));
    const float e0 = expf(l[0] - m), e1 = expf(l[1] - m), e2 = expf(l[2] - m), inv = 1.f / (e0 + e1 + e2);
    float* a = attn + int64_t(b) * 3 * C + c;
    a[0] = e0 * inv, a[C] = e1 * inv, a[2 * C] = e2 * inv;
  }
}

// out = Σ_k attn[b, k, c] · x_k, VEC elements at a time along the contiguous dimension (VEC > 1 only when that
// dimension is a multiple of VEC and all pointers are 16-byte aligned).

// NCHW: grid (tiles, C, B), so a block row is one (b, c) plane and its three weights are scalars.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) weighted_sum_nchw_kernel(Inputs<T, 3> in, const float* __restrict__ attn,
                                                                     int C, int64_t HW, T* __restrict__ out) {
  const int b = blockIdx.z, c = blockIdx.y;
  const float* w = attn + int64_t(b) * 3 * C + c;
  const float w0 = w[0], w1 = w[C], w2 = w[2 * C];
  const int64_t plane = (int64_t(b) * C + c) * HW, stride = int64_t(gridDim.x) * kThreads * VEC;
  for (int64_t e = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * VEC; e < HW; e += stride) {
    float x0[VEC], x1[VEC], x2[VEC], o[VEC];
    load_pack<T, VEC>(in.p[0] + plane + e, x0);
    load_pack<T, VEC>(in.p[1] + plane + e, x1);
    load_pack<T, VEC>(in.p[2] + plane + e, x2);
#pragma unroll
    for (int j = 0; j < VEC; ++j) o[j] = w0 * x0[j] + w1 * x1[j] + w2 * x2[j];
    store_pack<T, VEC>(out + plane + e, o);
  }
}

// Channels-last: grid (tiles, channel chunks, B), block (tx, ty); thread (x, y) keeps the 3 · VEC weights of channel
// vector blockIdx.y · tx + x in registers and walks pixels y, y + ty, ... of its tile (grid-stride over tiles).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) weighted_sum_nhwc_kernel(Inputs<T, 3> in, const float* __restrict__ attn,
                                                                     int C, int64_t HW, T* __restrict__ out) {
  const int b = blockIdx.z, c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
  if (c >= C) return;
  float w[3][VEC];
#pragma unroll
  for (int k = 0; k < 3; ++k) load_pack<float, VEC>(attn + (int64_t(b) * 3 + k) * C + c, w[k]);
  const int64_t first = int64_t(blockIdx.x) * blockDim.y + threadIdx.y, stride = int64_t(gridDim.x) * blockDim.y;
  int64_t off = (int64_t(b) * HW + first) * C + c;
  for (int64_t p = first; p < HW; p += stride, off += stride * C) {
    float x0[VEC], x1[VEC], x2[VEC], o[VEC];
    load_pack<T, VEC>(in.p[0] + off, x0);
    load_pack<T, VEC>(in.p[1] + off, x1);
    load_pack<T, VEC>(in.p[2] + off, x2);
#pragma unroll
    for (int j = 0; j < VEC; ++j) o[j] = w[0][j] * x0[j] + w[1][j] * x1[j] + w[2][j] * x2[j];
    store_pack<T, VEC>(out + off, o);
  }
}

// One wave of resident blocks, spread over the B · C planes (NCHW) or the B · chunks channel slices (CL).
template <typename T, int VEC>
void launch_weighted_sum(const Inputs<T, 3>& in, const float* attn, int64_t B, int C, int64_t HW, bool nhwc, T* out,
                         cudaStream_t stream) {
  if (!nhwc) {
    const int64_t tiles = (HW + kThreads * VEC - 1) / (kThreads * VEC);
    const int64_t want = (resident_blocks(weighted_sum_nchw_kernel<T, VEC>, kThreads) + B * C - 1) / (B * C);
    const dim3 grid(unsigned(std::min(tiles, want)), C, B);
    weighted_sum_nchw_kernel<T, VEC><<<grid, kThreads, 0, stream>>>(in, attn, C, HW, out);
  } else {
    const int cv = C / VEC, chunks = (cv + kThreads - 1) / kThreads, tx = (cv + chunks - 1) / chunks;
    const int ty = kThreads / tx;
    const int64_t tiles = (HW + ty - 1) / ty;
    const int64_t want = (resident_blocks(weighted_sum_nhwc_kernel<T, VEC>, tx * ty) + B * chunks - 1) / (B * chunks);
    const dim3 grid(unsigned(std::min(tiles, want)), chunks, B);
    weighted_sum_nhwc_kernel<T, VEC><<<grid, dim3(tx, ty), 0, stream>>>(in, attn, C, HW, out);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor skff_cuda(const at::Tensor& x0_in, const at::Tensor& x1_in, const at::Tensor& x2_in,
                     const at::Tensor& w_down, const at::Tensor& prelu, const at::Tensor& w_up0,
                     const at::Tensor& w_up1, const at::Tensor& w_up2) {
  check_skff(x0_in, x1_in, x2_in, w_down, prelu, w_up0, w_up1, w_up2);
  const c10::cuda::CUDAGuard guard(x0_in.device());
  const auto fmt = layout_of(x0_in);
  const at::Tensor x0 = x0_in.contiguous(fmt), x1 = x1_in.contiguous(fmt), x2 = x2_in.contiguous(fmt);
  const int64_t B = x0.size(0), C = x0.size(1), HW = x0.size(2) * x0.size(3);
  TORCH_CHECK(C <= kMaxChannels, "dpir_fast::skff: x0 must have at most ", kMaxChannels, " channels on CUDA, got ", C);
  TORCH_CHECK(B <= 65535, "dpir_fast::skff: batch must be at most 65535 on CUDA, got ", B);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor wd = as_matrix(w_down), slope = prelu.to(at::kFloat).contiguous();
  const at::Tensor u0 = as_matrix(w_up0), u1 = as_matrix(w_up1), u2 = as_matrix(w_up2);
  const int d = int(wd.size(0));
  const auto f32 = x0.options().dtype(at::kFloat);
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(fmt)), attn = at::empty({B, 3, C}, f32);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DPIR_FAST_DISPATCH(x0.scalar_type(), "dpir_fast::skff", [&] {
    using T = scalar_t;
    const Inputs<T, 3> in{{x0.const_data_ptr<T>(), x1.const_data_ptr<T>(), x2.const_data_ptr<T>()}};
    T* op = out.mutable_data_ptr<T>();
    const ReducePlan plan = plan_reduce(in, B, int(C), HW, nhwc);
    at::Tensor partial = at::empty({B, plan.ntiles, C}, f32);
    launch_reduce<T, 3, false>(plan, in, B, int(C), HW, nhwc, partial.mutable_data_ptr<float>(), nullptr, stream);
    attention_kernel<<<B, kThreads, sizeof(float) * (C + d + kThreads), stream>>>(
        partial.const_data_ptr<float>(), plan.ntiles, int(C), d, 1.f / HW, wd.const_data_ptr<float>(),
        slope.const_data_ptr<float>(), int(slope.numel()),
        UpWeights{{u0.const_data_ptr<float>(), u1.const_data_ptr<float>(), u2.const_data_ptr<float>()}},
        attn.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int kVec = 16 / sizeof(T);
    const bool vec = plan.vec > 1 && aligned16(op);  // plan.vec: inputs aligned, contiguous dim % kVec == 0
    const float* ap = attn.const_data_ptr<float>();
    if (vec) launch_weighted_sum<T, kVec>(in, ap, B, int(C), HW, nhwc, op, stream);
    else launch_weighted_sum<T, 1>(in, ap, B, int(C), HW, nhwc, op, stream);
  });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(dpir_fast, CUDA, m) { m.impl("skff", &cuda::skff_cuda); }

}  // namespace dpir_fast
