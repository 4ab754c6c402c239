// miga_fast::hetero_attention: softmax(q k^T / sqrt(d)) v over [B, H, S, d] heads, computing only the query
// rows from skip_queries on (keys/values: all rows). Flash-style: each task owns up to 64 query rows of one
// (batch, head) and streams the keys in blocks of <= 64 with an online softmax, so nothing of size S x S
// exists. Short sequences (VC2 temporal attention, S = 16..21, B*H*W sequences) are one task per sequence
// with one key block, the whole sequence in L1.
//   q [B, H, Sq, d], k/v [B, H, Sk, d] (any strides, unit stride on d)
//   -> out [B, H, Sq - skip_queries, d], a view of a contiguous [B, Sq - skip_queries, H, d] buffer.
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "fused_common.h"

// The inner loops are compiled twice on x86-64 (AVX2+FMA and baseline), picked at load time: setup.py
// builds without -march, so this is the only way to use the wide units of the machine actually running.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MIGA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MIGA_CLONES
#endif

namespace miga_fast {
namespace {

constexpr int64_t kRows = 64;  // query rows per task (a multiple of kTileRows)
constexpr int64_t kKeys = 64;  // keys per block

// Register tiles of the two block products: kTileRows query rows x one 8-float vector, accumulated over the
// shared dimension in registers. GCC/Clang vector types keep the accumulators in registers in both clones
// (one ymm each with AVX2, a pair of xmm otherwise); unaligned access goes through memcpy.
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCols = 8;
typedef float vec8 __attribute__((vector_size(32)));
typedef int32_t ivec8 __attribute__((vector_size(32)));

inline vec8 load8(const float* p) {
  vec8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store8(float* p, vec8 v) { std::memcpy(p, &v, sizeof(v)); }

inline vec8 splat8(float x) { return vec8{} + x; }

inline vec8 max8(vec8 a, vec8 b) { return a > b ? a : b; }

// exp(x) for x <= 0 (softmax arguments), 8 lanes: 2^n * exp(f ln 2) with |f| <= 1/2 and a degree-6 Taylor
// polynomial (relative error < 2e-7); x below -87 gives ~1e-38 instead of 0 (negligible in a softmax).
inline vec8 exp_neg8(vec8 x) {
  const vec8 z = max8(x * 1.44269504088896341f, splat8(-126.f));
  const ivec8 n = __builtin_convertvector(z - 0.5f, ivec8);  // truncation: round to nearest for z <= 0
  const vec8 y = (z - __builtin_convertvector(n, vec8)) * 0.693147180559945309f;
  const vec8 p = 1.f + y * (1.f + y * (0.5f + y * (1.f / 6 + y * (1.f / 24 + y * (1.f / 120 + y * (1.f / 720))))));
  const ivec8 bits = (n + 127) << 23;
  vec8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float exp_neg(float x) {
  vec8 v = exp_neg8(splat8(x));
  return v[0];
}

// One key block against `rows` query rows (rows and bn multiples of the tile): q [rows, d] (pre-scaled),
// kt [d, bn] (keys transposed, zero past n), v [bn, d], scratch s [rows, bn]; updates the running max m, sum l
// and the unnormalised output o [rows, d] (d a multiple of kTileCols).
MIGA_CLONES void attend_block(const float* q, const float* kt, const float* v, float* s, float* o, float* m,
                              float* l, int64_t rows, int64_t n, int64_t bn, int64_t d) {
  // s = q kt
  for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
    const float *q0 = q + i0 * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
    for (int64_t j0 = 0; j0 < bn; j0 += kTileCols) {
      vec8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t c = 0; c < d; ++c) {
        const vec8 k = load8(kt + c * bn + j0);
        a0 += q0[c] * k;
        a1 += q1[c] * k;
        a2 += q2[c] * k;
        a3 += q3[c] * k;
      }
      float* si = s + i0 * bn + j0;
      store8(si, a0);
      store8(si + bn, a1);
      store8(si + 2 * bn, a2);
      store8(si + 3 * bn, a3);
    }
  }
  // online softmax: s -> p = exp(s - m_new); what o and l hold is rescaled by exp(m_old - m_new)
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * bn;
    for (int64_t j = n; j < bn; ++j) si[j] = -std::numeric_limits<float>::infinity();  // padded keys
    vec8 mv = splat8(m[i]);
    for (int64_t j0 = 0; j0 < bn; j0 += kTileCols) mv = max8(mv, load8(si + j0));
    float mx = mv[0];
    for (int k = 1; k < 8; ++k) mx = std::max(mx, mv[k]);
    const float alpha = exp_neg(m[i] - mx);
    vec8 sv = {};
    for (int64_t j0 = 0; j0 < bn; j0 += kTileCols) {
      const vec8 p = exp_neg8(load8(si + j0) - mx);
      store8(si + j0, p);
      sv += p;
    }
    float sum = 0.f;
    for (int k = 0; k < 8; ++k) sum += sv[k];
    for (int64_t j = n; j < bn; ++j) sum -= si[j];  // the padded keys' ~1e-38 (their p is never read)
    l[i] = l[i] * alpha + sum;
    m[i] = mx;
    float* oi = o + i * d;
    for (int64_t c0 = 0; c0 < d; c0 += kTileCols) store8(oi + c0, load8(oi + c0) * alpha);
  }
  // o += p v
  for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
    const float *p0 = s + i0 * bn, *p1 = p0 + bn, *p2 = p1 + bn, *p3 = p2 + bn;
    for (int64_t c0 = 0; c0 < d; c0 += kTileCols) {
      float* oi = o + i0 * d + c0;
      vec8 a0 = load8(oi), a1 = load8(oi + d), a2 = load8(oi + 2 * d), a3 = load8(oi + 3 * d);
      for (int64_t j = 0; j < n; ++j) {
        const vec8 vv = load8(v + j * d + c0);
        a0 += p0[j] * vv;
        a1 += p1[j] * vv;
        a2 += p2[j] * vv;
        a3 += p3[j] * vv;
      }
      store8(oi, a0);
      store8(oi + d, a1);
      store8(oi + 2 * d, a2);
      store8(oi + 3 * d, a3);
    }
  }
}

struct View {  // a [B, H, S, d] operand: base pointer, element size, strides in elements
  const char* data;
  int64_t esize, sb, sh, ss;
  at::ScalarType dtype;
  explicit View(const at::Tensor& t)
      : data(static_cast<const char*>(t.const_data_ptr())), esize(t.element_size()), sb(t.stride(0)),
        sh(t.stride(1)), ss(t.stride(2)), dtype(t.scalar_type()) {}
  const void* row(int64_t b, int64_t h, int64_t s) const { return data + (b * sb + h * sh + s * ss) * esize; }
};

}  // namespace

at::Tensor hetero_attention(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, int64_t skip_queries) {
  constexpr const char* op = "hetero_attention";
  TORCH_CHECK(q_.dim() == 4 && k_.dim() == 4 && v_.dim() == 4, op, ": q, k, v must be [B, H, S, d] (got ",
              q_.sizes(), ", ", k_.sizes(), ", ", v_.sizes(), ")");
  const int64_t B = q_.size(0), H = q_.size(1), Sq = q_.size(2), d = q_.size(3), Sk = k_.size(2);
  TORCH_CHECK(k_.size(0) == B && k_.size(1) == H && k_.size(3) == d && v_.sizes() == k_.sizes(), op,
              ": k and v must be [B, H, Sk, d] = [", B, ", ", H, ", Sk, ", d, "] (got ", k_.sizes(), ", ", v_.sizes(),
              ")");
  TORCH_CHECK(0 <= skip_queries && skip_queries <= Sq, op, ": skip_queries must be in [0, ", Sq, "] (got ",
              skip_queries, ")");
  TORCH_CHECK(Sk > 0 || Sq == skip_queries, op, ": attention over zero keys");
  for (const auto* t : {&q_, &k_, &v_}) {
    check_cpu(*t, op, "q, k, v");
    check_dtype(*t, op, "q, k, v");
  }
  TORCH_CHECK(k_.scalar_type() == q_.scalar_type() && v_.scalar_type() == q_.scalar_type(), op,
              ": q, k, v must have one dtype (got ", q_.scalar_type(), ", ", k_.scalar_type(), ", ", v_.scalar_type(),
              ")");
  auto unit_d = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  const at::Tensor q = unit_d(q_), k = unit_d(k_), v = unit_d(v_);
  const int64_t Sq_out = Sq - skip_queries;
  // [B, Sq', H, d] storage: out.transpose(1, 2).flatten(2) (the caller's next step) is then a free view
  at::Tensor out = at::empty({B, Sq_out, H, d}, q.options()).transpose(1, 2);
  if (out.numel() == 0) return out;

  const View qv(q), kv(k), vv(v);
  char* outp = static_cast<char*>(out.mutable_data_ptr());
  const int64_t os_b = out.stride(0), os_h = out.stride(1), os_s = out.stride(2), oes = out.element_size();
  const at::ScalarType dt = q.scalar_type();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const int64_t bn = std::min<int64_t>(kKeys, (Sk + 7) / 8 * 8);  // short sequences: one padded key block
  const int64_t dp = (d + kTileCols - 1) / kTileCols * kTileCols;  // head dim padded with zeros to the tile
  const int64_t q_blocks = (Sq_out + kRows - 1) / kRows;
  const int64_t rows_max = std::min(kRows, (Sq_out + kTileRows - 1) / kTileRows * kTileRows);
  // >= ~1 MFLOP per chunk so that tiny sequences are batched
  const int64_t grain = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, 4 * rows_max * Sk * d));

  at::parallel_for(0, B * H * q_blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(rows_max * dp), kt(dp * bn), vf(bn * dp), s(rows_max * bn), o(rows_max * dp);
    std::vector<float> m(rows_max), l(rows_max), buf(d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, r0 = (task % q_blocks) * kRows;
      const int64_t b = bh / H, h = bh % H, rows = std::min(kRows, Sq_out - r0);
      const int64_t rows_pad = (rows + kTileRows - 1) / kTileRows * kTileRows;
      std::fill(qf.begin(), qf.end(), 0.f);  // padding rows / channels stay zero
      for (int64_t i = 0; i < rows; ++i) {
        const float* src = as_float(dt, qv.row(b, h, skip_queries + r0 + i), buf.data(), d);
        for (int64_t c = 0; c < d; ++c) qf[i * dp + c] = src[c] * scale;
      }
      std::fill(o.begin(), o.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      for (int64_t k0 = 0; k0 < Sk; k0 += bn) {
        const int64_t n = std::min(bn, Sk - k0);
        if (n < bn || dp != d) {
          std::fill(kt.begin(), kt.end(), 0.f);
          std::fill(vf.begin(), vf.end(), 0.f);
        }
        for (int64_t j = 0; j < n; ++j) {
          const float* kr = as_float(dt, kv.row(b, h, k0 + j), buf.data(), d);
          for (int64_t c = 0; c < d; ++c) kt[c * bn + j] = kr[c];
          const float* vr = as_float(dt, vv.row(b, h, k0 + j), buf.data(), d);
          std::copy(vr, vr + d, vf.begin() + j * dp);
        }
        attend_block(qf.data(), kt.data(), vf.data(), s.data(), o.data(), m.data(), l.data(), rows_pad, n, bn, dp);
      }
      for (int64_t i = 0; i < rows; ++i) {
        void* dst = outp + (b * os_b + h * os_h + (r0 + i) * os_s) * oes;
        float* res = out_float(dt, dst, buf.data());
        const float inv = 1.f / l[i];
        for (int64_t c = 0; c < d; ++c) res[c] = o[i * dp + c] * inv;
        store(dt, res, dst, d);
      }
    }
  });
  return out;
}

}  // namespace miga_fast

TORCH_LIBRARY_FRAGMENT(miga_fast, m) {
  m.def("hetero_attention(Tensor q, Tensor k, Tensor v, int skip_queries=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) {
  m.impl("hetero_attention", &miga_fast::hetero_attention);
}
