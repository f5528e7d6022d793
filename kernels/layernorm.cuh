// kernels/layernorm.cuh: LayerNorm over the last axis (GPT-2): a block per row for the forward
// (alone, or fused with the residual add before it) and the input gradient, and column partial
// sums for the weight/bias gradients (finished by reduce.cuh's finalize_column_sums_kernel).
#pragma once

#include "kernels/dropout_random.cuh"
#include "kernels/kernel_common.cuh"
#include "kernels/reduce.cuh"

namespace sp::SP_CUDA_NS {

// One row of LayerNorm, by the whole block: y = (x - mean) * rstd * w + b, and the row's mean and
// rstd = 1 / sqrt(var + eps) (two-pass mean/variance, as the CPU reference).
template <class T>
__device__ __forceinline__ void layernorm_row(bool vectorized, int64_t cols, const T* x,
                                              const T* weight, const T* bias, float eps, T* y,
                                              float* mean_out, float* rstd_out, float* scratch) {
  const T* in[1] = {x};
  float sum = 0.0f;
  for_each_column(vectorized, cols, in, [&](int64_t, const float(&v)[1]) { sum += v[0]; });
  const float mean = block_sum(sum, scratch) / float(cols);
  float squares = 0.0f;
  for_each_column(vectorized, cols, in, [&](int64_t, const float(&v)[1]) {
    const float centered = v[0] - mean;
    squares += centered * centered;
  });
  const float var = block_sum(squares, scratch) / float(cols);
  const float rstd = 1.0f / sqrtf(var + eps);
  const T* rows_in[3] = {x, weight, bias};
  for_each_column(vectorized, cols, rows_in, [&](int64_t c, const float(&v)[3]) {
    y[c] = from_float<T>((v[0] - mean) * rstd * v[1] + v[2]);
  });
  if (thread_index() == 0) {
    *mean_out = mean;
    *rstd_out = rstd;
  }
}

// A block per row; saves each row's mean and rstd.
template <class T>
__global__ void layernorm_forward_kernel(const T* x, const T* weight, const T* bias, float eps,
                                         int64_t rows, int64_t cols, T* y, float* mean_out,
                                         float* rstd_out, bool vectorized) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x)
    layernorm_row(vectorized, cols, x + row * cols, weight, bias, eps, y + row * cols,
                  mean_out + row, rstd_out + row, scratch);
}

// A transformer branch's end and the next LayerNorm in one pass, a block per row:
// sum = residual + dropout(x + bias) (residual_dropout_add_kernel's values and draws, rounded to
// T), then y = LayerNorm(sum) as layernorm_forward_kernel computes it from the rounded sum. The
// row is written once and re-read from cache, where the two kernels write, read it back from
// memory, and launch twice.
template <class T>
__global__ void residual_layernorm_forward_kernel(
    const T* residual, const T* x, const T* bias, float p, float keep_scale, uint64_t seed,
    const uint64_t* seed_shift, uint64_t offset, const T* weight, const T* norm_bias, float eps,
    int64_t rows, int64_t cols, T* sum, T* y, float* mean_out, float* rstd_out, bool vectorized) {
  __shared__ float scratch[32];
  seed = replay_seed(seed, seed_shift);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t first = row * cols;
    residual_dropout_add_row(residual, x, bias, cols, sum, first, p, keep_scale, seed, offset,
                             vectorized);
    __syncthreads();  // for_each_column need not hand a thread the columns it wrote
    layernorm_row(vectorized, cols, sum + first, weight, norm_bias, eps, y + first, mean_out + row,
                  rstd_out + row, scratch);
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w, xhat = (x - mean) * rstd;
// with add_into_dx, dx += that (the residual stream's pending gradient, in the same pass).
template <class T>
__global__ void layernorm_backward_input_kernel(const T* x, const T* weight, const float* mean,
                                                const float* rstd, const T* dy, int64_t rows,
                                                int64_t cols, T* dx, bool add_into_dx,
                                                bool vectorized) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float mu = mean[row], r = rstd[row];
    const T* in[3] = {x + row * cols, dy + row * cols, weight};
    float sum_g = 0.0f, sum_gx = 0.0f;
    for_each_column(vectorized, cols, in, [&](int64_t, const float(&v)[3]) {
      const float g = v[1] * v[2];
      sum_g += g;
      sum_gx += g * ((v[0] - mu) * r);
    });
    const float mean_g = block_sum(sum_g, scratch) / float(cols);
    const float mean_gx = block_sum(sum_gx, scratch) / float(cols);
    T* out = dx + row * cols;
    for_each_column(vectorized, cols, in, [&](int64_t c, const float(&v)[3]) {
      const float xhat = (v[0] - mu) * r;
      const float d = r * (v[1] * v[2] - mean_g - xhat * mean_gx);
      out[c] = from_float<T>(add_into_dx ? to_float(out[c]) + d : d);
    });
  }
}

// Partial weight/bias gradients over a chunk of rows (blockIdx.y): dw += dy * xhat, db += dy.
// Either partials pointer may be null.
template <class T>
__global__ void layernorm_param_grad_partials_kernel(const T* x, const float* mean,
                                                     const float* rstd, const T* dy, int64_t rows,
                                                     int64_t cols, int64_t rows_per_chunk,
                                                     float* dw_partials, float* db_partials) {
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  for (int64_t c = global_thread_index(); c < cols; c += global_thread_count()) {
    float dw = 0.0f, db = 0.0f;
    for (int64_t r = begin; r < end; ++r) {
      const float g = to_float(dy[r * cols + c]);
      dw += g * ((to_float(x[r * cols + c]) - mean[r]) * rstd[r]);
      db += g;
    }
    if (dw_partials) dw_partials[chunk * cols + c] = dw;
    if (db_partials) db_partials[chunk * cols + c] = db;
  }
}

}  // namespace sp::SP_CUDA_NS
