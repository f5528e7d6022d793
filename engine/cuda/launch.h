// engine/cuda/launch.h: host-side helpers the per-op .cu files share: dtype dispatch to the
// fp32/bf16 kernel instantiations, typed device pointers, alignment tests for vector loads, and
// strided layouts with mergeable axes folded together.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/tensor.h"
#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

// Threads per block of the grid-stride (elementwise-shaped) kernels.
constexpr int kElementwiseThreads = 256;

template <class T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<float>) or f(TypeTag<__nv_bfloat16>) for a float tensor's dtype.
template <class F>
void dispatch_float(const char* op, const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::F32:
      f(TypeTag<float>{});
      return;
    case DType::BF16:
      f(TypeTag<__nv_bfloat16>{});
      return;
    default:
      fail(ErrorKind::kUnsupported, op, ": CUDA kernels compute on F32 or BF16 tensors, got ",
           t.describe());
  }
}

// Every defined tensor has `like`'s dtype (ops guarantee it; a mismatch is a caller bug).
// The traffic of a kernel that reads its inputs and writes its outputs once each: `flops` and the
// bytes of the given tensors (undefined ones skipped) plus `extra_bytes`.
inline KernelTraffic io_traffic(double flops, std::initializer_list<const Tensor*> tensors,
                                double extra_bytes = 0.0) {
  KernelTraffic t{flops, extra_bytes};
  for (const Tensor* tensor : tensors)
    if (tensor->defined()) t.bytes += double(tensor->nbytes());
  return t;
}

inline void expect_dtype(const char* op, DType dtype,
                         std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    SP_CHECK(!t->defined() || t->dtype() == dtype, op, ": expected ", dtype_name(dtype),
             " tensors, got ", t->describe());
}

inline void expect_contiguous(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    SP_CHECK(!t->defined() || t->is_contiguous(), op, ": expected a contiguous tensor, got ",
             t->describe(), " with strides ", shape_str(t->strides()));
}

template <class T>
const T* const_ptr(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}

template <class T>
T* mutable_ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

// True when every pointer allows 16-byte loads (null pointers, i.e. absent outputs, do).
inline bool aligned16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Row kernels load whole packs when every row start is aligned: the bases are, and the row
// length is a multiple of the pack.
inline bool rows_vectorizable(int64_t cols, size_t element_size,
                              std::initializer_list<const void*> bases) {
  return cols % int64_t(16 / element_size) == 0 && aligned16(bases);
}

// The shape of a fused residual + norm row kernel's work ([rows, cols]; rows 0: nothing to do) and
// dropout's keep scale 1 / (1 - p), as the CPU computes it, after checking p.
struct ResidualRows {
  int64_t rows = 0, cols = 0;
  float keep_scale = 1.0f;
};
inline ResidualRows residual_rows(const char* op, const Tensor& x, float p) {
  SP_CHECK(p >= 0.0f && p < 1.0f, op, ": probability must be in [0, 1), got ", p);
  const int64_t cols = x.size(-1);
  return {cols == 0 ? 0 : x.numel() / cols, cols, 1.0f / (1.0f - p)};
}

// Merges the axes of `shape` that are contiguous with each other in all N operands and drops
// size-1 axes (the same folding as the CPU's strided loops), then checks the kernel's limit.
template <int N>
StridedLayout<N> make_strided_layout(const char* op, const Shape& shape,
                                     const std::array<Shape, N>& strides) {
  std::vector<int64_t> sizes;
  std::array<std::vector<int64_t>, N> merged;
  for (size_t axis = 0; axis < shape.size(); ++axis) {
    if (shape[axis] == 1) continue;
    bool can_merge = !sizes.empty();
    for (int t = 0; t < N && can_merge; ++t)
      can_merge = merged[t].back() == strides[t][axis] * shape[axis];
    if (can_merge) {
      sizes.back() *= shape[axis];
      for (int t = 0; t < N; ++t) merged[t].back() = strides[t][axis];
    } else {
      sizes.push_back(shape[axis]);
      for (int t = 0; t < N; ++t) merged[t].push_back(strides[t][axis]);
    }
  }
  if (sizes.empty()) {
    sizes.push_back(1);
    for (int t = 0; t < N; ++t) merged[t].push_back(1);
  }
  SP_CHECK(int(sizes.size()) <= kMaxDims, op, ": ", sizes.size(),
           " non-mergeable axes exceed the CUDA kernels' limit of ", kMaxDims, " (shape ",
           shape_str(shape), ")");
  StridedLayout<N> layout;
  layout.ndim = int(sizes.size());
  for (int axis = 0; axis < layout.ndim; ++axis) {
    layout.sizes[axis] = sizes[size_t(axis)];
    for (int t = 0; t < N; ++t) layout.strides[t][axis] = merged[t][size_t(axis)];
  }
  return layout;
}

// A layout is one unit-stride run in every operand: the tensors are plain arrays.
template <int N>
bool is_dense(const StridedLayout<N>& layout) {
  if (layout.ndim != 1) return false;
  for (int t = 0; t < N; ++t)
    if (layout.strides[t][0] != 1) return false;
  return true;
}

}  // namespace sp::SP_CUDA_NS
