// kernels/attention_mask.cuh: the device form of sp::AttentionMask (scale, causal with a query
// offset, sliding window, key padding, additive bias) applied to one raw q.k score, shared by the
// masked softmax and the fused attention. Semantics as engine/cpu/attention_mask.h: masked scores
// are -inf.
#pragma once

#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

struct AttentionMaskArgs {
  float scale = 1.0f;
  bool causal = false;
  int64_t query_offset = 0;            // absolute position of query 0 (KV-cache length)
  const float* key_padding = nullptr;  // [B, Tk]: 0 masks the key
  const float* bias = nullptr;         // [H, Tq, Tk] or [B, H, Tq, Tk]
  bool bias_per_batch = false;
  int64_t sliding_window = 0;  // > 0: keys more than window - 1 behind the query are hidden
};

// The score of query i (batch b, head h) against key j, scaled, biased and masked.
__device__ __forceinline__ float masked_score(float raw, const AttentionMaskArgs& mask, int64_t b,
                                              int64_t h, int64_t i, int64_t j, int64_t heads,
                                              int64_t tq, int64_t tk) {
  float s = raw * mask.scale;
  if (mask.bias) s += mask.bias[((mask.bias_per_batch ? b * heads : 0) + h) * tq * tk + i * tk + j];
  const bool hidden =
      (mask.causal && j > mask.query_offset + i) ||
      (mask.sliding_window > 0 && j <= mask.query_offset + i - mask.sliding_window) ||
      (mask.key_padding && mask.key_padding[b * tk + j] == 0.0f);
  return hidden ? -INFINITY : s;
}

}  // namespace sp::SP_CUDA_NS
