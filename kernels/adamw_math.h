// The per-element AdamW update shared by the CPU backend and the CUDA kernel, written to follow
// torch.optim.AdamW's single-tensor path operation by operation (so rounding matches closely).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/philox.h"  // SP_HOST_DEVICE

namespace sp::adamw {

struct StepConstants {
  float decay;                  // 1 - lr * weight_decay
  float step_size;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
};

inline StepConstants step_constants(float lr, float beta1, float beta2, float weight_decay,
                                    int64_t step) {
  // torch computes these in Python doubles and passes them to float ops.
  double bc1 = 1.0 - std::pow(double(beta1), double(step));
  double bc2 = 1.0 - std::pow(double(beta2), double(step));
  return {float(1.0 - double(lr) * double(weight_decay)), float(double(lr) / bc1),
          float(std::sqrt(bc2))};
}

SP_HOST_DEVICE inline void update(float& param, float grad, float& exp_avg, float& exp_avg_sq,
                                  const StepConstants& k, float beta1, float beta2, float eps) {
  param *= k.decay;
  exp_avg += (1.0f - beta1) * (grad - exp_avg);  // lerp_(grad, 1 - beta1)
  exp_avg_sq = exp_avg_sq * beta2 + (1.0f - beta2) * grad * grad;
  float denom = sqrtf(exp_avg_sq) / k.bias_correction2_sqrt + eps;
  param += -k.step_size * (exp_avg / denom);
}

}  // namespace sp::adamw
