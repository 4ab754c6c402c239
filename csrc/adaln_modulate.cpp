// miga_fast::adaln_modulate: fused LayerNorm (no affine) + per-frame modulation, one pass over the tokens.
//   x [B, F, P, D], shift/scale [B, F, D] -> out [B, F, P, D] = LN(x) * (1 + scale[b, f]) + shift[b, f]
// (without eps, x is taken as already normalised). fp32 math; out dtype = dtype or the promoted one.
#include <ATen/ops/empty.h>

#include <cmath>

#include "fused_common.h"

namespace miga_fast {

at::Tensor adaln_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                          std::optional<double> eps, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "adaln_modulate";
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, F, P, D] (got ", x.sizes(), ")");
  const int64_t B = x.size(0), F = x.size(1), P = x.size(2), D = x.size(3);
  TORCH_CHECK(shift.sizes() == at::IntArrayRef({B, F, D}) && scale.sizes() == shift.sizes(), op,
              ": shift and scale must be [B, F, D] = [", B, ", ", F, ", ", D, "] (got ", shift.sizes(), " and ",
              scale.sizes(), ")");
  for (const auto* t : {&x, &shift, &scale}) {
    check_cpu(*t, op, "every input");
    check_dtype(*t, op, "every input");
  }
  at::ScalarType promoted = c10::promoteTypes(eps ? at::kFloat : x.scalar_type(),
                                              c10::promoteTypes(shift.scalar_type(), scale.scalar_type()));
  const at::ScalarType out_t = dtype.value_or(promoted);
  TORCH_CHECK(kernel_dtype(out_t), op, ": dtype must be float32, float16 or bfloat16 (got ", out_t, ")");

  const at::Tensor xc = x.contiguous();
  const at::Tensor sh = frame_vectors(shift), sc = frame_vectors(scale);
  at::Tensor out = at::empty({B, F, P, D}, x.options().dtype(out_t));
  const at::ScalarType x_t = xc.scalar_type();
  const char* xp = static_cast<const char*>(xc.const_data_ptr());
  char* op_ = static_cast<char*>(out.mutable_data_ptr());
  const int64_t xs = xc.element_size(), os = out.element_size();
  const float* shp = sh.const_data_ptr<float>();
  const float* scp = sc.const_data_ptr<float>();
  const bool norm = eps.has_value();
  const float e = static_cast<float>(eps.value_or(0.0));

  // ~64 KiB of fp32 per task: small rows are batched, long rows go one by one.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, B * F * P, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> xbuf(D), obuf(D);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t frame = r / P;
      const float* xr = as_float(x_t, xp + r * D * xs, xbuf.data(), D);
      const float* s = shp + frame * D;
      const float* c = scp + frame * D;
      float* o = out_float(out_t, op_ + r * D * os, obuf.data());
      float mean = 0.f, rstd = 1.f;
      if (norm) {
        // two passes (mean, then centred variance) like the fp32 reference: no cancellation
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < D; ++i) sum += xr[i];
        mean = sum / D;
        float var = 0.f;
#pragma omp simd reduction(+ : var)
        for (int64_t i = 0; i < D; ++i) var += (xr[i] - mean) * (xr[i] - mean);
        rstd = 1.f / std::sqrt(var / D + e);
      }
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] = (xr[i] - mean) * rstd * (1.f + c[i]) + s[i];
      store(out_t, o, op_ + r * D * os, D);
    }
  });
  return out;
}

}  // namespace miga_fast

TORCH_LIBRARY_FRAGMENT(miga_fast, m) {
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, float? eps=None, ScalarType? dtype=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) {
  m.impl("adaln_modulate", &miga_fast::adaln_modulate);
}
