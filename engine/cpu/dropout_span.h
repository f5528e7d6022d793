// dropout_span: the CPU's dropout of a run of consecutive stream elements, shared by the dropout
// op, the fused attention (which drops probabilities row by row without storing a mask) and the
// residual adds (residual_dropout_add, alone or before a LayerNorm).
#pragma once

#include <cstdint>

namespace sp::cpu {

// dst[e] = src[e] / (1 - p), or 0 where philox::uniform(seed, 0, first_counter + e) < p, for
// e in [0, count). dst may be src.
void dropout_span(const float* src, float* dst, int64_t count, float p, uint64_t seed,
                  uint64_t first_counter);

// out[e] = residual[e] + dropout(x[e] + bias[e]) (bias may be null) for e in [0, count), element e
// drawing stream element first_counter + e. out may be x.
void residual_dropout_add_span(const float* residual, const float* x, const float* bias, float* out,
                               int64_t count, float p, uint64_t seed, uint64_t first_counter);

}  // namespace sp::cpu
