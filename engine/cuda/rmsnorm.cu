// CudaBackend RMS norm forward and backward (kernels/rmsnorm.cuh); the weight gradient is
// accumulated into d_weight through deterministic column sums.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "engine/cuda/workspace.h"
#include "kernels/rmsnorm.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                                  const Tensor& rstd) {
  const char* op = "rmsnorm_forward";
  expect_dtype(op, x.dtype(), {&weight, &y});
  expect_dtype(op, DType::F32, {&rstd});
  expect_contiguous(op, {&x, &weight, &y, &rstd});
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized =
        rows_vectorizable(cols, sizeof(T), {x.raw_data(), weight.raw_data(), y.raw_data()});
    const int threads = threads_for_row(cols, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, rmsnorm_forward_kernel<T>)
    (const_ptr<T>(x), const_ptr<T>(weight), eps, rows, cols, mutable_ptr<T>(y),
     mutable_ptr<float>(rstd), vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "rmsnorm_forward_kernel",
                         io_traffic(5.0 * double(x.numel()), {&x, &weight, &y, &rstd}));
  });
}

void CudaBackend::residual_rmsnorm_forward(const Tensor& residual, const Tensor& x,
                                           const Tensor& bias, float p, uint64_t seed,
                                           uint64_t offset, const Tensor& weight, float eps,
                                           const Tensor& sum, const Tensor& y, const Tensor& rstd) {
  const char* op = "residual_rmsnorm_forward";
  expect_dtype(op, x.dtype(), {&residual, &bias, &weight, &sum, &y});
  expect_dtype(op, DType::F32, {&rstd});
  expect_contiguous(op, {&residual, &x, &bias, &weight, &sum, &y, &rstd});
  const auto [rows, cols, keep_scale] = residual_rows(op, x, p);
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_vectorizable(
        cols, sizeof(T),
        {residual.raw_data(), x.raw_data(), bias.defined() ? bias.raw_data() : nullptr,
         weight.raw_data(), sum.raw_data(), y.raw_data()});
    const int threads = threads_for_row(cols, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, residual_rmsnorm_forward_kernel<T>)
    (const_ptr<T>(residual), const_ptr<T>(x), const_ptr<T>(bias), p, keep_scale, seed, seed_shift(),
     offset, const_ptr<T>(weight), eps, rows, cols, mutable_ptr<T>(sum), mutable_ptr<T>(y),
     mutable_ptr<float>(rstd), vectorized);
    // residual_dropout_add's 21 flops an element and the norm's 5.
    SP_CUDA_CHECK_LAUNCH(
        *this, op, "residual_rmsnorm_forward_kernel",
        io_traffic(26.0 * double(x.numel()), {&residual, &x, &bias, &weight, &sum, &y, &rstd}));
  });
}

void CudaBackend::rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                   const Tensor& dy, const Tensor& dx, bool add_into_dx,
                                   const Tensor& d_weight) {
  const char* op = "rmsnorm_backward";
  expect_dtype(op, x.dtype(), {&weight, &dy, &dx, &d_weight});
  expect_dtype(op, DType::F32, {&rstd});
  expect_contiguous(op, {&x, &weight, &rstd, &dy, &dx, &d_weight});
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
      SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, rmsnorm_backward_input_kernel<T>)
      (const_ptr<T>(x), const_ptr<T>(weight), const_ptr<float>(rstd), const_ptr<T>(dy), rows, cols,
       mutable_ptr<T>(dx), add_into_dx, vectorized);
      SP_CUDA_CHECK_LAUNCH(*this, op, "rmsnorm_backward_input_kernel",
                           io_traffic(9.0 * double(x.numel()), {&x, &weight, &rstd, &dy, &dx},
                                      add_into_dx ? double(dx.nbytes()) : 0.0));
    }
    if (!d_weight.defined()) return;
    const int threads = kColumnSumThreads;
    const ColumnChunks c = column_chunks(*this, rows, cols, threads);
    Workspace partials(*this, size_t(c.chunks * cols) * sizeof(float));
    const dim3 grid(grid_for(cols, threads), unsigned(c.chunks));
    SP_LAUNCH(grid, threads, 0, stream_, rmsnorm_weight_grad_partials_kernel<T>)
    (const_ptr<T>(x), const_ptr<float>(rstd), const_ptr<T>(dy), rows, cols, c.rows_per_chunk,
     partials.as<float>());
    SP_CUDA_CHECK_LAUNCH(*this, op, "rmsnorm_weight_grad_partials_kernel",
                         io_traffic(3.0 * double(x.numel()), {&x, &rstd, &dy},
                                    double(c.chunks * cols) * sizeof(float)));
    SP_LAUNCH(grid_for(cols, threads), threads, 0, stream_, finalize_column_sums_kernel<T>)
    (partials.as<float>(), c.chunks, cols, mutable_ptr<T>(d_weight), true);
    SP_CUDA_CHECK_LAUNCH(
        *this, op, "finalize_column_sums_kernel",
        io_traffic(double(c.chunks * cols), {&d_weight}, double(c.chunks * cols) * sizeof(float)));
  });
}

}  // namespace sp::SP_CUDA_NS
