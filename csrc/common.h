// Argument checks and layout helpers shared by the CPU, CUDA and Meta implementations of dpir_fast's ops.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

// The dtypes the kernels compute in (float32 inside); the dispatch error names the op and the dtype.
#define DPIR_FAST_DISPATCH(TYPE, NAME, ...)                                                               \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                                 \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace dpir_fast {

// The layout a kernel runs in: channels_last when the input is (or is nearly) NHWC, NCHW otherwise.
inline at::MemoryFormat layout_of(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                      : at::MemoryFormat::Contiguous;
}

inline void check_feature(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be [B, C, H, W], got shape ", t.sym_sizes());
  TORCH_CHECK(t.sym_sizes() == like.sym_sizes(), op, ": ", name, " must have the shape of the first input ",
              like.sym_sizes(), ", got ", t.sym_sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ", like.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.sym_numel() > 0, op, ": ", name, " is empty (shape ", t.sym_sizes(), ")");
}

// A weight of shape [rows, cols] or [rows, cols, 1, 1] (a 1×1 convolution), on the features' device.
inline void check_matrix(const char* op, const char* name, const at::Tensor& w, const c10::SymInt& rows,
                         const c10::SymInt& cols, const at::Tensor& like) {
  bool ok = (w.dim() == 2 || (w.dim() == 4 && w.sym_size(2) == 1 && w.sym_size(3) == 1)) &&
            w.sym_size(0) == rows && w.sym_size(1) == cols;
  TORCH_CHECK(ok, op, ": ", name, " must be [", rows, ", ", cols, ", 1, 1], got shape ", w.sym_sizes());
  TORCH_CHECK(w.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ", w.device());
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), op, ": ", name, " must be floating point, got ",
              w.scalar_type());
}

// r [B, C, H, W]; w_sa [1, 2, 5, 5]; w_ca_down [Cr, C(, 1, 1)]; w_ca_up [C, Cr(, 1, 1)]; w_out [C, 2C(, 1, 1)].
inline void check_dau_weights(const char* op, const at::Tensor& r, const at::Tensor& w_sa,
                              const at::Tensor& w_ca_down, const at::Tensor& w_ca_up, const at::Tensor& w_out) {
  TORCH_CHECK(r.dim() == 4, op, ": r must be [B, C, H, W], got shape ", r.sym_sizes());
  check_feature(op, "r", r, r);
  const c10::SymInt& C = r.sym_size(1);
  TORCH_CHECK(w_sa.sym_numel() == 50 && w_sa.dim() == 4 && w_sa.sym_size(1) == 2, op,
              ": w_sa must be [1, 2, 5, 5], got shape ", w_sa.sym_sizes());
  TORCH_CHECK(w_ca_down.dim() >= 2 && w_ca_down.sym_size(0) >= 1, op, ": w_ca_down must be [Cr, C, 1, 1], got ",
              w_ca_down.sym_sizes());
  check_matrix(op, "w_ca_down", w_ca_down, w_ca_down.sym_size(0), C, r);
  check_matrix(op, "w_ca_up", w_ca_up, C, w_ca_down.sym_size(0), r);
  check_matrix(op, "w_out", w_out, C, 2 * C, r);
}

// dau_tail: the weights as above, x with r's shape, dtype and device.
inline void check_dau_tail(const at::Tensor& r, const at::Tensor& x, const at::Tensor& w_sa,
                           const at::Tensor& w_ca_down, const at::Tensor& w_ca_up, const at::Tensor& w_out) {
  check_dau_weights("dpir_fast::dau_tail", r, w_sa, w_ca_down, w_ca_up, w_out);
  check_feature("dpir_fast::dau_tail", "x", x, r);
}

// x0, x1, x2 [B, C, H, W]; w_down [d, C(, 1, 1)]; prelu [1] or [d]; w_up0..2 [C, d(, 1, 1)].
inline void check_skff(const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w_down,
                       const at::Tensor& prelu, const at::Tensor& w_up0, const at::Tensor& w_up1,
                       const at::Tensor& w_up2) {
  const char* op = "dpir_fast::skff";
  TORCH_CHECK(x0.dim() == 4, op, ": x0 must be [B, C, H, W], got shape ", x0.sym_sizes());
  check_feature(op, "x0", x0, x0);
  check_feature(op, "x1", x1, x0);
  check_feature(op, "x2", x2, x0);
  const c10::SymInt& C = x0.sym_size(1);
  TORCH_CHECK(w_down.dim() >= 2 && w_down.sym_size(0) >= 1, op, ": w_down must be [d, C, 1, 1], got ",
              w_down.sym_sizes());
  const c10::SymInt& d = w_down.sym_size(0);
  check_matrix(op, "w_down", w_down, d, C, x0);
  TORCH_CHECK(prelu.sym_numel() == 1 || prelu.sym_numel() == d, op, ": prelu must have 1 or d = ", d,
              " slopes, got shape ", prelu.sym_sizes());
  TORCH_CHECK(prelu.device() == x0.device(), op, ": prelu must be on ", x0.device(), ", got ", prelu.device());
  check_matrix(op, "w_up0", w_up0, C, d, x0);
  check_matrix(op, "w_up1", w_up1, C, d, x0);
  check_matrix(op, "w_up2", w_up2, C, d, x0);
}

// A weight as a contiguous float32 matrix [rows, cols] (no copy when it already is one).
inline at::Tensor as_matrix(const at::Tensor& w) {
  return w.reshape({w.size(0), w.size(1)}).to(at::kFloat).contiguous();
}

}  // namespace dpir_fast
