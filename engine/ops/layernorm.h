// layernorm (GPT-2, alone or fused with the residual add before it) and rms_norm (T5LayerNorm)
// over the last axis. Differentiable in every input; frozen weights cost no reduction in backward.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace sp {

/// (x - mean) / sqrt(var + eps) * weight + bias over the last axis (GPT-2's LayerNorm).
Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps);
/// A transformer branch's end and the next LayerNorm in one pass: sum =
/// residual_dropout_add(residual, x, bias, p, seed, offset) and normed = layernorm(sum, weight,
/// norm_bias, eps), with the two ops' values, dropout draws and gradients.
struct ResidualAndNorm {
  Tensor sum;
  Tensor normed;
};
ResidualAndNorm residual_dropout_add_layernorm(const Tensor& residual, const Tensor& x,
                                               const Tensor& bias, float p, uint64_t seed,
                                               uint64_t offset, const Tensor& weight,
                                               const Tensor& norm_bias, float eps);

/// x / sqrt(mean(x^2) + eps) * weight over the last axis (T5LayerNorm).
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps);
/// residual_dropout_add_layernorm's counterpart for rms_norm (Llama's and T5's residual stream).
ResidualAndNorm residual_dropout_add_rms_norm(const Tensor& residual, const Tensor& x,
                                              const Tensor& bias, float p, uint64_t seed,
                                              uint64_t offset, const Tensor& weight, float eps);

}  // namespace sp
