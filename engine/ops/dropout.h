// dropout with a counter-based mask: element i is dropped when Philox(seed, offset + i) < p, so
// CPU and CUDA drop the same elements and the backward regenerates the mask instead of storing it.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace sp {

/// Returns x unchanged when p == 0 (eval mode passes p = 0). Differentiable in x.
Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset);

}  // namespace sp
