// dropout_span: the CPU's dropout of a run of consecutive stream elements, shared by the dropout
// op, the fused attention (which drops probabilities row by row without storing a mask) and the
// residual adds (residual_dropout_add, alone or before a LayerNorm).
#pragma once

#include <algorithm>
#include <cstdint>

#include "engine/tensor.h"
#include "engine/thread_pool.h"

namespace sp::cpu {

// dst[e] = src[e] / (1 - p), or 0 where philox::uniform(seed, 0, first_counter + e) < p, for
// e in [0, count). dst may be src.
void dropout_span(const float* src, float* dst, int64_t count, float p, uint64_t seed,
                  uint64_t first_counter);

// out[e] = residual[e] + dropout(x[e] + bias[e]) (bias may be null) for e in [0, count), element e
// drawing stream element first_counter + e. out may be x.
void residual_dropout_add_span(const float* residual, const float* x, const float* bias, float* out,
                               int64_t count, float p, uint64_t seed, uint64_t first_counter);

// The fused residual + norm forwards' row loop: for each row r of the [rows, cols] tensors, in
// parallel, sum's row = residual + dropout(x + bias) (the span above, bias undefined or [cols]),
// then norm_row(r, sum's row, cols).
template <class NormRow>
void for_each_residual_row(const Tensor& residual, const Tensor& x, const Tensor& bias, float p,
                           uint64_t seed, uint64_t offset, const Tensor& sum, NormRow&& norm_row) {
  const int64_t cols = x.size(-1);
  const int64_t rows = x.numel() / cols;
  const float* res = residual.data<float>();
  const float* in = x.data<float>();
  const float* add_bias = bias.defined() ? bias.data<float>() : nullptr;
  float* out = sum.data<float>();
  parallel_for(0, rows, std::max<int64_t>(1, 4096 / cols), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t first = r * cols;
      residual_dropout_add_span(res + first, in + first, add_bias, out + first, cols, p, seed,
                                offset + uint64_t(first));
      norm_row(r, static_cast<const float*>(out + first), cols);
    }
  });
}

}  // namespace sp::cpu
