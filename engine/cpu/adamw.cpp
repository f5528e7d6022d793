// CPU AdamW step with PyTorch's semantics (decoupled decay, bias correction, eps after sqrt).
#include <cmath>

#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "kernels/adamw_math.h"

namespace sp {

void CpuBackend::adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                            const Tensor& exp_avg_sq, float lr, float beta1, float beta2, float eps,
                            float weight_decay, int64_t step) {
  const adamw::StepConstants k = adamw::step_constants(lr, beta1, beta2, weight_decay, step);
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* m = exp_avg.data<float>();
  float* v = exp_avg_sq.data<float>();
  for (int64_t i = 0; i < param.numel(); ++i)
    adamw::update(p[i], g[i], m[i], v[i], k, beta1, beta2, eps);
}

}  // namespace sp
