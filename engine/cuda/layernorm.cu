// CudaBackend LayerNorm forward and backward (kernels/layernorm.cuh); weight and bias gradients
// are accumulated into d_weight/d_bias through deterministic column sums.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "engine/cuda/workspace.h"
#include "kernels/layernorm.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                    float eps, const Tensor& y, const Tensor& mean,
                                    const Tensor& rstd) {
  const char* op = "layernorm_forward";
  expect_dtype(op, x.dtype(), {&weight, &bias, &y});
  expect_dtype(op, DType::F32, {&mean, &rstd});
  expect_contiguous(op, {&x, &weight, &bias, &y, &mean, &rstd});
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_vectorizable(
        cols, sizeof(T), {x.raw_data(), weight.raw_data(), bias.raw_data(), y.raw_data()});
    const int threads = threads_for_row(cols, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, layernorm_forward_kernel<T>)
    (const_ptr<T>(x), const_ptr<T>(weight), const_ptr<T>(bias), eps, rows, cols, mutable_ptr<T>(y),
     mutable_ptr<float>(mean), mutable_ptr<float>(rstd), vectorized);
    SP_CUDA_CHECK_LAUNCH(
        *this, op, "layernorm_forward_kernel",
        io_traffic(8.0 * double(x.numel()), {&x, &weight, &bias, &y, &mean, &rstd}));
  });
}

void CudaBackend::residual_layernorm_forward(const Tensor& residual, const Tensor& x,
                                             const Tensor& bias, float p, uint64_t seed,
                                             uint64_t offset, const Tensor& weight,
                                             const Tensor& norm_bias, float eps, const Tensor& sum,
                                             const Tensor& y, const Tensor& mean,
                                             const Tensor& rstd) {
  const char* op = "residual_layernorm_forward";
  expect_dtype(op, x.dtype(), {&residual, &bias, &weight, &norm_bias, &sum, &y});
  expect_dtype(op, DType::F32, {&mean, &rstd});
  expect_contiguous(op, {&residual, &x, &bias, &weight, &norm_bias, &sum, &y, &mean, &rstd});
  const auto [rows, cols, keep_scale] = residual_rows(op, x, p);
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_vectorizable(
        cols, sizeof(T),
        {residual.raw_data(), x.raw_data(), bias.defined() ? bias.raw_data() : nullptr,
         weight.raw_data(), norm_bias.raw_data(), sum.raw_data(), y.raw_data()});
    const int threads = threads_for_row(cols, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, residual_layernorm_forward_kernel<T>)
    (const_ptr<T>(residual), const_ptr<T>(x), const_ptr<T>(bias), p, keep_scale, seed, seed_shift(),
     offset, const_ptr<T>(weight), const_ptr<T>(norm_bias), eps, rows, cols, mutable_ptr<T>(sum),
     mutable_ptr<T>(y), mutable_ptr<float>(mean), mutable_ptr<float>(rstd), vectorized);
    // residual_dropout_add's 21 flops an element and the norm's 8.
    SP_CUDA_CHECK_LAUNCH(
        *this, op, "residual_layernorm_forward_kernel",
        io_traffic(29.0 * double(x.numel()),
                   {&residual, &x, &bias, &weight, &norm_bias, &sum, &y, &mean, &rstd}));
  });
}

void CudaBackend::layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                                     const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                                     bool add_into_dx, const Tensor& d_weight,
                                     const Tensor& d_bias) {
  const char* op = "layernorm_backward";
  expect_dtype(op, x.dtype(), {&weight, &dy, &dx, &d_weight, &d_bias});
  expect_dtype(op, DType::F32, {&mean, &rstd});
  expect_contiguous(op, {&x, &weight, &mean, &rstd, &dy, &dx, &d_weight, &d_bias});
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (dx.defined()) {
      const bool vectorized = rows_vectorizable(
          cols, sizeof(T), {x.raw_data(), weight.raw_data(), dy.raw_data(), dx.raw_data()});
      const int threads = threads_for_row(cols, vectorized ? Pack<T>::kSize : 1);
      SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, layernorm_backward_input_kernel<T>)
      (const_ptr<T>(x), const_ptr<T>(weight), const_ptr<float>(mean), const_ptr<float>(rstd),
       const_ptr<T>(dy), rows, cols, mutable_ptr<T>(dx), add_into_dx, vectorized);
      SP_CUDA_CHECK_LAUNCH(
          *this, op, "layernorm_backward_input_kernel",
          io_traffic(12.0 * double(x.numel()), {&x, &weight, &mean, &rstd, &dy, &dx},
                     add_into_dx ? double(dx.nbytes()) : 0.0));
    }
    if (!d_weight.defined() && !d_bias.defined()) return;
    const int threads = kColumnSumThreads;
    const ColumnChunks c = column_chunks(*this, rows, cols, threads);
    const size_t partial_bytes = size_t(c.chunks * cols) * sizeof(float);
    Workspace dw_partials(*this, d_weight.defined() ? partial_bytes : 0);
    Workspace db_partials(*this, d_bias.defined() ? partial_bytes : 0);
    float* dw = d_weight.defined() ? dw_partials.as<float>() : nullptr;
    float* db = d_bias.defined() ? db_partials.as<float>() : nullptr;
    const dim3 grid(grid_for(cols, threads), unsigned(c.chunks));
    SP_LAUNCH(grid, threads, 0, stream_, layernorm_param_grad_partials_kernel<T>)
    (const_ptr<T>(x), const_ptr<float>(mean), const_ptr<float>(rstd), const_ptr<T>(dy), rows, cols,
     c.rows_per_chunk, dw, db);
    SP_CUDA_CHECK_LAUNCH(*this, op, "layernorm_param_grad_partials_kernel",
                         io_traffic(4.0 * double(x.numel()), {&x, &dy, &mean, &rstd},
                                    double(partial_bytes) * ((dw ? 1 : 0) + (db ? 1 : 0))));
    for (auto [partials, target] : {std::pair{dw, &d_weight}, std::pair{db, &d_bias}}) {
      if (!partials) continue;
      SP_LAUNCH(grid_for(cols, threads), threads, 0, stream_, finalize_column_sums_kernel<T>)
      (partials, c.chunks, cols, mutable_ptr<T>(*target), true);
      SP_CUDA_CHECK_LAUNCH(*this, op, "finalize_column_sums_kernel",
                           io_traffic(double(c.chunks * cols), {target}, double(partial_bytes)));
    }
  });
}

}  // namespace sp::SP_CUDA_NS
