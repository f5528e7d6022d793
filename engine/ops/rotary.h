// rotary_embedding: Llama's RoPE applied to query/key heads [B, T, H, D] (rotate_half form),
// with the angles' cos/sin per row and position [B, T, D/2] computed by the model.
#pragma once

#include "engine/tensor.h"

namespace sp {

/// out = x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), rotate_half(x) = cat(-x2, x1):
/// transformers' apply_rotary_pos_emb. x [B, T, H, D] (D even, float, any layout: the heads of
/// a packed projection are read in place), cos/sin F32 [B, T, D/2] on x's device. Differentiable
/// in x (the rotation's transpose); the result is contiguous.
Tensor rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin);

namespace ops_detail {
/// rotary_embedding's checks of x and its angle tables, shared with ops that rotate inside.
void check_rotary_inputs(const char* op, const Tensor& x, const Tensor& cos, const Tensor& sin);
}  // namespace ops_detail

}  // namespace sp
