// for_each_row: iterates any-strided tensors of one shape as rows of their (merged) last axis,
// so elementwise CPU kernels handle views and broadcasts without materialising them.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "engine/thread_pool.h"

namespace sp::cpu {

// Merges adjacent axes that are contiguous with each other in all N operands.
template <size_t N>
void merge_axes(Shape& shape, std::array<Shape, N>& strides) {
  Shape merged_shape;
  std::array<Shape, N> merged;
  for (size_t axis = 0; axis < shape.size(); ++axis) {
    if (shape[axis] == 1) continue;  // size-1 axes never move a pointer
    bool can_merge = !merged_shape.empty();
    for (size_t t = 0; t < N && can_merge; ++t)
      can_merge = merged[t].back() == strides[t][axis] * shape[axis];
    if (can_merge) {
      merged_shape.back() *= shape[axis];
      for (size_t t = 0; t < N; ++t) merged[t].back() = strides[t][axis];
    } else {
      merged_shape.push_back(shape[axis]);
      for (size_t t = 0; t < N; ++t) merged[t].push_back(strides[t][axis]);
    }
  }
  if (merged_shape.empty()) {  // a scalar, or all axes of size 1
    merged_shape.push_back(1);
    for (size_t t = 0; t < N; ++t) merged[t].push_back(1);
  }
  shape = merged_shape;
  strides = merged;
}

// Calls fn(offsets, inner_count, inner_strides) for every row, where offsets[t] is operand t's
// element offset of the row start. Rows are distributed over the thread pool.
template <size_t N, class Fn>
void for_each_row(Shape shape, std::array<Shape, N> strides, Fn&& fn) {
  merge_axes(shape, strides);
  const size_t ndim = shape.size();
  const int64_t inner = shape.back();
  int64_t rows = 1;
  for (size_t axis = 0; axis + 1 < ndim; ++axis) rows *= shape[axis];
  std::array<int64_t, N> inner_strides;
  for (size_t t = 0; t < N; ++t) inner_strides[t] = strides[t].back();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1));
  parallel_for(0, rows, grain, [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> index(ndim, 0);
    for (int64_t row = lo; row < hi; ++row) {
      int64_t rest = row;
      std::array<int64_t, N> offsets{};
      for (size_t axis = ndim - 1; axis-- > 0;) {
        int64_t i = rest % shape[axis];
        rest /= shape[axis];
        for (size_t t = 0; t < N; ++t) offsets[t] += i * strides[t][axis];
      }
      fn(offsets, inner, inner_strides);
    }
  });
}

}  // namespace sp::cpu
