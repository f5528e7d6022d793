// kernels/adamw.cuh: one AdamW step per element with the update of kernels/adamw_math.h
// (PyTorch semantics), and the one-block kernel that turns a step's norm partials into its
// clipping factor. Parameters and gradients are fp32 or bf16; the moments stay fp32.
#pragma once

#include "kernels/adamw_math.h"
#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

// Sums the squared-gradient partials (one double per block of sum_squares_partial_kernel),
// checks the guard, and writes the norm (when `norm` is not null) and the factor every gradient
// is read with: NaN means the step is skipped. One block, so the order of the sum is fixed.
template <class Unused = void>
__global__ void gradient_scale_kernel(const double* partials, int64_t partial_count,
                                      const float* guard, int64_t guard_count, double max_grad_norm,
                                      float* norm, float* scale) {
  __shared__ double scratch[32];
  double sum = 0.0, bad_guard_values = 0.0;
  for (int64_t i = thread_index(); i < partial_count; i += block_threads()) sum += partials[i];
  for (int64_t i = thread_index(); i < guard_count; i += block_threads())
    if (!adamw::finite(guard[i])) bad_guard_values += 1.0;
  sum = block_sum(sum, scratch);
  bad_guard_values = block_sum(bad_guard_values, scratch);
  if (thread_index() == 0) {
    const adamw::GradientScale s =
        adamw::gradient_scale(sum, max_grad_norm, bad_guard_values == 0.0);
    if (norm != nullptr) *norm = s.norm;
    *scale = s.scale;
  }
}

// `scale` (null: 1) multiplies each gradient as it is read; a non-finite scale skips the step.
template <class T>
__global__ void adamw_kernel(T* param, const T* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                             adamw::StepConstants constants, float beta1, float beta2, float eps,
                             const float* scale, bool vectorized) {
  const float grad_scale = scale != nullptr ? *scale : 1.0f;
  if (!adamw::finite(grad_scale)) return;
  // Four elements per pack keeps the fp32 moments and a bf16 parameter in step.
  constexpr int kPack = 4;
  auto step = [&](float& p, float g, float& m, float& v) {
    adamw::update(p, g * grad_scale, m, v, constants, beta1, beta2, eps);
  };
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        Pack<T, kPack> pp, pg;
        Pack<float, kPack> pm, pv;
        load_pack(pp, param + i);
        load_pack(pg, grad + i);
        load_pack(pm, exp_avg + i);
        load_pack(pv, exp_avg_sq + i);
        for (int e = 0; e < kPack; ++e) {
          float p = to_float(pp.v[e]);
          step(p, to_float(pg.v[e]), pm.v[e], pv.v[e]);
          pp.v[e] = from_float<T>(p);
        }
        store_pack(param + i, pp);
        store_pack(exp_avg + i, pm);
        store_pack(exp_avg_sq + i, pv);
      },
      [&](int64_t i) {
        float p = to_float(param[i]);
        step(p, to_float(grad[i]), exp_avg[i], exp_avg_sq[i]);
        param[i] = from_float<T>(p);
      });
}

}  // namespace sp::SP_CUDA_NS
