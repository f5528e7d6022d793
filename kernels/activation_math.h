// The scalar math of every activation and its derivative, shared by the CPU backend (as the
// reference) and the CUDA kernels: gelu_new (tanh form), exact GELU (erf form), ReLU and SiLU.
#pragma once

#include <cmath>

#include "kernels/philox.h"  // SP_HOST_DEVICE

namespace sp::act {

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1 / sqrt(2 pi)

SP_HOST_DEVICE inline float gelu_tanh(float x) {
  float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}

SP_HOST_DEVICE inline float gelu_tanh_grad(float x) {
  float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  float t = tanhf(inner);
  return 0.5f * (1.0f + t) +
         0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
}

SP_HOST_DEVICE inline float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erff(x * kInvSqrt2));
}

SP_HOST_DEVICE inline float gelu_erf_grad(float x) {
  return 0.5f * (1.0f + erff(x * kInvSqrt2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
}

SP_HOST_DEVICE inline float relu(float x) {
  return x > 0.0f ? x : 0.0f;
}
SP_HOST_DEVICE inline float relu_grad(float x) {
  return x > 0.0f ? 1.0f : 0.0f;
}

// SiLU (swish), Llama's MLP gate: x * sigmoid(x).
SP_HOST_DEVICE inline float silu(float x) {
  return x / (1.0f + expf(-x));
}
SP_HOST_DEVICE inline float silu_grad(float x) {
  const float s = 1.0f / (1.0f + expf(-x));
  return s * (1.0f + x * (1.0f - s));
}

}  // namespace sp::act
