// matmul (batched, either operand a transposed view: no copies for GPT-2's [in, out] Conv1D or
// nn.Linear's [out, in] weights) and linear layers. Differentiable; frozen operands get no GEMM.
#pragma once

#include "engine/tensor.h"

namespace sp {

/// a [..., M, K] @ b [K, N] or [..., K, N] (equal batch dims) -> [..., M, N] contiguous.
/// Transposed views (t.transpose(-1, -2)) are passed to the GEMM as transpose flags.
Tensor matmul(const Tensor& a, const Tensor& b);

enum class WeightLayout {
  kInOut,  ///< GPT-2 Conv1D: weight [in, out], y = x W + b
  kOutIn,  ///< nn.Linear (T5): weight [out, in], y = x W^T + b
};

/// y = x W (+ bias) with W in the given layout; bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, WeightLayout layout);

}  // namespace sp
