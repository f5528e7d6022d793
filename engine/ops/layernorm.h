// layernorm (GPT-2) and rms_norm (T5LayerNorm) over the last axis, with weight (and bias).
// Differentiable in x, weight and bias; frozen weights cost no reduction in backward.
#pragma once

#include "engine/tensor.h"

namespace sp {

/// (x - mean) / sqrt(var + eps) * weight + bias over the last axis (GPT-2's LayerNorm).
Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps);
/// x / sqrt(mean(x^2) + eps) * weight over the last axis (T5LayerNorm).
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps);

}  // namespace sp
