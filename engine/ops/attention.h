// Attention: masked_softmax over scores (the materialised reference) and fused attention over
// q/k/v in [B, T, H, D] layout (strided views of projections, no head transposes copied).
#pragma once

#include "engine/backend.h"
#include "engine/tensor.h"

namespace sp {

/// softmax(scores * scale + bias, masked) over the last axis of [B, H, Tq, Tk].
/// Differentiable in scores.
Tensor masked_softmax(const Tensor& scores, const AttentionMask& mask);

/// out[b, i, h] = sum_j dropout(softmax_j(q_i . k_j * scale + bias, masked)) v_j -> [B, Tq, H, D].
/// q [B, Tq, H, D], k/v [B, Tk, H, D]; differentiable in q, k and v (bias and mask are constant).
/// Dropout (train mode) is drawn inside the fused kernels, element for element the mask of
/// attention_materialized with the same seed and offset.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                 const AttentionDropout& dropout = {});

/// attention() over GPT-2's packed projection qkv [B, T, 3 * heads * D] (q, k, v side by side on
/// the last axis): the backward writes dq, dk and dv straight into one [B, T, 3 * heads * D]
/// gradient instead of three zero-filled buffers that slices copy and add. With qkv_bias
/// [3 * heads * D], attention reads qkv + qkv_bias (the projection's bias, rounded as add rounds
/// it) as the kernels load their tiles, so no pass over qkv adds it; differentiable in both.
Tensor attention_packed(const Tensor& qkv, int64_t heads, const AttentionMask& mask,
                        const AttentionDropout& dropout = {}, const Tensor& qkv_bias = Tensor());

/// Heads [first, first + count) of a packed projection [B, T, n * head_dim] (q, k, v side by side
/// on the last axis) as a [B, T, count, head_dim] view: what the packed attention ops read in
/// place, and what a KV cache appends.
Tensor packed_heads(const Tensor& packed, int64_t first, int64_t count, int64_t head_dim);

/// attention() with k and v from one packed projection kv [B, Tk, 2 * kv_heads * D] (k, then v,
/// on the last axis: T5's cross-attention k|v GEMM over the encoder output); kv_heads = q's
/// heads. The backward writes dk and dv into one packed gradient.
Tensor attention_kv_packed(const Tensor& q, const Tensor& kv, const AttentionMask& mask,
                           const AttentionDropout& dropout = {});

/// Llama-family attention over one packed projection qkv [B, T, (heads + 2 kv_heads) * D] (q,
/// k, v side by side on the last axis: q_proj, k_proj and v_proj as one GEMM): q and k are rotated
/// by (cos, sin) [B, T, D/2] (rotary_embedding) in one pass, then attended with v read in place.
/// The backward writes dq, dk and dv into one packed gradient and unrotates dq and dk there, so
/// the projection's backward is one GEMM and nothing is zero-filled, copied or added.
Tensor rotary_attention_packed(const Tensor& qkv, int64_t heads, int64_t kv_heads,
                               const Tensor& cos, const Tensor& sin, const AttentionMask& mask,
                               const AttentionDropout& dropout = {});

/// The same attention composed from matmul, masked_softmax and dropout with the T x T
/// probabilities materialised: the oracle for the fused kernels.
Tensor attention_materialized(const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionMask& mask, const AttentionDropout& dropout = {});

}  // namespace sp
