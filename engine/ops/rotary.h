// rotary_embedding: Llama's RoPE applied to query/key heads [B, T, H, D] (rotate_half form),
// with the angles' cos/sin per row and position [B, T, D/2] computed by the model.
#pragma once

#include "engine/tensor.h"

namespace sp {

/// out = x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), rotate_half(x) = cat(-x2, x1):
/// transformers' apply_rotary_pos_emb. x [B, T, H, D] (D even, float, any layout), cos/sin F32
/// [B, T, D/2] on x's device. Differentiable in x (the rotation's transpose).
Tensor rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin);

}  // namespace sp
