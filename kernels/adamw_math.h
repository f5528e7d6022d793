// The per-element AdamW update and the gradient clipping factor shared by the CPU backend and the
// CUDA kernels, written to follow torch.optim.AdamW and clip_grad_norm_ operation by operation.
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

// False for NaN and +-inf (written without <cmath>'s isfinite, which device code lacks).
SP_HOST_DEVICE inline bool finite(float x) {
  return fabsf(x) <= 3.402823466e38f;
}

// A step's gradient factor: `norm` is the global 2-norm as the float the host reads, `scale` what
// every gradient is multiplied by as it is read: min(1, max_grad_norm / (norm + 1e-6)) when
// clipping (torch.nn.utils.clip_grad_norm_, which computes the factor from the unrounded norm),
// else 1; NaN means "skip the update" (a non-finite norm, or a non-finite guard value).
struct GradientScale {
  float norm;
  float scale;
};

SP_HOST_DEVICE inline GradientScale gradient_scale(double sum_of_squares, double max_grad_norm,
                                                   bool guard_finite) {
  const double norm = sqrt(sum_of_squares);
  GradientScale s{float(norm), 1.0f};
  if (!guard_finite || !finite(s.norm)) {
    s.scale = NAN;
  } else if (max_grad_norm > 0.0) {
    const float coef = float(max_grad_norm / (norm + 1e-6));
    if (coef < 1.0f) s.scale = coef;
  }
  return s;
}

}  // namespace sp::adamw
