// concat: joins tensors along one axis (prompt + text embeddings, KV-cache growth).
// Differentiable: each input receives its slice of the gradient.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace sp {

/// Joins tensors of equal shape except along `axis` (negative counts from the end).
Tensor concat(const std::vector<Tensor>& tensors, int64_t axis);

}  // namespace sp
