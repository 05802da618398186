// The dpir_fast operator library: schemas (once), Meta kernels for torch.compile / CUDA-graph capture, and the
// Python module dpir_fast._C whose import loads the CPU and CUDA kernels registered in the other files (dau_tail's
// CUDA kernel, dau_attention followed by a Triton GEMM, is registered from Python: kernels/dau_tail.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common.h"

namespace dpir_fast {
namespace {

// Shapes only: the output has r's shape and layout.
at::Tensor dau_tail_meta(const at::Tensor& r, const at::Tensor& x, const at::Tensor& w_sa, const at::Tensor& w_ca_down,
                         const at::Tensor& w_ca_up, const at::Tensor& w_out) {
  check_dau_tail(r, x, w_sa, w_ca_down, w_ca_up, w_out);
  return at::empty_symint(r.sym_sizes(), r.options().memory_format(layout_of(r)));
}

// The folded GEMM weights [B, C, 2C] in r's dtype and the spatial attention [B, H, W] float32.
std::tuple<at::Tensor, at::Tensor> dau_attention_meta(const at::Tensor& r, const at::Tensor& w_sa,
                                                      const at::Tensor& w_ca_down, const at::Tensor& w_ca_up,
                                                      const at::Tensor& w_out) {
  check_dau_weights("dpir_fast::dau_attention", r, w_sa, w_ca_down, w_ca_up, w_out);
  const c10::SymInt &B = r.sym_size(0), &C = r.sym_size(1);
  return {at::empty_symint({B, C, 2 * C}, r.options()),
          at::empty_symint({B, r.sym_size(2), r.sym_size(3)}, r.options().dtype(at::kFloat))};
}

at::Tensor skff_meta(const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w_down,
                     const at::Tensor& prelu, const at::Tensor& w_up0, const at::Tensor& w_up1,
                     const at::Tensor& w_up2) {
  check_skff(x0, x1, x2, w_down, prelu, w_up0, w_up1, w_up2);
  return at::empty_symint(x0.sym_sizes(), x0.options().memory_format(layout_of(x0)));
}

}  // namespace

TORCH_LIBRARY(dpir_fast, m) {
  m.def("dau_tail(Tensor r, Tensor x, Tensor w_sa, Tensor w_ca_down, Tensor w_ca_up, Tensor w_out) -> Tensor");
  m.def("dau_attention(Tensor r, Tensor w_sa, Tensor w_ca_down, Tensor w_ca_up, Tensor w_out) -> (Tensor, Tensor)");
  m.def("skff(Tensor x0, Tensor x1, Tensor x2, Tensor w_down, Tensor prelu, Tensor w_up0, Tensor w_up1, "
        "Tensor w_up2) -> Tensor");
}

TORCH_LIBRARY_IMPL(dpir_fast, Meta, m) {
  m.impl("dau_tail", &dau_tail_meta);
  m.impl("dau_attention", &dau_attention_meta);
  m.impl("skff", &skff_meta);
}

}  // namespace dpir_fast

#ifdef DPIR_FAST_PYTHON_MODULE
#include <Python.h>

// An empty module: importing it runs the static registrations above (the extension-cpp pattern, no pybind11).
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
