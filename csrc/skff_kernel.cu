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

// out = Σ_k attn[b, k, c] · x_k over all elements, VEC at a time along the contiguous dimension (pixels for NCHW,
// channels for CL; VEC > 1 only when that dimension is a multiple of VEC and all pointers are 16-byte aligned).
template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads) weighted_sum_kernel(Inputs<T, 3> in, const float* __restrict__ attn,
                                                                int C, int64_t HW, int64_t nvec,
                                                                T* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < nvec; i += int64_t(gridDim.x) * kThreads) {
    const int64_t e = i * VEC;
    float a[VEC], b[VEC], c[VEC], o[VEC];
    load_pack<T, VEC>(in.p[0] + e, a);
    load_pack<T, VEC>(in.p[1] + e, b);
    load_pack<T, VEC>(in.p[2] + e, c);
    if (!CL) {  // one channel: three scalar weights
      const int64_t bc = e / HW;
      const float* w = attn + (bc / C) * 3 * C + bc % C;
      const float w0 = w[0], w1 = w[C], w2 = w[2 * C];
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = w0 * a[j] + w1 * b[j] + w2 * c[j];
    } else {  // VEC consecutive channels of one pixel
      const float* w = attn + (e / (HW * C)) * 3 * C + e % C;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = w[j] * a[j] + w[C + j] * b[j] + w[2 * C + j] * c[j];
    }
    store_pack<T, VEC>(out + e, o);
  }
}

template <typename T, int VEC, bool CL>
void launch_weighted_sum(const Inputs<T, 3>& in, const float* attn, int C, int64_t HW, int64_t numel, T* out,
                         cudaStream_t stream) {
  const int64_t nvec = numel / VEC;
  const int64_t blocks = std::min<int64_t>((nvec + kThreads - 1) / kThreads, int64_t(sm_count()) * 16);
  weighted_sum_kernel<T, VEC, CL><<<blocks, kThreads, 0, stream>>>(in, attn, C, HW, nvec, out);
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
    if (nhwc && vec) launch_weighted_sum<T, kVec, true>(in, ap, int(C), HW, out.numel(), op, stream);
    else if (nhwc) launch_weighted_sum<T, 1, true>(in, ap, int(C), HW, out.numel(), op, stream);
    else if (vec) launch_weighted_sum<T, kVec, false>(in, ap, int(C), HW, out.numel(), op, stream);
    else launch_weighted_sum<T, 1, false>(in, ap, int(C), HW, out.numel(), op, stream);
  });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(dpir_fast, CUDA, m) { m.impl("skff", &cuda::skff_cuda); }

}  // namespace dpir_fast
