// dropout with a counter-based mask: element i is dropped when Philox(seed, offset + i) < p, so
// CPU and CUDA drop the same elements and the backward regenerates the mask instead of storing it;
// and residual_dropout_add, the fused bias + dropout + residual add of a transformer branch.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace sp {

/// Returns x unchanged when p == 0 (eval mode passes p = 0). Differentiable in x.
Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset);

/// residual + dropout(x + bias, p, seed, offset) in one pass: the end of GPT-2's attention and MLP
/// branches (projection bias, resid_pdrop, residual add) with the same mask as the three ops.
/// x and residual share a shape; bias is [x's last axis] or undefined. Differentiable in all.
Tensor residual_dropout_add(const Tensor& residual, const Tensor& x, const Tensor& bias, float p,
                            uint64_t seed, uint64_t offset);

namespace ops_detail {

// residual_dropout_add's argument checks (one error naming `op`); false where the bias cannot be
// fused (its dtype differs from x's), and the caller composes add, dropout and add instead.
bool check_residual_dropout_add(const char* op, const Tensor& residual, const Tensor& x,
                                const Tensor& bias, float p);
// Records out = residual_dropout_add(residual, x, bias, p, seed, offset) on the tape, for the ops
// that compute it fused with something else.
void record_residual_dropout_add(Tensor& out, const Tensor& residual, const Tensor& x,
                                 const Tensor& bias, float p, uint64_t seed, uint64_t offset);

}  // namespace ops_detail

}  // namespace sp
