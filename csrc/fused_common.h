// Helpers shared by the fused CPU kernels (one .cpp per op). Every kernel computes in fp32 whatever the
// storage dtype (float32 / float16 / bfloat16): rows are widened into fp32 scratch buffers (zero-copy for
// float32) and narrowed once on store, so one fp32 code path serves every dtype combination.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace miga_fast {

inline bool kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(kernel_dtype(t.scalar_type()), op, ": ", name, " must be float32, float16 or bfloat16 (got ",
              t.scalar_type(), ")");
}

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor (got ", t.device(), ")");
}

template <typename T>
inline void widen(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename T>
inline void narrow(const float* src, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// n values at src (dtype t) as fp32: src itself for float32, else widened into buf.
inline const float* as_float(at::ScalarType t, const void* src, float* buf, int64_t n) {
  switch (t) {
    case at::kFloat:
      return static_cast<const float*>(src);
    case at::kHalf:
      widen(static_cast<const c10::Half*>(src), buf, n);
      return buf;
    default:
      widen(static_cast<const c10::BFloat16*>(src), buf, n);
      return buf;
  }
}

// Where to compute n fp32 results bound for dst (dtype t): dst itself for float32, else buf (then store()).
inline float* out_float(at::ScalarType t, void* dst, float* buf) {
  return t == at::kFloat ? static_cast<float*>(dst) : buf;
}

inline void store(at::ScalarType t, const float* src, void* dst, int64_t n) {
  if (t == at::kHalf) {
    narrow(src, static_cast<c10::Half*>(dst), n);
  } else if (t == at::kBFloat16) {
    narrow(src, static_cast<c10::BFloat16*>(dst), n);
  }  // float32 results were computed in place
}

// Per-frame vectors [B, F, D] as a contiguous fp32 copy (small: D floats per frame).
inline at::Tensor frame_vectors(const at::Tensor& t) {
  return t.to(at::kFloat).contiguous();
}

}  // namespace miga_fast
