// kernels/dropout_random.cuh: dropout and normal fills from the counter-based Philox stream of
// kernels/philox.h, element i drawing from (seed, offset + i) exactly as the CPU backend does.
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
        // A Philox block holds four consecutive counters' words: one block per four elements
        // of the pack (two where the pack straddles a block boundary), not one per element.
        Pack<T> px, py;
        load_pack(px, x + i);
        const uint64_t first = offset + uint64_t(i);
        philox::Block block = philox::generate(first >> 2, seed);
        for (int e = 0; e < kPack; ++e) {
          const uint64_t c = first + uint64_t(e);
          if (e > 0 && (c & 3) == 0) block = philox::generate(c >> 2, seed);
          py.v[e] = from_float<T>(keep(philox::to_unit_float(block.v[c & 3]), to_float(px.v[e])));
        }
        store_pack(y + i, py);
      },
      [&](int64_t i) {
        y[i] = from_float<T>(keep(philox::uniform(seed, offset, uint64_t(i)), to_float(x[i])));
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
