// Activations: gelu_new (tanh form), exact GELU (erf form), ReLU, and the gated form
// act(gate) * up of T5 v1.1's gated-gelu and Llama's SwiGLU feed-forwards. All differentiable.
#pragma once

#include <string_view>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace sp {

/// act(x) elementwise; the named forms below are shorthands.
Tensor activation(const Tensor& x, Activation act);
/// act(x + bias), bias over the last axis: a linear layer's bias fused into its activation (one
/// pass instead of two). Differentiable in x and bias.
Tensor activation(const Tensor& x, Activation act, const Tensor& bias);
Tensor gelu_tanh(const Tensor& x);
Tensor gelu_erf(const Tensor& x);
Tensor relu(const Tensor& x);
/// act(gate) * up (T5 v1.1's gated feed-forward).
Tensor gated_activation(const Tensor& gate, const Tensor& up, Activation act);
/// gated_activation over one packed projection gate_up [..., 2 * width] (gate, then up, on the
/// last axis: the output of one GEMM) -> [..., width]. The backward writes both halves of one
/// [..., 2 * width] gradient, so the projection's backward is one GEMM too.
Tensor gated_activation_packed(const Tensor& gate_up, Activation act);

/// Hugging Face names: "gelu_new"/"gelu_pytorch_tanh" -> tanh form, "gelu" -> erf, "relu".
/// Throws an Error naming the accepted values for anything else.
Activation parse_activation(std::string_view hf_name, const char* field);

}  // namespace sp
