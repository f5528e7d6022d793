// kernels/elementwise.cuh: binary ops with broadcasting (strided and contiguous-vectorised
// forms), the affine map x * scale + shift, and the beta * C scaling a GEMM with k = 0 reduces to.
#pragma once

#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

enum class BinaryKind : int { kAdd = 0, kSub = 1, kMul = 2 };

__device__ __forceinline__ float apply_binary(BinaryKind op, float a, float b) {
  switch (op) {
    case BinaryKind::kAdd:
      return a + b;
    case BinaryKind::kSub:
      return a - b;
    case BinaryKind::kMul:
      return a * b;
  }
  return 0.0f;
}

// out[operand 0] = a[operand 1] (op) b[operand 2] for any strides (zero strides broadcast).
template <class T>
__global__ void binary_strided_kernel(BinaryKind op, const T* a, const T* b, T* out,
                                      StridedLayout<3> layout, int64_t n) {
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count()) {
    int64_t offsets[3];
    strided_offsets(layout, i, offsets);
    out[offsets[0]] =
        from_float<T>(apply_binary(op, to_float(a[offsets[1]]), to_float(b[offsets[2]])));
  }
}

// All three contiguous (out may alias a): whole 16-byte packs when every pointer is aligned.
template <class T>
__global__ void binary_contiguous_kernel(BinaryKind op, const T* a, const T* b, T* out, int64_t n,
                                         bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        Pack<T> pa, pb, po;
        load_pack(pa, a + i);
        load_pack(pb, b + i);
        for (int e = 0; e < kPack; ++e)
          po.v[e] = from_float<T>(apply_binary(op, to_float(pa.v[e]), to_float(pb.v[e])));
        store_pack(out + i, po);
      },
      [&](int64_t i) { out[i] = from_float<T>(apply_binary(op, to_float(a[i]), to_float(b[i]))); });
}

// out = x * scale + shift (out may alias x).
template <class T>
__global__ void affine_kernel(const T* x, float scale, float shift, T* out, int64_t n,
                              bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        Pack<T> px, po;
        load_pack(px, x + i);
        for (int e = 0; e < kPack; ++e) po.v[e] = from_float<T>(to_float(px.v[e]) * scale + shift);
        store_pack(out + i, po);
      },
      [&](int64_t i) { out[i] = from_float<T>(to_float(x[i]) * scale + shift); });
}

// C[batch][r][c] = beta * C (exactly 0 when beta is 0, so stale NaNs do not survive), for the
// GEMMs with an empty inner dimension that BLAS libraries treat inconsistently.
template <class T>
__global__ void scale_matrices_kernel(T* c, int64_t batch, int64_t rows, int64_t cols, int64_t ldc,
                                      int64_t stride_c, float beta) {
  const int64_t n = batch * rows * cols;
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count()) {
    const int64_t col = i % cols, row = (i / cols) % rows, item = i / (cols * rows);
    T& value = c[item * stride_c + row * ldc + col];
    value = beta == 0.0f ? from_float<T>(0.0f) : from_float<T>(beta * to_float(value));
  }
}

}  // namespace sp::SP_CUDA_NS
