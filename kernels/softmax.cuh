// kernels/softmax.cuh: the masked softmax over the last axis of attention scores [B, H, Tq, Tk]
// and its backward, a block per row; the materialised attention path and the oracle of the fused
// kernel in kernels/attention.cuh.
#pragma once

#include "kernels/attention_mask.cuh"
#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

// probs[row] = softmax(masked scores[row]); a row with no visible key is all zeros.
template <class T>
__global__ void masked_softmax_forward_kernel(const T* scores, AttentionMaskArgs mask,
                                              int64_t heads, int64_t tq, int64_t tk, int64_t rows,
                                              T* probs, bool vectorized) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t i = row % tq, h = (row / tq) % heads, b = row / (tq * heads);
    const T* in[1] = {scores + row * tk};
    auto score = [&](int64_t j, float raw) {
      return masked_score(raw, mask, b, h, i, j, heads, tq, tk);
    };
    float max = -INFINITY;
    for_each_column(vectorized, tk, in,
                    [&](int64_t j, const float(&v)[1]) { max = fmaxf(max, score(j, v[0])); });
    max = block_max(max, scratch);
    T* out = probs + row * tk;
    if (max == -INFINITY) {  // uniform across the block: every thread saw the same max
      for (int64_t j = thread_index(); j < tk; j += block_threads()) out[j] = from_float<T>(0.0f);
      continue;
    }
    float sum = 0.0f;
    for_each_column(vectorized, tk, in,
                    [&](int64_t j, const float(&v)[1]) { sum += expf(score(j, v[0]) - max); });
    sum = block_sum(sum, scratch);
    for_each_column(vectorized, tk, in, [&](int64_t j, const float(&v)[1]) {
      out[j] = from_float<T>(expf(score(j, v[0]) - max) / sum);
    });
  }
}

// d_scores = scale * p * (dp - sum(dp * p)) per row.
template <class T>
__global__ void masked_softmax_backward_kernel(const T* probs, const T* d_probs, float scale,
                                               int64_t rows, int64_t tk, T* d_scores,
                                               bool vectorized) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* in[2] = {probs + row * tk, d_probs + row * tk};
    float dot = 0.0f;
    for_each_column(vectorized, tk, in, [&](int64_t, const float(&v)[2]) { dot += v[0] * v[1]; });
    dot = block_sum(dot, scratch);
    T* out = d_scores + row * tk;
    for_each_column(vectorized, tk, in, [&](int64_t j, const float(&v)[2]) {
      out[j] = from_float<T>(scale * v[0] * (v[1] - dot));
    });
  }
}

}  // namespace sp::SP_CUDA_NS
