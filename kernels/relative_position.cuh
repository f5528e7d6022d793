// kernels/relative_position.cuh: T5's relative-position bias, out[h, i, j] = table[bucket(j -
// (query_offset + i)), h], with the bucket of kernels/relative_position_math.h.
#pragma once

#include "kernels/kernel_common.cuh"
#include "kernels/relative_position_math.h"

namespace sp::SP_CUDA_NS {

// A thread per (i, j) computes the bucket once and writes it for every head.
template <class T>
__global__ void relative_position_bias_kernel(const T* table, int64_t heads, int64_t tq, int64_t tk,
                                              int64_t query_offset, bool bidirectional,
                                              int64_t num_buckets, int64_t max_distance, T* out) {
  const int64_t n = tq * tk;
  for (int64_t e = global_thread_index(); e < n; e += global_thread_count()) {
    const int64_t i = e / tk, j = e % tk;
    const int64_t bucket = t5::relative_position_bucket(j - (query_offset + i), bidirectional,
                                                        num_buckets, max_distance);
    for (int64_t h = 0; h < heads; ++h) out[h * n + e] = table[bucket * heads + h];
  }
}

}  // namespace sp::SP_CUDA_NS
