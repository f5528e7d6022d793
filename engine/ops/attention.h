// Attention: masked_softmax over scores (the materialised reference) and fused attention over
// q/k/v in [B, T, H, D] layout (strided views of projections, no head transposes copied).
#pragma once

#include "engine/backend.h"
#include "engine/tensor.h"

namespace sp {

/// softmax(scores * scale + bias, masked) over the last axis of [B, H, Tq, Tk].
/// Differentiable in scores.
Tensor masked_softmax(const Tensor& scores, const AttentionMask& mask);

/// out[b, i, h] = sum_j softmax_j(q_i . k_j * scale + bias, masked) v_j -> [B, Tq, H, D].
/// q [B, Tq, H, D], k/v [B, Tk, H, D]; differentiable in q, k and v (bias and mask are constant).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask);

/// The same attention composed from matmul, masked_softmax and dropout with the T x T
/// probabilities materialised: the oracle for the fused kernels, and the train-mode path when
/// attention dropout (GPT-2's attn_pdrop) is active.
Tensor attention_materialized(const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionMask& mask, float dropout_p = 0.0f,
                              uint64_t dropout_seed = 0, uint64_t dropout_offset = 0);

}  // namespace sp
