// CudaBackend AdamW step (kernels/adamw.cuh): the gradient norm, clipping factor and skip
// decision stay on the device; the step constants are computed on the host by the same function
// as the CPU backend's.
#include <algorithm>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "engine/cuda/workspace.h"
#include "kernels/adamw.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::adamw_step(const AdamWGroup& group, const AdamWUpdate& update,
                             const Tensor& guard, const Tensor& grad_norm) {
  const char* op = "adamw_step";
  check_adamw_step_args(group, guard, grad_norm);
  const size_t count = group.params.size();
  int64_t total = 0;
  for (const Tensor& p : group.params) total += p.numel();
  const bool need_norm = grad_norm.defined() || update.max_grad_norm > 0.0;
  const bool need_scale = need_norm || guard.defined();
  if (!need_scale && total == 0) return;
  activate(op);

  // Pass 1: one double per block of every gradient, into one workspace, so the norm is summed
  // in one fixed order by gradient_scale_kernel.
  std::vector<unsigned int> blocks(count, 0);
  int64_t partial_count = 0;
  if (need_norm)
    for (size_t i = 0; i < count; ++i) {
      const int64_t n = group.grads[i].numel();
      blocks[i] = n == 0 ? 0 : std::min(grid_for(n, kElementwiseThreads), 1024u);
      partial_count += blocks[i];
    }
  Workspace scratch(*this, size_t(partial_count) * sizeof(double) + sizeof(float));
  double* partials = scratch.as<double>();
  float* scale = need_scale ? reinterpret_cast<float*>(partials + partial_count) : nullptr;
  if (need_norm) {
    int64_t offset = 0;
    for (size_t i = 0; i < count; ++i) {
      if (blocks[i] == 0) continue;
      const Tensor& g = group.grads[i];
      dispatch_float(op, g, [&](auto tag) {
        using T = typename decltype(tag)::type;
        SP_LAUNCH(blocks[i], kElementwiseThreads, 0, stream_, sum_squares_partial_kernel<T>)
        (const_ptr<T>(g), g.numel(), partials + offset);
        SP_CUDA_CHECK_LAUNCH(
            *this, op, "sum_squares_partial_kernel",
            io_traffic(2.0 * double(g.numel()), {&g}, double(blocks[i]) * sizeof(double)));
      });
      offset += blocks[i];
    }
  }
  if (need_scale) {
    const int64_t guard_count = guard.defined() ? guard.numel() : 0;
    SP_LAUNCH(1, kElementwiseThreads, 0, stream_, gradient_scale_kernel<>)
    (partials, partial_count, const_ptr<float>(guard), guard_count, update.max_grad_norm,
     mutable_ptr<float>(grad_norm), scale);
    SP_CUDA_CHECK_LAUNCH(*this, op, "gradient_scale_kernel",
                         io_traffic(double(partial_count + guard_count), {&guard, &grad_norm},
                                    double(partial_count) * sizeof(double) + sizeof(float)));
  }

  // Pass 2: the update, each kernel reading the factor (or the skip) from the device.
  const adamw::StepConstants constants = adamw::step_constants(
      update.lr, update.beta1, update.beta2, update.weight_decay, update.step);
  const int threads = 256;
  for (size_t i = 0; i < count; ++i) {
    const Tensor &param = group.params[i], &grad = group.grads[i];
    const Tensor &exp_avg = group.exp_avg[i], &exp_avg_sq = group.exp_avg_sq[i];
    const int64_t n = param.numel();
    if (n == 0) continue;
    dispatch_float(op, param, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const bool vectorized =
          aligned16({param.raw_data(), grad.raw_data(), exp_avg.raw_data(), exp_avg_sq.raw_data()});
      SP_LAUNCH(grid_for(n / 4 + 1, threads), threads, 0, stream_, adamw_kernel<T>)
      (mutable_ptr<T>(param), const_ptr<T>(grad), mutable_ptr<float>(exp_avg),
       mutable_ptr<float>(exp_avg_sq), n, constants, update.beta1, update.beta2, update.eps, scale,
       vectorized);
      SP_CUDA_CHECK_LAUNCH(*this, op, "adamw_kernel",
                           io_traffic(16.0 * double(n), {&param, &grad, &exp_avg, &exp_avg_sq,
                                                         &param, &exp_avg, &exp_avg_sq}));
    });
  }
}

}  // namespace sp::SP_CUDA_NS
