// dau_tail on CPU: out = x + s_sp ⊙ (W₁ r) + (W₂·diag(s_ch)) r (DESIGN.md §4), no SA(r), CA(r) or cat tensor.
//   1. one pass over r: per-pixel max and mean over C (into a zero-padded [B, 2, H+4, W+4] map), per-channel sums;
//   2. per batch: s_ch (channel-attention MLP) folded into W₂' = W₂·diag(s_ch), packed with W₁ for the GEMM;
//      s_sp = sigmoid(conv5×5(map));
//   3. per pixel tile: [W₁; W₂'] · r_tile in 4×16 register blocks, each finished as
//      out = x + s_sp·(W₁r) + W₂'r.
// dau_attention: passes 1 and 2 alone, returning W₂' with W₁ and s_sp (CUDA's dau_tail does its GEMM in Triton).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu_utils.h"

namespace dpir_fast {
namespace {
using namespace cpu;

struct Shape {
  int64_t B, C, H, W, HW;
  bool nhwc;
};

// mx = max(mx, row), sm += row over n pixels of one channel; returns Σ row.
inline float pool_channel(const float* row, float* mx, float* sm, int64_t n) {
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec v = Vec::loadu(row + i);
    at::vec::maximum(Vec::loadu(mx + i), v).store(mx + i);
    (Vec::loadu(sm + i) + v).store(sm + i);
    acc = acc + v;
  }
  float s = sum_all(acc);
  for (; i < n; ++i) {
    mx[i] = nan_max(row[i], mx[i]);
    sm[i] += row[i];
    s += row[i];
  }
  return s;
}

inline float row_max(const float* a, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  if (n >= Vec::size()) {
    Vec acc = Vec::loadu(a);
    for (i = Vec::size(); i + Vec::size() <= n; i += Vec::size()) acc = at::vec::maximum(acc, Vec::loadu(a + i));
    m = max_all(acc);
  }
  for (; i < n; ++i) m = nan_max(a[i], m);
  return m;
}

// Pass 1: pad [B, 2, H+4, W+4] (zeroed) gets max_C r and mean_C r; chsum [B, C] gets Σ_HW r.
template <typename T>
void reduce_pass(const T* r, const Shape& s, float* pad, float* chsum) {
  const int64_t C = s.C, HW = s.HW, Hp = s.H + 4, Wp = s.W + 4;
  const Tiling t(HW, s.nhwc ? 256 : 4096);
  std::vector<float> part(s.B * t.per_batch * C);
  const int64_t grain = std::max<int64_t>(1, 65536 / (t.tile * C));  // small problems run inline
  at::parallel_for(0, s.B * t.per_batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(2 * t.tile + std::max(t.tile, C));
    float *mx = buf.data(), *sm = mx + t.tile, *tmp = sm + t.tile;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / t.per_batch, p0 = (item % t.per_batch) * t.tile, P = std::min(t.tile, HW - p0);
      float* cs = part.data() + item * C;
      if (!s.nhwc) {
        std::fill(mx, mx + P, -std::numeric_limits<float>::infinity());
        std::fill(sm, sm + P, 0.f);
        for (int64_t c = 0; c < C; ++c) cs[c] = pool_channel(load_row(r + (b * C + c) * HW + p0, tmp, P), mx, sm, P);
      } else {
        std::fill(cs, cs + C, 0.f);
        for (int64_t p = 0; p < P; ++p) {
          const float* row = load_row(r + (b * HW + p0 + p) * C, tmp, C);
          mx[p] = row_max(row, C);
          sm[p] = row_sum(row, C);
          add_to(cs, row, C);
        }
      }
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = (p0 + p) / s.W + 2, j = (p0 + p) % s.W + 2;
        pad[((b * 2) * Hp + i) * Wp + j] = mx[p];
        pad[((b * 2 + 1) * Hp + i) * Wp + j] = sm[p] / C;
      }
    }
  });
  for (int64_t b = 0; b < s.B; ++b) {
    std::fill(chsum + b * C, chsum + (b + 1) * C, 0.f);
    for (int64_t k = 0; k < t.per_batch; ++k) add_to(chsum + b * C, part.data() + (b * t.per_batch + k) * C, C);
  }
}

// The packed GEMM operand of [W₁; W₂'] per batch image, zero beyond C. NCHW (weights on the left):
// [ceil(C/2)][4][C], rows W₁[o], W₁[o+1], W₂'[o], W₂'[o+1] for o even. NHWC (weights on the right):
// [ceil(C/8)][C][16], columns W₁ᵀ of 8 channels, then W₂'ᵀ of the same 8.
int64_t packed_size(const Shape& s) { return s.nhwc ? (s.C + 7) / 8 * s.C * 16 : (s.C + 1) / 2 * 4 * s.C; }

// Pass 2a: sch [B, C] = sigmoid(W_up relu(W_down mean_HW r)).
void channel_attention(const float* chsum, const at::Tensor& wd, const at::Tensor& wu, const Shape& s, float* sch) {
  const int64_t C = s.C, Cr = wd.size(0);
  const float *pd = wd.data_ptr<float>(), *pu = wu.data_ptr<float>();
  std::vector<float> hid(Cr);
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t j = 0; j < Cr; ++j) {
      float a = 0.f;
      for (int64_t c = 0; c < C; ++c) a += pd[j * C + c] * chsum[b * C + c];
      hid[j] = nan_max(a / s.HW, 0.f);
    }
    for (int64_t c = 0; c < C; ++c) {
      float a = 0.f;
      for (int64_t j = 0; j < Cr; ++j) a += pu[c * Cr + j] * hid[j];
      sch[b * C + c] = sigmoid(a);
    }
  }
}

// Calls put(b, o, k, W₁[o, k], W₂[o, k]·s_ch[b, k]) for every image b, output channel o and input channel k.
template <typename Put>
void fold_weights(const float* sch, const at::Tensor& wo, const Shape& s, Put put) {
  const int64_t C = s.C;
  const float* po = wo.data_ptr<float>();
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t o = 0; o < C; ++o)
      for (int64_t k = 0; k < C; ++k) put(b, o, k, po[o * 2 * C + k], po[o * 2 * C + C + k] * sch[b * C + k]);
}

// [W₁; W₂'] packed for output_pass, pack [B, packed_size].
void pack_weights(const float* sch, const at::Tensor& wo, const Shape& s, float* pack) {
  const int64_t C = s.C, size = packed_size(s);
  std::fill(pack, pack + s.B * size, 0.f);
  fold_weights(sch, wo, s, [&](int64_t b, int64_t o, int64_t k, float w1, float w2) {
    float* w = pack + b * size;
    if (s.nhwc) {
      w[((o / 8) * C + k) * 16 + o % 8] = w1, w[((o / 8) * C + k) * 16 + 8 + o % 8] = w2;
    } else {
      w[((o / 2) * 4 + o % 2) * C + k] = w1, w[((o / 2) * 4 + 2 + o % 2) * C + k] = w2;
    }
  });
}

// Pass 2b: ssp [B, HW] = sigmoid(conv5×5(pad, w_sa)) (pad is zero-bordered, so no bounds checks).
void spatial_attention(const float* pad, const float* wsa, const Shape& s, float* ssp) {
  const int64_t Hp = s.H + 4, Wp = s.W + 4;
  at::parallel_for(0, s.B * s.H, std::max<int64_t>(1, 4096 / s.W), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / s.H, i = row % s.H;
      float* acc = ssp + b * s.HW + i * s.W;
      std::fill(acc, acc + s.W, 0.f);
      for (int64_t ch = 0; ch < 2; ++ch)
        for (int64_t u = 0; u < 5; ++u) {
          const float* src = pad + ((b * 2 + ch) * Hp + i + u) * Wp;
          for (int64_t v = 0; v < 5; ++v) {
            const float w = wsa[(ch * 5 + u) * 5 + v];
            for (int64_t j = 0; j < s.W; ++j) acc[j] += w * src[j + v];
          }
        }
      for (int64_t j = 0; j < s.W; ++j) acc[j] = sigmoid(acc[j]);
    }
  });
}

// Pass 3: out = x + s_sp·(W₁ r) + W₂' r: per (batch, pixel tile) the GEMM of the packed weights with the tile in
// 4×16 register blocks, each block's outputs finished at once (no [2C, tile] buffer).
template <typename T>
void output_pass(const T* r, const T* x, const float* pack, const float* ssp, const Shape& s, T* out) {
  const int64_t C = s.C, HW = s.HW;
  const Tiling t(HW, s.nhwc ? 64 : 256);
  at::parallel_for(0, s.B * t.per_batch, std::max<int64_t>(1, 16384 / (t.tile * C)), [&](int64_t begin, int64_t end) {
    std::vector<float> rbuf(std::is_same_v<T, float> ? 0 : C * t.tile), edge(16 * C), io(32);
    float acc[4][16];
    auto finish = [&](int64_t off, int64_t n, const float* y1, const float* y2, const float* sp, float spc) {
      const float* xr = load_row(x + off, io.data(), n);
      float* o = out_row(out + off, io.data() + 16);
      for (int64_t j = 0; j < n; ++j) o[j] = xr[j] + (sp ? sp[j] : spc) * y1[j] + y2[j];
      store_row(out + off, o, n);
    };
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / t.per_batch, p0 = (item % t.per_batch) * t.tile, P = std::min(t.tile, HW - p0);
      const float *w = pack + b * packed_size(s), *sp = ssp + b * HW + p0;
      if (!s.nhwc) {  // R[k·ldr + j] = r[b, k, p0 + j]; blocks: 16 pixels × (2 channels of W₁ and W₂')
        const float* R = reinterpret_cast<const float*>(r + b * C * HW + p0);
        int64_t ldr = HW;
        if constexpr (!std::is_same_v<T, float>) {
          for (int64_t c = 0; c < C; ++c) at::vec::convert(r + (b * C + c) * HW + p0, rbuf.data() + c * P, P);
          R = rbuf.data(), ldr = P;
        }
        for (int64_t j0 = 0; j0 < P; j0 += 16) {
          const int64_t n = std::min<int64_t>(16, P - j0);
          const float* B = R + j0;
          int64_t ldb = ldr;
          if (n < 16) {  // the last pixels of the tile, zero-padded to a full block
            for (int64_t k = 0; k < C; ++k)
              for (int64_t j = 0; j < 16; ++j) edge[k * 16 + j] = j < n ? R[k * ldr + j0 + j] : 0.f;
            B = edge.data(), ldb = 16;
          }
          for (int64_t q = 0; 2 * q < C; ++q) {
            const float* a[4] = {w + 4 * q * C, w + (4 * q + 1) * C, w + (4 * q + 2) * C, w + (4 * q + 3) * C};
            gemm_4x16(C, a, B, ldb, acc);
            for (int64_t h = 0; h < 2 && 2 * q + h < C; ++h)
              finish((b * C + 2 * q + h) * HW + p0 + j0, n, acc[h], acc[2 + h], sp + j0, 0.f);
          }
        }
      } else {  // R[p·C + k] = r[b, p0 + p, k]; blocks: 4 pixels × (8 channels of W₁ and W₂')
        const float* R = reinterpret_cast<const float*>(r + (b * HW + p0) * C);
        if constexpr (!std::is_same_v<T, float>) {
          at::vec::convert(r + (b * HW + p0) * C, rbuf.data(), P * C);
          R = rbuf.data();
        }
        for (int64_t i0 = 0; i0 < P; i0 += 4) {
          const int64_t m = std::min<int64_t>(4, P - i0);  // rows past the tile repeat its last pixel, unused
          const float* a[4] = {R + (i0 + std::min<int64_t>(0, m - 1)) * C, R + (i0 + std::min<int64_t>(1, m - 1)) * C,
                               R + (i0 + std::min<int64_t>(2, m - 1)) * C, R + (i0 + std::min<int64_t>(3, m - 1)) * C};
          for (int64_t c0 = 0; c0 < C; c0 += 8) {
            gemm_4x16(C, a, w + c0 * 2 * C, 16, acc);
            for (int64_t i = 0; i < m; ++i)
              finish((b * HW + p0 + i0 + i) * C + c0, std::min<int64_t>(8, C - c0), acc[i], acc[i] + 8, nullptr,
                     sp[i0 + i]);
          }
        }
      }
    }
  });
}

// Passes 1, 2a and 2b for r (contiguous in the layout of s): sch [B, C] and ssp [B, H, W] float32.
template <typename T>
void attention_passes(const T* r, const Shape& s, const at::Tensor& w_sa, const at::Tensor& w_ca_down,
                      const at::Tensor& w_ca_up, at::Tensor& sch, at::Tensor& ssp) {
  const auto f32 = sch.options();
  at::Tensor pad = at::zeros({s.B, 2, s.H + 4, s.W + 4}, f32), chsum = at::empty({s.B, s.C}, f32);
  const at::Tensor wsa = w_sa.to(at::kFloat).contiguous();
  reduce_pass(r, s, pad.data_ptr<float>(), chsum.data_ptr<float>());
  channel_attention(chsum.data_ptr<float>(), as_matrix(w_ca_down), as_matrix(w_ca_up), s, sch.data_ptr<float>());
  spatial_attention(pad.data_ptr<float>(), wsa.data_ptr<float>(), s, ssp.data_ptr<float>());
}

Shape shape_of(const at::Tensor& r) {
  return {r.size(0), r.size(1), r.size(2), r.size(3), r.size(2) * r.size(3),
          layout_of(r) == at::MemoryFormat::ChannelsLast};
}

at::Tensor dau_tail_cpu(const at::Tensor& r_in, const at::Tensor& x_in, const at::Tensor& w_sa,
                        const at::Tensor& w_ca_down, const at::Tensor& w_ca_up, const at::Tensor& w_out) {
  check_dau_tail(r_in, x_in, w_sa, w_ca_down, w_ca_up, w_out);
  const auto fmt = layout_of(r_in);
  const at::Tensor r = r_in.contiguous(fmt), x = x_in.contiguous(fmt);
  const Shape s = shape_of(r);
  const auto f32 = r.options().dtype(at::kFloat);
  at::Tensor sch = at::empty({s.B, s.C}, f32), ssp = at::empty({s.B, s.H, s.W}, f32);
  at::Tensor pack = at::empty({s.B, packed_size(s)}, f32);
  at::Tensor out = at::empty(r.sizes(), r.options().memory_format(fmt));
  DPIR_FAST_DISPATCH(r.scalar_type(), "dpir_fast::dau_tail", [&] {
    attention_passes(r.const_data_ptr<scalar_t>(), s, w_sa, w_ca_down, w_ca_up, sch, ssp);
    pack_weights(sch.data_ptr<float>(), as_matrix(w_out), s, pack.data_ptr<float>());
    output_pass(r.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), pack.data_ptr<float>(),
                ssp.data_ptr<float>(), s, out.data_ptr<scalar_t>());
  });
  return out;
}

// Passes 1 and 2 alone (the attention half of dau_tail; its GEMM runs elsewhere, e.g. kernels/dau_tail.py):
// fold [B, C, 2C] in r's dtype, fold[b, k, o] = W₁[o, k] and fold[b, k, C + o] = W₂[o, k]·s_ch[b, k];
// ssp [B, H, W] float32.
std::tuple<at::Tensor, at::Tensor> dau_attention_cpu(const at::Tensor& r_in, const at::Tensor& w_sa,
                                                     const at::Tensor& w_ca_down, const at::Tensor& w_ca_up,
                                                     const at::Tensor& w_out) {
  check_dau_weights("dpir_fast::dau_attention", r_in, w_sa, w_ca_down, w_ca_up, w_out);
  const at::Tensor r = r_in.contiguous(layout_of(r_in));
  const Shape s = shape_of(r);
  const auto f32 = r.options().dtype(at::kFloat);
  at::Tensor sch = at::empty({s.B, s.C}, f32), ssp = at::empty({s.B, s.H, s.W}, f32);
  at::Tensor fold = at::empty({s.B, s.C, 2 * s.C}, r.options().memory_format(at::MemoryFormat::Contiguous));
  DPIR_FAST_DISPATCH(r.scalar_type(), "dpir_fast::dau_attention", [&] {
    attention_passes(r.const_data_ptr<scalar_t>(), s, w_sa, w_ca_down, w_ca_up, sch, ssp);
    scalar_t* f = fold.data_ptr<scalar_t>();
    fold_weights(sch.data_ptr<float>(), as_matrix(w_out), s, [&](int64_t b, int64_t o, int64_t k, float w1, float w2) {
      scalar_t* row = f + (b * s.C + k) * 2 * s.C;
      row[o] = static_cast<scalar_t>(w1), row[s.C + o] = static_cast<scalar_t>(w2);
    });
  });
  return {fold, ssp};
}

}  // namespace

TORCH_LIBRARY_IMPL(dpir_fast, CPU, m) {
  m.impl("dau_tail", &dau_tail_cpu);
  m.impl("dau_attention", &dau_attention_cpu);
}

}  // namespace dpir_fast
