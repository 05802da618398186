// skff on CPU: selective kernel feature fusion of three streams in two passes (DESIGN.md §4), no U = Σ x_k tensor.
//   1. per-channel sums of x0 + x1 + x2;
//   2. per batch: z = PReLU(W_down · mean), a_k = softmax_k(W_up_k · z) [3, C];
//   3. out = Σ_k a_k ⊙ x_k.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "common.h"
#include "cpu_utils.h"

namespace dpir_fast {
namespace {
using namespace cpu;

constexpr int64_t kChunk = 2048;  // pixels of one NCHW channel row handled at a time
constexpr int64_t kTile = 128;    // pixels of one NHWC tile

template <typename T>
using Inputs = std::array<const T*, 3>;

// Pass 1: chsum [B, C] = Σ_HW (x0 + x1 + x2).
template <typename T>
void channel_sums(const Inputs<T>& in, int64_t B, int64_t C, int64_t HW, bool nhwc, float* chsum) {
  if (!nhwc) {
    at::parallel_for(0, B * C, std::max<int64_t>(1, 32768 / (3 * HW)), [&](int64_t begin, int64_t end) {
      std::vector<float> tmp(kChunk);
      for (int64_t bc = begin; bc < end; ++bc) {
        float s = 0.f;
        for (int64_t p0 = 0; p0 < HW; p0 += kChunk) {
          const int64_t n = std::min(kChunk, HW - p0);
          for (const T* src : in) s += row_sum(load_row(src + bc * HW + p0, tmp.data(), n), n);
        }
        chsum[bc] = s;
      }
    });
    return;
  }
  const Tiling t(HW, kTile);
  std::vector<float> part(B * t.per_batch * C, 0.f);
  const int64_t grain = std::max<int64_t>(1, 32768 / (3 * t.tile * C));  // small problems run inline
  at::parallel_for(0, B * t.per_batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(C);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / t.per_batch, p0 = (item % t.per_batch) * t.tile, P = std::min(t.tile, HW - p0);
      float* cs = part.data() + item * C;
      for (int64_t p = 0; p < P; ++p)
        for (const T* src : in) add_to(cs, load_row(src + (b * HW + p0 + p) * C, tmp.data(), C), C);
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    std::fill(chsum + b * C, chsum + (b + 1) * C, 0.f);
    for (int64_t k = 0; k < t.per_batch; ++k) add_to(chsum + b * C, part.data() + (b * t.per_batch + k) * C, C);
  }
}

// Pass 2: attn [B, 3, C] = softmax over k of W_up_k · PReLU(W_down · chsum / HW).
void attention(const float* chsum, const at::Tensor& wd, const at::Tensor& slope,
               const std::array<at::Tensor, 3>& wu, int64_t B, int64_t C, int64_t HW, float* attn) {
  const int64_t d = wd.size(0);
  const float *pd = wd.data_ptr<float>(), *ps = slope.data_ptr<float>();
  std::vector<float> z(d);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < d; ++j) {
      float a = 0.f;
      for (int64_t c = 0; c < C; ++c) a += pd[j * C + c] * chsum[b * C + c];
      a /= HW;
      z[j] = a >= 0.f ? a : ps[slope.numel() == 1 ? 0 : j] * a;
    }
    for (int64_t c = 0; c < C; ++c) {
      float l[3];
      for (int k = 0; k < 3; ++k) {
        const float* pu = wu[k].data_ptr<float>() + c * d;
        l[k] = 0.f;
        for (int64_t j = 0; j < d; ++j) l[k] += pu[j] * z[j];
      }
      const float m = nan_max(l[0], nan_max(l[1], l[2]));
      const float e0 = std::exp(l[0] - m), e1 = std::exp(l[1] - m), e2 = std::exp(l[2] - m), sum = e0 + e1 + e2;
      attn[(b * 3 + 0) * C + c] = e0 / sum;
      attn[(b * 3 + 1) * C + c] = e1 / sum;
      attn[(b * 3 + 2) * C + c] = e2 / sum;
    }
  }
}

// Pass 3: out = Σ_k attn[b, k, c] · x_k.
template <typename T>
void weighted_sum(const Inputs<T>& in, const float* attn, int64_t B, int64_t C, int64_t HW, bool nhwc, T* out) {
  const int64_t rows = nhwc ? B * HW : B * C, len = nhwc ? C : HW;
  const int64_t chunk = nhwc ? C : kChunk, chunks = (len + chunk - 1) / chunk;
  at::parallel_for(0, rows * chunks, std::max<int64_t>(1, 16384 / chunk), [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(4 * chunk);
    float *t0 = tmp.data(), *t1 = t0 + chunk, *t2 = t1 + chunk, *to = t2 + chunk;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / chunks, p0 = (item % chunks) * chunk, n = std::min(chunk, len - p0);
      const int64_t off = row * len + p0;
      const float *a = load_row(in[0] + off, t0, n), *b = load_row(in[1] + off, t1, n),
                  *c = load_row(in[2] + off, t2, n);
      float* o = out_row(out + off, to);
      if (!nhwc) {  // one channel: scalar weights
        const float* w = attn + ((row / C) * 3) * C + row % C;
        const Vec w0(w[0]), w1(w[C]), w2(w[2 * C]);
        int64_t i = 0;
        for (; i + Vec::size() <= n; i += Vec::size())
          (w0 * Vec::loadu(a + i) + w1 * Vec::loadu(b + i) + w2 * Vec::loadu(c + i)).store(o + i);
        for (; i < n; ++i) o[i] = w[0] * a[i] + w[C] * b[i] + w[2 * C] * c[i];
      } else {  // one pixel: per-channel weights
        const float* w = attn + (row / HW) * 3 * C;
        int64_t i = 0;
        for (; i + Vec::size() <= n; i += Vec::size())
          (Vec::loadu(w + i) * Vec::loadu(a + i) + Vec::loadu(w + C + i) * Vec::loadu(b + i) +
           Vec::loadu(w + 2 * C + i) * Vec::loadu(c + i)).store(o + i);
        for (; i < n; ++i) o[i] = w[i] * a[i] + w[C + i] * b[i] + w[2 * C + i] * c[i];
      }
      store_row(out + off, o, n);
    }
  });
}

at::Tensor skff_cpu(const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w_down,
                    const at::Tensor& prelu, const at::Tensor& w_up0, const at::Tensor& w_up1,
                    const at::Tensor& w_up2) {
  check_skff(x0, x1, x2, w_down, prelu, w_up0, w_up1, w_up2);
  const auto fmt = layout_of(x0);
  const std::array<at::Tensor, 3> x{x0.contiguous(fmt), x1.contiguous(fmt), x2.contiguous(fmt)};
  const int64_t B = x0.size(0), C = x0.size(1), HW = x0.size(2) * x0.size(3);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const auto f32 = x0.options().dtype(at::kFloat);
  at::Tensor chsum = at::empty({B, C}, f32), attn = at::empty({B, 3, C}, f32);
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(fmt));
  const at::Tensor slope = prelu.to(at::kFloat).contiguous();
  DPIR_FAST_DISPATCH(x0.scalar_type(), "dpir_fast::skff", [&] {
    const Inputs<scalar_t> in{x[0].const_data_ptr<scalar_t>(), x[1].const_data_ptr<scalar_t>(),
                              x[2].const_data_ptr<scalar_t>()};
    channel_sums(in, B, C, HW, nhwc, chsum.data_ptr<float>());
    attention(chsum.data_ptr<float>(), as_matrix(w_down), slope, {as_matrix(w_up0), as_matrix(w_up1), as_matrix(w_up2)},
              B, C, HW, attn.data_ptr<float>());
    weighted_sum(in, attn.data_ptr<float>(), B, C, HW, nhwc, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dpir_fast, CPU, m) { m.impl("skff", &skff_cpu); }

}  // namespace dpir_fast
