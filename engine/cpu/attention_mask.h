// mask_scores_row: the CPU reference of how attention scores are scaled, biased and masked
// (causal, sliding window, key padding) before the softmax; masked keys become -inf.
#pragma once

#include <cstdint>
#include <limits>

#include "engine/backend.h"

namespace sp::cpu {

// Transforms one row of raw q.k scores (query i of batch b, head h) in place.
inline void mask_scores_row(float* row, int64_t b, int64_t h, int64_t i, int64_t num_heads,
                            int64_t tq, int64_t tk, const AttentionMask& mask) {
  const float* bias = nullptr;
  if (mask.bias.defined()) {
    const int64_t per_head = tq * tk;
    const int64_t batch_offset = mask.bias.dim() == 4 ? b * num_heads * per_head : 0;
    bias = mask.bias.data<float>() + batch_offset + h * per_head + i * tk;
  }
  const float* keep =
      mask.key_padding.defined() ? mask.key_padding.data<float>() + b * tk : nullptr;
  const int64_t last_visible = mask.causal ? mask.query_offset + i : tk - 1;
  // Sliding window: keys more than window - 1 positions behind the query are hidden.
  const int64_t first_visible =
      mask.sliding_window > 0 ? mask.query_offset + i - mask.sliding_window + 1 : 0;
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < tk; ++j) {
    float s = row[j] * mask.scale;
    if (bias) s += bias[j];
    if (j > last_visible || j < first_visible || (keep && keep[j] == 0.0f)) s = kMasked;
    row[j] = s;
  }
}

}  // namespace sp::cpu
