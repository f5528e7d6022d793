// CudaBackend reductions: sum_last, sum_rows, sum_to and sum_squares (kernels/reduce.cuh).
#include <algorithm>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "engine/cuda/workspace.h"
#include "kernels/reduce.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::sum_last(const Tensor& x, const Tensor& out) {
  const char* op = "sum_last";
  expect_dtype(op, out.dtype(), {&x});
  expect_contiguous(op, {&x, &out});
  const int64_t rows = out.numel();
  if (rows == 0) return;
  const int64_t cols = x.numel() / rows;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_vectorizable(cols, sizeof(T), {x.raw_data()});
    const int64_t blocks = (rows + kSumLastWarpsPerBlock - 1) / kSumLastWarpsPerBlock;
    SP_LAUNCH(grid_for_rows(blocks), 32 * kSumLastWarpsPerBlock, 0, stream_, sum_last_kernel<T>)
    (const_ptr<T>(x), rows, cols, mutable_ptr<T>(out), vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "sum_last_kernel", io_traffic(double(x.numel()), {&x, &out}));
  });
}

void CudaBackend::sum_rows(const Tensor& x, const Tensor& out) {
  const char* op = "sum_rows";
  expect_dtype(op, out.dtype(), {&x});
  expect_contiguous(op, {&x, &out});
  const int64_t cols = out.numel();
  if (cols == 0) return;
  const int64_t rows = x.numel() / cols;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_column_sums<T>(*this, op, const_ptr<T>(x), rows, cols, mutable_ptr<T>(out), false);
  });
}

void CudaBackend::sum_to(const Tensor& x, const Tensor& out) {
  const char* op = "sum_to";
  expect_dtype(op, out.dtype(), {&x});
  expect_contiguous(op, {&x, &out});
  SP_CHECK(x.dim() == out.dim(), op, ": ", x.describe(), " and ", out.describe(),
           " differ in rank");
  const int64_t count = out.numel();
  if (count == 0) return;
  activate(op);
  SumToLayout layout;
  const Shape x_strides = contiguous_strides(x.shape());
  for (size_t axis = 0; axis < size_t(x.dim()); ++axis) {
    const int64_t size = x.shape()[axis];
    if (size == 1) continue;
    const bool reduced = out.shape()[axis] == 1;
    int& ndim = reduced ? layout.reduced_ndim : layout.kept_ndim;
    SP_CHECK(ndim < kMaxDims, op, ": more than ", kMaxDims, " axes in ", x.describe());
    (reduced ? layout.reduced_sizes : layout.kept_sizes)[ndim] = size;
    (reduced ? layout.reduced_strides : layout.kept_strides)[ndim] = x_strides[axis];
    ++ndim;
    if (reduced) layout.reduced_count *= size;
  }
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SP_LAUNCH(grid_for(count, kElementwiseThreads), kElementwiseThreads, 0, stream_,
              sum_to_kernel<T>)
    (const_ptr<T>(x), layout, mutable_ptr<T>(out), count);
    SP_CUDA_CHECK_LAUNCH(*this, op, "sum_to_kernel", io_traffic(double(x.numel()), {&x, &out}));
  });
}

double CudaBackend::sum_squares(const Tensor& x) {
  const char* op = "sum_squares";
  expect_contiguous(op, {&x});
  const int64_t n = x.numel();
  if (n == 0) return 0.0;
  activate(op);
  const unsigned int blocks = std::min(grid_for(n, kElementwiseThreads), 1024u);
  Workspace partials(*this, (size_t(blocks) + 1) * sizeof(double));
  double* block_sums = partials.as<double>();
  double* total = block_sums + blocks;
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SP_LAUNCH(blocks, kElementwiseThreads, 0, stream_, sum_squares_partial_kernel<T>)
    (const_ptr<T>(x), n, block_sums);
    SP_CUDA_CHECK_LAUNCH(*this, op, "sum_squares_partial_kernel",
                         io_traffic(2.0 * double(n), {&x}, double(blocks) * sizeof(double)));
  });
  SP_LAUNCH(1, kElementwiseThreads, 0, stream_, sum_doubles_kernel<>)
  (block_sums, int64_t(blocks), total);
  SP_CUDA_CHECK_LAUNCH(*this, op, "sum_doubles_kernel",
                       KernelTraffic{double(blocks), double(blocks + 1) * sizeof(double)});
  double result = 0.0;
  copy_to_host(&result, total, sizeof result);
  return result;
}

}  // namespace sp::SP_CUDA_NS
