// kernels/adamw.cuh: one AdamW step per element with the update of kernels/adamw_math.h
// (PyTorch semantics). Parameters and gradients are fp32 or bf16; the moments stay fp32.
#pragma once

#include "kernels/adamw_math.h"
#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

template <class T>
__global__ void adamw_kernel(T* param, const T* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                             adamw::StepConstants constants, float beta1, float beta2, float eps,
                             bool vectorized) {
  // Four elements per pack keeps the fp32 moments and a bf16 parameter in step.
  constexpr int kPack = 4;
  auto step = [&](float& p, float g, float& m, float& v) {
    adamw::update(p, g, m, v, constants, beta1, beta2, eps);
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
