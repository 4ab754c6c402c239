// miga_fast::solver_update: CFG combine + one affine solver step, written in place into the latent ring.
// For every output m (row r = rows[m], default m; level t = levels[m]; slot = slots[m]):
//   pred = uncond[r] + g * (cond[r] - uncond[r])          (cond[r] alone without uncond)
//   ring[slot] = c_x[t] * x[r] + c_pred[t] * pred + c_noise[t] * noise[m]
// with c_x = 1 and the noise term dropped when absent: DDIM is (c_x, c_eps, sigma), flow Euler (-, dt, -).
// x/cond/uncond/noise are [N, C, H, W] or [B, F, C, H, W] (row n = b * F + f) with any strides except a
// contiguous H x W plane; ring is [capacity, C, H, W]. fp32 math; result stored in the ring's dtype.
#include "fused_common.h"

namespace miga_fast {
namespace {

struct Rows {  // rows of a [N, C, H, W] or [B, F, C, H, W] operand
  const char* data = nullptr;
  int64_t esize = 0, frames = 1, s_outer = 0, s_inner = 0, s_c = 0;
  at::ScalarType dtype = at::kFloat;
  Rows() = default;
  Rows(const at::Tensor& t, int64_t C, int64_t HW, const char* op, const char* name) {
    check_cpu(t, op, name);
    check_dtype(t, op, name);
    const int64_t dim = t.dim();
    TORCH_CHECK((dim == 4 || dim == 5) && t.size(dim - 3) == C && t.size(dim - 2) * t.size(dim - 1) == HW, op, ": ",
                name, " must be [N, C, H, W] or [B, F, C, H, W] with the ring's C, H, W (got ", t.sizes(), ")");
    TORCH_CHECK(t.stride(dim - 1) == 1 && (t.size(dim - 2) == 1 || t.stride(dim - 2) == t.size(dim - 1)), op, ": ",
                name, " needs contiguous H x W planes (got strides ", t.strides(), ")");
    data = static_cast<const char*>(t.const_data_ptr());
    esize = t.element_size();
    dtype = t.scalar_type();
    frames = dim == 5 ? t.size(1) : 1;
    s_outer = t.stride(0);
    s_inner = dim == 5 ? t.stride(1) : 0;
    s_c = t.stride(dim - 3);
  }
  int64_t count(const at::Tensor& t) const { return t.dim() == 5 ? t.size(0) * t.size(1) : t.size(0); }
  const void* plane(int64_t n, int64_t c) const {
    return data + ((n / frames) * s_outer + (n % frames) * s_inner + c * s_c) * esize;
  }
};

at::Tensor index_vector(const at::Tensor& t, int64_t M, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == M, op, ": ", name, " must be [", M, "] (got ", t.sizes(), ")");
  TORCH_CHECK(!at::isFloatingType(t.scalar_type()), op, ": ", name, " must be an integer tensor");
  return t.to(at::kLong).contiguous();
}

void check_range(const at::Tensor& idx, int64_t hi, const char* op, const char* name) {
  const int64_t* p = idx.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i)
    TORCH_CHECK(0 <= p[i] && p[i] < hi, op, ": ", name, "[", i, "] = ", p[i], " is outside [0, ", hi, ")");
}

}  // namespace

void solver_update(at::Tensor ring, const at::Tensor& slots, const at::Tensor& x, const at::Tensor& levels,
                   const at::Tensor& pred_cond, const std::optional<at::Tensor>& pred_uncond, double guidance_scale,
                   const at::Tensor& c_pred, const std::optional<at::Tensor>& c_x,
                   const std::optional<at::Tensor>& c_noise, const std::optional<at::Tensor>& noise,
                   const std::optional<at::Tensor>& rows) {
  constexpr const char* op = "solver_update";
  TORCH_CHECK(ring.dim() == 4, op, ": ring must be [capacity, C, H, W] (got ", ring.sizes(), ")");
  check_cpu(ring, op, "ring");
  check_dtype(ring, op, "ring");
  TORCH_CHECK(ring.is_contiguous(), op, ": ring must be contiguous");
  const int64_t cap = ring.size(0), C = ring.size(1), HW = ring.size(2) * ring.size(3);
  const int64_t M = slots.numel();
  const Rows xr(x, C, HW, op, "x"), cr(pred_cond, C, HW, op, "pred_cond");
  const int64_t N = xr.count(x);
  TORCH_CHECK(cr.count(pred_cond) == N, op, ": pred_cond must have x's ", N, " rows");
  Rows ur, nr;
  if (pred_uncond) {
    ur = Rows(*pred_uncond, C, HW, op, "pred_uncond");
    TORCH_CHECK(ur.count(*pred_uncond) == N, op, ": pred_uncond must have x's ", N, " rows");
  }
  TORCH_CHECK(c_noise.has_value() == noise.has_value(), op, ": c_noise and noise go together");
  if (noise) {
    nr = Rows(*noise, C, HW, op, "noise");
    TORCH_CHECK(nr.count(*noise) == M, op, ": noise must have one row per slot (", M, ")");
  }
  const at::Tensor sl = index_vector(slots, M, op, "slots"), lv = index_vector(levels, M, op, "levels");
  const at::Tensor rw = rows ? index_vector(*rows, M, op, "rows") : at::Tensor();
  TORCH_CHECK(rows || M == N, op, ": without rows, slots must have one entry per row of x (", N, ")");
  auto table = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 1, op, ": ", name, " must be a [T] table (got ", t.sizes(), ")");
    check_cpu(t, op, name);
    return t.to(at::kFloat).contiguous();
  };
  const at::Tensor tp = table(c_pred, "c_pred");
  const at::Tensor tx = c_x ? table(*c_x, "c_x") : at::Tensor();
  const at::Tensor tn = c_noise ? table(*c_noise, "c_noise") : at::Tensor();
  const int64_t T = tp.numel();
  TORCH_CHECK((!c_x || tx.numel() == T) && (!c_noise || tn.numel() == T), op, ": tables must all be [T] = [", T, "]");
  check_range(sl, cap, op, "slots");
  check_range(lv, T, op, "levels");
  if (rows) check_range(rw, N, op, "rows");

  const int64_t* slp = sl.const_data_ptr<int64_t>();
  const int64_t* lvp = lv.const_data_ptr<int64_t>();
  const int64_t* rwp = rows ? rw.const_data_ptr<int64_t>() : nullptr;
  const float* tpp = tp.const_data_ptr<float>();
  const float* txp = c_x ? tx.const_data_ptr<float>() : nullptr;
  const float* tnp = c_noise ? tn.const_data_ptr<float>() : nullptr;
  const bool cfg = pred_uncond.has_value(), has_noise = noise.has_value();
  const float g = static_cast<float>(guidance_scale);
  char* ringp = static_cast<char*>(ring.mutable_data_ptr());
  const at::ScalarType ring_t = ring.scalar_type();
  const int64_t res = ring.element_size();

  // one task per (output, channel) plane of H*W values; ~64 KiB of fp32 per chunk
  at::parallel_for(0, M * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1)), [&](int64_t begin, int64_t end) {
    std::vector<float> xb(HW), cb(HW), ub(HW), nb(HW), ob(HW);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m = task / C, c = task % C;
      const int64_t r = rwp ? rwp[m] : m, t = lvp[m];
      const float a = txp ? txp[t] : 1.f, bp = tpp[t], cn = tnp ? tnp[t] : 0.f;
      const float* xv = as_float(xr.dtype, xr.plane(r, c), xb.data(), HW);
      const float* cv = as_float(cr.dtype, cr.plane(r, c), cb.data(), HW);
      const float* uv = cfg ? as_float(ur.dtype, ur.plane(r, c), ub.data(), HW) : cv;
      const float* nv = has_noise ? as_float(nr.dtype, nr.plane(m, c), nb.data(), HW) : cv;
      void* dst = ringp + ((slp[m] * C + c) * HW) * res;
      float* o = out_float(ring_t, dst, ob.data());
      // same association as the reference: pred = u + g (c - u); out = (a x + b pred) + cn noise
      if (cfg && has_noise) {
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) o[i] = (a * xv[i] + bp * (uv[i] + g * (cv[i] - uv[i]))) + cn * nv[i];
      } else if (cfg) {
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) o[i] = a * xv[i] + bp * (uv[i] + g * (cv[i] - uv[i]));
      } else if (has_noise) {
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) o[i] = (a * xv[i] + bp * cv[i]) + cn * nv[i];
      } else {
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) o[i] = a * xv[i] + bp * cv[i];
      }
      store(ring_t, o, dst, HW);
    }
  });
}

}  // namespace miga_fast

TORCH_LIBRARY_FRAGMENT(miga_fast, m) {
  m.def(
      "solver_update(Tensor(a!) ring, Tensor slots, Tensor x, Tensor levels, Tensor pred_cond, Tensor? pred_uncond, "
      "float guidance_scale, Tensor c_pred, Tensor? c_x=None, Tensor? c_noise=None, Tensor? noise=None, "
      "Tensor? rows=None) -> ()");
}

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) {
  m.impl("solver_update", &miga_fast::solver_update);
}
