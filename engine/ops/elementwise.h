// Elementwise arithmetic with NumPy broadcasting (add, sub, mul) and scalar affine maps.
// All differentiable; broadcast inputs receive gradients summed back to their shape.
#pragma once

#include "engine/tensor.h"

namespace sp {

/// The NumPy broadcast of two shapes; throws naming both when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b);

/// a + b, a - b, a * b elementwise with broadcasting.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, float factor);                ///< x * factor
Tensor affine(const Tensor& x, float factor, float shift);  ///< x * factor + shift

/// In-place accumulation for optimisers and gradient buffers (no autograd): dst += src.
void add_(const Tensor& dst, const Tensor& src);

}  // namespace sp
