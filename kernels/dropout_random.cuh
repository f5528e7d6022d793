// kernels/dropout_random.cuh: dropout (alone, or fused with a bias and a residual add) and normal
// fills from the Philox stream of kernels/philox.h, element i drawing from (seed, offset + i) as
// the CPU backend does.
#pragma once

#include "kernels/kernel_common.cuh"
#include "kernels/philox.h"

namespace sp::SP_CUDA_NS {

// y = x * keep_scale where uniform(seed, offset, i) >= p, else 0 (keep_scale = 1 / (1 - p)).
// seed_shift: see replay_seed (kernels/kernel_common.cuh), as in every kernel here that draws.
template <class T>
__global__ void dropout_kernel(const T* x, T* y, int64_t n, float p, float keep_scale,
                               uint64_t seed, const uint64_t* seed_shift, uint64_t offset,
                               bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  seed = replay_seed(seed, seed_shift);
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

// out[i] = residual[i] + dropout(x[i] + bias[i % width]) (no bias: null) for the kPack elements
// from i, the dropout of element i as dropout_kernel draws it; p = 0 draws nothing. One rounding
// to T, at the end. i must start a whole 16-byte pack of every pointer.
template <class T>
__device__ __forceinline__ void residual_dropout_add_pack(const T* residual, const T* x,
                                                          const T* bias, int64_t width, T* out,
                                                          int64_t i, float p, float keep_scale,
                                                          uint64_t seed, uint64_t offset) {
  constexpr int kPack = Pack<T>::kSize;
  Pack<T> px, pr, po;
  load_pack(px, x + i);
  load_pack(pr, residual + i);
  float uniform[kPack];
  if (p > 0.0f) {
    philox::uniforms(seed, offset + uint64_t(i), uniform);
  } else {
    for (float& u : uniform) u = 1.0f;
  }
  for (int e = 0; e < kPack; ++e) {
    const float xv = to_float(px.v[e]);
    const float t = bias ? xv + to_float(bias[(i + e) % width]) : xv;
    po.v[e] = from_float<T>(to_float(pr.v[e]) + (uniform[e] < p ? 0.0f : t * keep_scale));
  }
  store_pack(out + i, po);
}

// The same for element i alone.
template <class T>
__device__ __forceinline__ void residual_dropout_add_element(const T* residual, const T* x,
                                                             const T* bias, int64_t width, T* out,
                                                             int64_t i, float p, float keep_scale,
                                                             uint64_t seed, uint64_t offset) {
  const float uniform = p > 0.0f ? philox::uniform(seed, offset, uint64_t(i)) : 1.0f;
  const float t = bias ? to_float(x[i]) + to_float(bias[i % width]) : to_float(x[i]);
  out[i] = from_float<T>(to_float(residual[i]) + (uniform < p ? 0.0f : t * keep_scale));
}

// The row of `cols` elements from `first` (a multiple of cols), by the whole block: whole packs
// with `vectorized` (every row 16-byte aligned, cols a multiple of the pack), else one by one.
// For the row kernels that go on to normalise the sum (kernels/layernorm.cuh, rmsnorm.cuh).
template <class T>
__device__ __forceinline__ void residual_dropout_add_row(const T* residual, const T* x,
                                                         const T* bias, int64_t cols, T* out,
                                                         int64_t first, float p, float keep_scale,
                                                         uint64_t seed, uint64_t offset,
                                                         bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  const int tid = thread_index(), threads = block_threads();
  if (vectorized) {
    for (int64_t c = int64_t(tid) * kPack; c < cols; c += int64_t(threads) * kPack)
      residual_dropout_add_pack(residual, x, bias, cols, out, first + c, p, keep_scale, seed,
                                offset);
    return;
  }
  for (int64_t c = tid; c < cols; c += threads)
    residual_dropout_add_element(residual, x, bias, cols, out, first + c, p, keep_scale, seed,
                                 offset);
}

template <class T>
__global__ void residual_dropout_add_kernel(const T* residual, const T* x, const T* bias,
                                            int64_t width, T* out, int64_t n, float p,
                                            float keep_scale, uint64_t seed,
                                            const uint64_t* seed_shift, uint64_t offset,
                                            bool vectorized) {
  seed = replay_seed(seed, seed_shift);
  grid_stride_elements<Pack<T>::kSize>(
      n, vectorized,
      [&](int64_t i) {
        residual_dropout_add_pack(residual, x, bias, width, out, i, p, keep_scale, seed, offset);
      },
      [&](int64_t i) {
        residual_dropout_add_element(residual, x, bias, width, out, i, p, keep_scale, seed, offset);
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
