// CudaBackend dropout, residual_dropout_add and normal_fill (kernels/dropout_random.cuh): the same
// Philox stream as the CPU backend.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/dropout_random.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset,
                          const Tensor& y) {
  const char* op = "dropout";
  expect_dtype(op, x.dtype(), {&y});
  expect_contiguous(op, {&x, &y});
  SP_CHECK(p >= 0.0f && p < 1.0f, op, ": probability must be in [0, 1), got ", p);
  const int64_t n = x.numel();
  if (n == 0) return;
  activate(op);
  // Computed on the host exactly as the CPU backend does, so kept values match bit for bit.
  const float keep_scale = 1.0f / (1.0f - p);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = aligned16({x.raw_data(), y.raw_data()});
    SP_LAUNCH(grid_for(n / Pack<T>::kSize + 1, kElementwiseThreads), kElementwiseThreads, 0,
              stream_, dropout_kernel<T>)
    (const_ptr<T>(x), mutable_ptr<T>(y), n, p, keep_scale, seed, seed_shift(), offset, vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "dropout_kernel", io_traffic(18.0 * double(n), {&x, &y}));
  });
}

void CudaBackend::residual_dropout_add(const Tensor& residual, const Tensor& x, const Tensor& bias,
                                       float p, uint64_t seed, uint64_t offset, const Tensor& out) {
  const char* op = "residual_dropout_add";
  expect_dtype(op, x.dtype(), {&residual, &bias, &out});
  expect_contiguous(op, {&residual, &x, &bias, &out});
  SP_CHECK(p >= 0.0f && p < 1.0f, op, ": probability must be in [0, 1), got ", p);
  const int64_t n = x.numel();
  if (n == 0) return;
  activate(op);
  const float keep_scale = 1.0f / (1.0f - p);  // as the CPU computes it
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = aligned16({residual.raw_data(), x.raw_data(), out.raw_data()});
    SP_LAUNCH(grid_for(n / Pack<T>::kSize + 1, kElementwiseThreads), kElementwiseThreads, 0,
              stream_, residual_dropout_add_kernel<T>)
    (const_ptr<T>(residual), const_ptr<T>(x), const_ptr<T>(bias), x.size(-1), mutable_ptr<T>(out),
     n, p, keep_scale, seed, seed_shift(), offset, vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "residual_dropout_add_kernel",
                         io_traffic(21.0 * double(n), {&residual, &x, &bias, &out}));
  });
}

void CudaBackend::normal_fill(const Tensor& dst, float mean, float std, uint64_t seed,
                              uint64_t offset) {
  const char* op = "normal_fill";
  expect_contiguous(op, {&dst});
  const int64_t n = dst.numel();
  if (n == 0) return;
  activate(op);
  dispatch_float(op, dst, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SP_LAUNCH(grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream_,
              normal_fill_kernel<T>)
    (mutable_ptr<T>(dst), n, mean, std, seed, offset);
    SP_CUDA_CHECK_LAUNCH(*this, op, "normal_fill_kernel", io_traffic(70.0 * double(n), {&dst}));
  });
}

}  // namespace sp::SP_CUDA_NS
