// kernels/dropout_random.cuh: dropout (alone, or fused with a bias and a residual add) and normal
// fills from the Philox stream of kernels/philox.h, element i drawing from (seed, offset + i) as
// the CPU backend does.
#pragma once

#include "kernels/kernel_common.cuh"
#include "kernels/philox.h"

namespace sp::SP_CUDA_NS {

// y = x * keep_scale where uniform(seed, offset, i) >= p, else 0 (keep_scale = 1 / (1 - p)).
template <class T>
__global__ void dropout_kernel(const T* x, T* y, int64_t n, float p, float keep_scale,
                               uint64_t seed, uint64_t offset, bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  auto keep = [&](float uniform, float v) { return uniform < p ? 0.0f : v * keep_scale; };
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        Pack<T> px, py;
        load_pack(px, x + i);
        float uniform[kPack];
        philox::uniforms(seed, offset + uint64_t(i), uniform);
        for (int e = 0; e < kPack; ++e)
          py.v[e] = from_float<T>(keep(uniform[e], to_float(px.v[e])));
        store_pack(y + i, py);
      },
      [&](int64_t i) {
        y[i] = from_float<T>(keep(philox::uniform(seed, offset, uint64_t(i)), to_float(x[i])));
      });
}

// out[i] = residual[i] + dropout(x[i] + bias[i % width]) (no bias: null), the dropout of element
// i as dropout_kernel draws it; p = 0 draws nothing. One rounding to T, at the end.
template <class T>
__global__ void residual_dropout_add_kernel(const T* residual, const T* x, const T* bias,
                                            int64_t width, T* out, int64_t n, float p,
                                            float keep_scale, uint64_t seed, uint64_t offset,
                                            bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  auto value = [&](int64_t i, float xv, float rv, float uniform) {
    const float t = bias ? xv + to_float(bias[i % width]) : xv;
    return rv + (uniform < p ? 0.0f : t * keep_scale);
  };
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        Pack<T> px, pr, po;
        load_pack(px, x + i);
        load_pack(pr, residual + i);
        float uniform[kPack];
        if (p > 0.0f) {
          philox::uniforms(seed, offset + uint64_t(i), uniform);
        } else {
          for (float& u : uniform) u = 1.0f;
        }
        for (int e = 0; e < kPack; ++e)
          po.v[e] = from_float<T>(value(i + e, to_float(px.v[e]), to_float(pr.v[e]), uniform[e]));
        store_pack(out + i, po);
      },
      [&](int64_t i) {
        const float uniform = p > 0.0f ? philox::uniform(seed, offset, uint64_t(i)) : 1.0f;
        out[i] = from_float<T>(value(i, to_float(x[i]), to_float(residual[i]), uniform));
      });
}

// dst[i] = mean + std * normal(seed, offset, i)
template <class T>
__global__ void normal_fill_kernel(T* dst, int64_t n, float mean, float std, uint64_t seed,
                                   uint64_t offset) {
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count())
    dst[i] = from_float<T>(mean + std * philox::normal(seed, offset, uint64_t(i)));
}

}  // namespace sp::SP_CUDA_NS
