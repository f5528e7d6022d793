// matmul (batched, either operand a transposed view: no copies for GPT-2's [in, out] Conv1D or
// nn.Linear's [out, in] weights) and linear layers. Differentiable; frozen operands get no GEMM.
#pragma once

#include "engine/backend.h"
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

namespace ops_detail {

/// The GEMM matmul(a, b) issues, for ops that fuse something into it: C is left null for the
/// caller to point at a contiguous out_shape tensor; the storages keep the operands (a cast or
/// copied one included) alive until the GEMM is queued. Throws on mismatched shapes.
struct MatmulPlan {
  GemmArgs gemm;
  Shape out_shape;
  DType out_dtype = DType::F32;
  Tensor a_storage, b_storage;
};
MatmulPlan plan_matmul(const Tensor& a, const Tensor& b);

}  // namespace ops_detail

}  // namespace sp
