// CPU AdamW step with PyTorch's semantics (decoupled decay, bias correction, eps after sqrt),
// clipping and the non-finite guard of Backend::adamw_step.
#include <cmath>

#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "kernels/adamw_math.h"

namespace sp {

void CpuBackend::adamw_step(const AdamWGroup& group, const AdamWUpdate& update, const Tensor& guard,
                            const Tensor& grad_norm) {
  check_adamw_step_args(group, guard, grad_norm);
  for (const Tensor& p : group.params)
    SP_CHECK(p.dtype() == DType::F32, "adamw_step on the CPU: parameters must be F32, got ",
             p.describe());
  float scale = 1.0f;
  if (grad_norm.defined() || update.max_grad_norm > 0.0 || guard.defined()) {
    double sum_of_squares = 0.0;
    if (grad_norm.defined() || update.max_grad_norm > 0.0)
      for (const Tensor& g : group.grads) sum_of_squares += sum_squares(g);
    bool guard_finite = true;
    if (guard.defined())
      for (float v : guard.to_floats()) guard_finite = guard_finite && adamw::finite(v);
    const adamw::GradientScale s =
        adamw::gradient_scale(sum_of_squares, update.max_grad_norm, guard_finite);
    if (grad_norm.defined()) grad_norm.data<float>()[0] = s.norm;
    scale = s.scale;
  }
  if (!adamw::finite(scale)) return;
  const adamw::StepConstants k = adamw::step_constants(update.lr, update.beta1, update.beta2,
                                                       update.weight_decay, update.step);
  for (size_t t = 0; t < group.params.size(); ++t) {
    float* p = group.params[t].data<float>();
    const float* g = group.grads[t].data<float>();
    float* m = group.exp_avg[t].data<float>();
    float* v = group.exp_avg_sq[t].data<float>();
    // A scale of exactly 1 multiplies exactly, so unclipped steps equal torch's bit for bit.
    for (int64_t i = 0; i < group.params[t].numel(); ++i)
      adamw::update(p[i], g[i] * scale, m[i], v[i], k, update.beta1, update.beta2, update.eps);
  }
}

}  // namespace sp
