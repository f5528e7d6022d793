// feed_forward: a transformer MLP with frozen weights, act(x W_in + b_in) W_out, as one op so a
// backend can fuse the bias and activation into the GEMMs (cuBLASLt's GELU epilogues on CUDA).
#pragma once

#include "engine/backend.h"
#include "engine/tensor.h"

namespace sp {

/// act(x @ w_in + b_in) @ w_out: x [..., d], w_in [d, inner] and w_out [inner, d_out] (transposed
/// views allowed, as for matmul), b_in [inner] or undefined. Differentiable in every input; when
/// only x needs a gradient and all share x's dtype, one node saves act's input and the backward
/// multiplies by act' inside the second GEMM where the backend can (else it composes matmul and
/// activation, with the same results).
Tensor feed_forward(const Tensor& x, const Tensor& w_in, const Tensor& b_in, Activation act,
                    const Tensor& w_out);

}  // namespace sp
