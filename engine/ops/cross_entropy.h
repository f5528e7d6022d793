// cross_entropy: mean token loss over rows whose target is not ignore_index (-100), fused with
// log-softmax, as torch.nn.functional.cross_entropy computes it. Differentiable in the logits.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace sp {

struct CrossEntropyResult {
  Tensor loss;           // [] mean over counted rows (0 when none, like HF's 0-target case is NaN)
  int64_t counted_rows;  // rows whose target != ignore_index
};

// logits [N, V] (or [..., V]), targets [N] (or [...]) I64/I32.
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets,
                                 int64_t ignore_index = -100);

}  // namespace sp
