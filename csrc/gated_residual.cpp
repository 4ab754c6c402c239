// miga_fast::gated_residual: out = x + gate[b, f] * y over tokens, summed in fp32, x's dtype.
//   x/y [B, F, P, D], gate [B, F, D] (per frame, never expanded per token).
#include <ATen/ops/empty.h>

#include "fused_common.h"

namespace miga_fast {

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  constexpr const char* op = "gated_residual";
  TORCH_CHECK(x.dim() == 4 && y.sizes() == x.sizes(), op, ": x and y must both be [B, F, P, D] (got ", x.sizes(),
              " and ", y.sizes(), ")");
  const int64_t B = x.size(0), F = x.size(1), P = x.size(2), D = x.size(3);
  TORCH_CHECK(gate.sizes() == at::IntArrayRef({B, F, D}), op, ": gate must be [B, F, D] = [", B, ", ", F, ", ", D,
              "] (got ", gate.sizes(), ")");
  for (const auto* t : {&x, &y, &gate}) {
    check_cpu(*t, op, "every input");
    check_dtype(*t, op, "every input");
  }
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const at::Tensor g = frame_vectors(gate);
  at::Tensor out = at::empty({B, F, P, D}, x.options());
  const at::ScalarType x_t = xc.scalar_type(), y_t = yc.scalar_type();
  const char* xp = static_cast<const char*>(xc.const_data_ptr());
  const char* yp = static_cast<const char*>(yc.const_data_ptr());
  char* op_ = static_cast<char*>(out.mutable_data_ptr());
  const int64_t xs = xc.element_size(), ys = yc.element_size();
  const float* gp = g.const_data_ptr<float>();

  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, B * F * P, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> xbuf(D), ybuf(D), obuf(D);
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = as_float(x_t, xp + r * D * xs, xbuf.data(), D);
      const float* yr = as_float(y_t, yp + r * D * ys, ybuf.data(), D);
      const float* gr = gp + (r / P) * D;
      float* o = out_float(x_t, op_ + r * D * xs, obuf.data());
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] = xr[i] + gr[i] * yr[i];
      store(x_t, o, op_ + r * D * xs, D);
    }
  });
  return out;
}

}  // namespace miga_fast

TORCH_LIBRARY_FRAGMENT(miga_fast, m) {
  m.def("gated_residual(Tensor x, Tensor y, Tensor gate) -> Tensor");
}

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) {
  m.impl("gated_residual", &miga_fast::gated_residual);
}
