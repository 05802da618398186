// CTest unit tests: the CPU kernels of dpir_fast::dau_tail and dpir_fast::skff against naive loops in double,
// the Meta kernels and the GEMM block. Usage: dpir_fast_tests dau_tail | skff | meta | gemm (exit 0: all passed).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "cpu_utils.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using Tensor = at::Tensor;
using DauTail = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using Skff = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, const Tensor&);

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  failures += !ok;
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

Tensor matrix(const Tensor& w) { return w.reshape({w.size(0), w.size(1)}).to(at::kDouble).contiguous(); }

// x + conv1x1(cat[r·s_sp, r·s_ch]) as the module defines it, one output element at a time.
Tensor naive_dau_tail(const Tensor& r_in, const Tensor& x_in, const Tensor& w_sa, const Tensor& w_down,
                      const Tensor& w_up, const Tensor& w_out) {
  const Tensor r = r_in.to(at::kDouble).contiguous(), x = x_in.to(at::kDouble).contiguous();
  const auto R = r.accessor<double, 4>(), X = x.accessor<double, 4>();
  const Tensor sa = w_sa.to(at::kDouble).contiguous(), wd = matrix(w_down), wu = matrix(w_up), wo = matrix(w_out);
  const auto SA = sa.accessor<double, 4>();
  const auto WD = wd.accessor<double, 2>(), WU = wu.accessor<double, 2>(), WO = wo.accessor<double, 2>();
  const int64_t B = r.size(0), C = r.size(1), H = r.size(2), W = r.size(3), Cr = wd.size(0);
  Tensor out = at::empty_like(r);
  auto O = out.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> map(2 * H * W), ssp(H * W), mean(C), hid(Cr), sch(C);
    for (int64_t c = 0; c < C; ++c) mean[c] = r[b][c].mean().item<double>();
    for (int64_t p = 0; p < H * W; ++p) {
      double m = -INFINITY, s = 0;
      for (int64_t c = 0; c < C; ++c) m = std::max(m, R[b][c][p / W][p % W]), s += R[b][c][p / W][p % W];
      map[p] = m, map[H * W + p] = s / C;
    }
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        double a = 0;
        for (int ch = 0; ch < 2; ++ch)
          for (int u = 0; u < 5; ++u)
            for (int v = 0; v < 5; ++v) {
              const int64_t y = i + u - 2, xx = j + v - 2;
              if (y >= 0 && y < H && xx >= 0 && xx < W) a += SA[0][ch][u][v] * map[ch * H * W + y * W + xx];
            }
        ssp[i * W + j] = sigmoid(a);
      }
    for (int64_t k = 0; k < Cr; ++k) {
      double a = 0;
      for (int64_t c = 0; c < C; ++c) a += WD[k][c] * mean[c];
      hid[k] = std::max(a, 0.0);
    }
    for (int64_t c = 0; c < C; ++c) {
      double a = 0;
      for (int64_t k = 0; k < Cr; ++k) a += WU[c][k] * hid[k];
      sch[c] = sigmoid(a);
    }
    for (int64_t o = 0; o < C; ++o)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          double a = X[b][o][i][j];
          for (int64_t c = 0; c < C; ++c)
            a += WO[o][c] * R[b][c][i][j] * ssp[i * W + j] + WO[o][C + c] * R[b][c][i][j] * sch[c];
          O[b][o][i][j] = a;
        }
  }
  return out;
}

// Σ_k softmax_k(W_up[k] · PReLU(W_down · mean_HW Σ_k x_k)) · x_k.
Tensor naive_skff(const std::vector<Tensor>& xs, const Tensor& w_down, double slope, const std::vector<Tensor>& w_up) {
  const Tensor wd = matrix(w_down), u0 = matrix(w_up[0]), u1 = matrix(w_up[1]), u2 = matrix(w_up[2]);
  const auto WD = wd.accessor<double, 2>();
  const at::TensorAccessor<double, 2> WU[3] = {u0.accessor<double, 2>(), u1.accessor<double, 2>(),
                                               u2.accessor<double, 2>()};
  const int64_t B = xs[0].size(0), C = xs[0].size(1), d = wd.size(0);
  std::vector<Tensor> x;
  for (const Tensor& t : xs) x.push_back(t.to(at::kDouble).contiguous());
  Tensor out = at::zeros_like(x[0]);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> mean(C), z(d);
    for (int64_t c = 0; c < C; ++c) mean[c] = (x[0][b][c] + x[1][b][c] + x[2][b][c]).mean().item<double>();
    for (int64_t j = 0; j < d; ++j) {
      double a = 0;
      for (int64_t c = 0; c < C; ++c) a += WD[j][c] * mean[c];
      z[j] = a >= 0 ? a : slope * a;
    }
    for (int64_t c = 0; c < C; ++c) {
      double l[3], sum = 0;
      for (int k = 0; k < 3; ++k) {
        l[k] = 0;
        for (int64_t j = 0; j < d; ++j) l[k] += WU[k][c][j] * z[j];
      }
      const double m = std::max({l[0], l[1], l[2]});
      for (double& v : l) sum += v = std::exp(v - m);
      for (int k = 0; k < 3; ++k) out[b][c] += (l[k] / sum) * x[k][b][c];
    }
  }
  return out;
}

struct Case {
  int64_t B, C, H, W;
  at::ScalarType dtype;
  bool channels_last;
  std::string name() const {
    return std::to_string(B) + "x" + std::to_string(C) + "x" + std::to_string(H) + "x" + std::to_string(W) + " " +
           c10::toString(dtype) + (channels_last ? " channels_last" : "");
  }
};

std::vector<Case> cases() {
  std::vector<Case> all;
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (bool cl : {false, true})
      for (auto s : std::vector<std::vector<int64_t>>{{2, 64, 13, 11}, {3, 24, 7, 5}, {1, 8, 1, 1}})
        all.push_back({s[0], s[1], s[2], s[3], dtype, cl});
  return all;
}

Tensor feature(const Case& c) {
  Tensor t = at::randn({c.B, c.C, c.H, c.W}).to(c.dtype);
  return c.channels_last ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}

// max |fast − naive| within what rounding the output to its dtype costs, plus float32 accumulation.
void compare(const Tensor& fast, const Tensor& naive, const Case& c, const std::string& op) {
  const double scale = naive.abs().max().item<double>() + 1.0;
  const double tol = (c.dtype == at::kFloat ? 1e-5 : 4e-3) * scale;
  const double err = (fast.to(at::kDouble) - naive).abs().max().item<double>();
  char numbers[64];
  std::snprintf(numbers, sizeof numbers, ": max error %.2e (tolerance %.2e)", err, tol);
  expect(err <= tol && fast.scalar_type() == c.dtype && fast.sizes() == naive.sizes(), op + " " + c.name() + numbers);
}

void test_dau_tail() {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dpir_fast::dau_tail", "").typed<DauTail>();
  for (const Case& c : cases()) {
    const int64_t cr = std::max<int64_t>(c.C / 8, 1);
    const Tensor r = feature(c), x = feature(c), w_sa = at::randn({1, 2, 5, 5}) * 0.2;
    const Tensor w_down = at::randn({cr, c.C, 1, 1}) / std::sqrt(c.C);
    const Tensor w_up = at::randn({c.C, cr, 1, 1}) / std::sqrt(cr);
    const Tensor w_out = at::randn({c.C, 2 * c.C, 1, 1}) / std::sqrt(2 * c.C);
    compare(op.call(r, x, w_sa, w_down, w_up, w_out), naive_dau_tail(r, x, w_sa, w_down, w_up, w_out), c,
            "dau_tail");
  }
}

void test_skff() {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dpir_fast::skff", "").typed<Skff>();
  for (const Case& c : cases()) {
    const int64_t d = std::max<int64_t>(c.C / 8, 4);
    const std::vector<Tensor> x{feature(c), feature(c), feature(c)};
    const Tensor w_down = at::randn({d, c.C, 1, 1}) / std::sqrt(c.C), prelu = at::full({1}, 0.25);
    const std::vector<Tensor> w_up{at::randn({c.C, d, 1, 1}), at::randn({c.C, d, 1, 1}), at::randn({c.C, d, 1, 1})};
    compare(op.call(x[0], x[1], x[2], w_down, prelu, w_up[0], w_up[1], w_up[2]), naive_skff(x, w_down, 0.25, w_up),
            c, "skff");
  }
}

// The GEMM register block, both the run-time pick (AVX2 on most x86) and the portable version, against a double loop.
void test_gemm() {
  const int64_t K = 37, ldb = 21;
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> rows(4 * K), b(K * ldb);
  for (float& v : rows) v = normal(gen);
  for (float& v : b) v = normal(gen);
  const float* a[4] = {rows.data(), rows.data() + K, rows.data() + 2 * K, rows.data() + 3 * K};
  float fast[4][16], portable[4][16];
  dpir_fast::cpu::gemm_4x16(K, a, b.data(), ldb, fast);
  dpir_fast::cpu::gemm_4x16_generic(K, a, b.data(), ldb, portable);
  double err = 0;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 16; ++j) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k) ref += double(a[i][k]) * b[k * ldb + j];
      err = std::max({err, std::abs(fast[i][j] - ref), std::abs(portable[i][j] - ref)});
    }
  char numbers[64];
  std::snprintf(numbers, sizeof numbers, ": max error %.2e", err);
  expect(err < 1e-4, std::string("gemm_4x16 (run-time pick and portable)") + numbers);
}

void test_meta() {
  auto dau = c10::Dispatcher::singleton().findSchemaOrThrow("dpir_fast::dau_tail", "").typed<DauTail>();
  const auto meta = at::TensorOptions().device(at::kMeta);
  const Tensor r = at::empty({2, 64, 9, 7}, meta).contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor w_sa = at::empty({1, 2, 5, 5}, meta), w_down = at::empty({8, 64, 1, 1}, meta);
  const Tensor w_up = at::empty({64, 8, 1, 1}, meta), w_out = at::empty({64, 128, 1, 1}, meta);
  const Tensor out = dau.call(r, r, w_sa, w_down, w_up, w_out);
  expect(out.is_meta() && out.sizes() == r.sizes() && out.is_contiguous(at::MemoryFormat::ChannelsLast),
         "dau_tail meta: shape and channels_last layout");
  std::string message;
  try {
    dau.call(r, r, w_sa, w_down, w_up, w_up);
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  }
  expect(message.find("dpir_fast::dau_tail: w_out must be [64, 128, 1, 1]") != std::string::npos,
         "dau_tail meta: a bad w_out is named (" + message.substr(0, 80) + ")");
}

}  // namespace

int main(int argc, char** argv) {
  at::manual_seed(0);
  const std::string suite = argc > 1 ? argv[1] : "all";
  if (suite == "dau_tail" || suite == "all") test_dau_tail();
  if (suite == "skff" || suite == "all") test_skff();
  if (suite == "meta" || suite == "all") test_meta();
  if (suite == "gemm" || suite == "all") test_gemm();
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
