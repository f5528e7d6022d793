// Reductions: sum / mean over axes or everything, and sum_to_shape (the backward of broadcast).
// All differentiable.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace sp {

/// Sum or mean over `axes` (negative count from the end).
Tensor sum(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim = false);
Tensor sum_all(const Tensor& x);   ///< a [] scalar
Tensor mean_all(const Tensor& x);  ///< a [] scalar
/// Sums a broadcast result back to `shape` (leading axes dropped, size-1 axes summed).
Tensor sum_to_shape(const Tensor& x, const Shape& shape);

}  // namespace sp
