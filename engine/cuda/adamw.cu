// CudaBackend AdamW step (kernels/adamw.cuh); the step constants are computed on the host by the
// same function as the CPU backend's.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/adamw.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                             const Tensor& exp_avg_sq, float lr, float beta1, float beta2,
                             float eps, float weight_decay, int64_t step) {
  const char* op = "adamw_step";
  expect_dtype(op, param.dtype(), {&grad});
  expect_dtype(op, DType::F32, {&exp_avg, &exp_avg_sq});
  expect_contiguous(op, {&param, &grad, &exp_avg, &exp_avg_sq});
  SP_CHECK(grad.numel() == param.numel() && exp_avg.numel() == param.numel() &&
               exp_avg_sq.numel() == param.numel(),
           op, ": param ", param.describe(), ", grad ", grad.describe(), " and moments ",
           exp_avg.describe(), ", ", exp_avg_sq.describe(), " differ in size");
  const int64_t n = param.numel();
  if (n == 0) return;
  activate(op);
  const adamw::StepConstants constants =
      adamw::step_constants(lr, beta1, beta2, weight_decay, step);
  const int threads = 256;
  dispatch_float(op, param, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized =
        aligned16({param.raw_data(), grad.raw_data(), exp_avg.raw_data(), exp_avg_sq.raw_data()});
    SP_LAUNCH(grid_for(n / 4 + 1, threads), threads, 0, stream_, adamw_kernel<T>)
    (mutable_ptr<T>(param), const_ptr<T>(grad), mutable_ptr<float>(exp_avg),
     mutable_ptr<float>(exp_avg_sq), n, constants, beta1, beta2, eps, vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "adamw_kernel",
                         io_traffic(16.0 * double(n), {&param, &grad, &exp_avg, &exp_avg_sq, &param,
                                                       &exp_avg, &exp_avg_sq}));
  });
}

}  // namespace sp::SP_CUDA_NS
