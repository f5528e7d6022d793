// checkpoint: runs a function without saving its activations and recomputes it during backward
// (activation checkpointing), trading one extra forward per block for memory.
#pragma once

#include <functional>
#include <vector>

#include "engine/tensor.h"

namespace sp {

/// fn must be deterministic (dropout takes explicit seeds/offsets) and may only read frozen
/// tensors besides `inputs`. Gradients flow to the inputs that require grad.
Tensor checkpoint(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                  const std::vector<Tensor>& inputs);

}  // namespace sp
