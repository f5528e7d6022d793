// kernels/rmsnorm.cuh: RMS norm over the last axis (T5LayerNorm: no mean, no bias): a block per
// row for the forward (alone, or fused with the residual add before it) and the input gradient,
// column partial sums for the weight gradient (finished by reduce.cuh's
// finalize_column_sums_kernel).
#pragma once

#include "kernels/dropout_random.cuh"
#include "kernels/kernel_common.cuh"
#include "kernels/reduce.cuh"

namespace sp::SP_CUDA_NS {

// One row, by the whole block: y = w * (x * rstd) with rstd = 1 / sqrt(mean(x^2) + eps).
template <class T>
__device__ __forceinline__ void rmsnorm_row(bool vectorized, int64_t cols, const T* x,
                                            const T* weight, float eps, T* y, float* rstd_out,
                                            float* scratch) {
  const T* in[2] = {x, weight};
  float squares = 0.0f;
  for_each_column(vectorized, cols, in,
                  [&](int64_t, const float(&v)[2]) { squares += v[0] * v[0]; });
  const float rstd = 1.0f / sqrtf(block_sum(squares, scratch) / float(cols) + eps);
  for_each_column(vectorized, cols, in, [&](int64_t c, const float(&v)[2]) {
    y[c] = from_float<T>(v[1] * (v[0] * rstd));
  });
  if (thread_index() == 0) *rstd_out = rstd;
}

// A block per row; saves each row's rstd.
template <class T>
__global__ void rmsnorm_forward_kernel(const T* x, const T* weight, float eps, int64_t rows,
                                       int64_t cols, T* y, float* rstd_out, bool vectorized) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x)
    rmsnorm_row(vectorized, cols, x + row * cols, weight, eps, y + row * cols, rstd_out + row,
                scratch);
}

// A branch's end and the next RMS norm in one pass, a block per row: sum = residual +
// dropout(x + bias) as residual_dropout_add_kernel computes it (rounded to T), then y =
// RMSNorm(sum) as rmsnorm_forward_kernel computes it (Llama's and T5's residual stream).
template <class T>
__global__ void residual_rmsnorm_forward_kernel(const T* residual, const T* x, const T* bias,
                                                float p, float keep_scale, uint64_t seed,
                                                const uint64_t* seed_shift, uint64_t offset,
                                                const T* weight, float eps, int64_t rows,
                                                int64_t cols, T* sum, T* y, float* rstd_out,
                                                bool vectorized) {
  __shared__ float scratch[32];
  seed = replay_seed(seed, seed_shift);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t first = row * cols;
    residual_dropout_add_row(residual, x, bias, cols, sum, first, p, keep_scale, seed, offset,
                             vectorized);
    __syncthreads();  // for_each_column need not hand a thread the columns it wrote
    rmsnorm_row(vectorized, cols, sum + first, weight, eps, y + first, rstd_out + row, scratch);
  }
}

// dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w, xhat = x * rstd; with add_into_dx,
// dx += that (the residual stream's pending gradient, in the same pass).
template <class T>
__global__ void rmsnorm_backward_input_kernel(const T* x, const T* weight, const float* rstd,
                                              const T* dy, int64_t rows, int64_t cols, T* dx,
                                              bool add_into_dx, bool vectorized) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float r = rstd[row];
    const T* in[3] = {x + row * cols, dy + row * cols, weight};
    float sum_gx = 0.0f;
    for_each_column(vectorized, cols, in,
                    [&](int64_t, const float(&v)[3]) { sum_gx += (v[1] * v[2]) * (v[0] * r); });
    const float mean_gx = block_sum(sum_gx, scratch) / float(cols);
    T* out = dx + row * cols;
    for_each_column(vectorized, cols, in, [&](int64_t c, const float(&v)[3]) {
      const float d = r * (v[1] * v[2] - (v[0] * r) * mean_gx);
      out[c] = from_float<T>(add_into_dx ? to_float(out[c]) + d : d);
    });
  }
}

// Partial weight gradients over a chunk of rows (blockIdx.y): dw += dy * x * rstd.
template <class T>
__global__ void rmsnorm_weight_grad_partials_kernel(const T* x, const float* rstd, const T* dy,
                                                    int64_t rows, int64_t cols,
                                                    int64_t rows_per_chunk, float* dw_partials) {
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  for (int64_t c = global_thread_index(); c < cols; c += global_thread_count()) {
    float dw = 0.0f;
    for (int64_t r = begin; r < end; ++r)
      dw += to_float(dy[r * cols + c]) * (to_float(x[r * cols + c]) * rstd[r]);
    dw_partials[chunk * cols + c] = dw;
  }
}

}  // namespace sp::SP_CUDA_NS
