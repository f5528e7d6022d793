// kernels/reduce.cuh: sums in fp32 (double for sum of squares): over the last axis (a warp per
// row), over leading rows (deterministic two-pass column sums, shared with the norm weight
// gradients), to a broadcast shape, and the sum of squares behind gradient clipping.
#pragma once

#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

constexpr int kSumLastWarpsPerBlock = 4;

// out[r] = sum_c x[r, c]; one warp per row, packs when every row is 16-byte aligned.
template <class T>
__global__ void sum_last_kernel(const T* x, int64_t rows, int64_t cols, T* out, bool vectorized) {
  const int lane = thread_index() % 32;
  const int64_t warps_total = int64_t(gridDim.x) * kSumLastWarpsPerBlock;
  for (int64_t row = int64_t(blockIdx.x) * kSumLastWarpsPerBlock + thread_index() / 32; row < rows;
       row += warps_total) {
    const T* in = x + row * cols;
    float sum = 0.0f;
    int64_t first_scalar = 0;
    if (vectorized) {
      constexpr int kPack = Pack<T>::kSize;
      for (int64_t p = lane; p < cols / kPack; p += 32) {
        Pack<T> pack;
        load_pack(pack, in + p * kPack);
        for (int e = 0; e < kPack; ++e) sum += to_float(pack.v[e]);
      }
      first_scalar = cols / kPack * kPack;
    }
    for (int64_t c = first_scalar + lane; c < cols; c += 32) sum += to_float(in[c]);
    sum = warp_sum(sum);
    if (lane == 0) out[row] = from_float<T>(sum);
  }
}

// Pass 1 of a column sum: partials[chunk, c] = sum over the chunk's rows of value(r, c), where
// chunk = blockIdx.y covers rows [chunk * rows_per_chunk, ...). Threads own columns, so loads
// are coalesced and the order of additions is fixed.
template <class T>
__global__ void column_partial_sums_kernel(const T* x, int64_t rows, int64_t cols,
                                           int64_t rows_per_chunk, float* partials) {
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  for (int64_t c = global_thread_index(); c < cols; c += global_thread_count()) {
    float sum = 0.0f;
    for (int64_t r = begin; r < end; ++r) sum += to_float(x[r * cols + c]);
    partials[chunk * cols + c] = sum;
  }
}

// Pass 2: out[c] (+)= sum_chunk partials[chunk, c], in chunk order (deterministic).
template <class T>
__global__ void finalize_column_sums_kernel(const float* partials, int64_t chunks, int64_t cols,
                                            T* out, bool accumulate) {
  for (int64_t c = global_thread_index(); c < cols; c += global_thread_count()) {
    float sum = accumulate ? to_float(out[c]) : 0.0f;
    for (int64_t k = 0; k < chunks; ++k) sum += partials[k * cols + c];
    out[c] = from_float<T>(sum);
  }
}

// The general reduction behind sum_to: one thread per output element adds its reduced elements
// in row-major order of the reduced axes (the CPU reference's order, so fp32 results agree).
struct SumToLayout {
  int kept_ndim = 0;
  int64_t kept_sizes[kMaxDims] = {};    // the output's shape over the kept axes
  int64_t kept_strides[kMaxDims] = {};  // x's strides of those axes
  int reduced_ndim = 0;
  int64_t reduced_sizes[kMaxDims] = {};
  int64_t reduced_strides[kMaxDims] = {};
  int64_t reduced_count = 1;
};

template <class T>
__global__ void sum_to_kernel(const T* x, SumToLayout layout, T* out, int64_t out_count) {
  for (int64_t o = global_thread_index(); o < out_count; o += global_thread_count()) {
    int64_t base = 0, rest = o;
    for (int axis = layout.kept_ndim - 1; axis >= 0; --axis) {
      base += (rest % layout.kept_sizes[axis]) * layout.kept_strides[axis];
      rest /= layout.kept_sizes[axis];
    }
    float sum = 0.0f;
    for (int64_t r = 0; r < layout.reduced_count; ++r) {
      int64_t offset = base, index = r;
      for (int axis = layout.reduced_ndim - 1; axis >= 0; --axis) {
        offset += (index % layout.reduced_sizes[axis]) * layout.reduced_strides[axis];
        index /= layout.reduced_sizes[axis];
      }
      sum += to_float(x[offset]);
    }
    out[o] = from_float<T>(sum);
  }
}

// Pass 1 of the sum of squares: one double per block (blocks are whole warps).
template <class T>
__global__ void sum_squares_partial_kernel(const T* x, int64_t n, double* block_partials) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count()) {
    const double v = double(to_float(x[i]));
    sum += v * v;
  }
  sum = block_sum(sum, scratch);
  if (thread_index() == 0) block_partials[blockIdx.x] = sum;
}

// Pass 2: a single block adds the partials.
template <class Unused = void>
__global__ void sum_doubles_kernel(const double* values, int64_t n, double* total) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (int64_t i = thread_index(); i < n; i += block_threads()) sum += values[i];
  sum = block_sum(sum, scratch);
  if (thread_index() == 0) *total = sum;
}

}  // namespace sp::SP_CUDA_NS
