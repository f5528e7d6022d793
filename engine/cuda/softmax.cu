// CudaBackend masked softmax forward/backward (kernels/softmax.cuh): the materialised attention
// path, kept as the oracle of the fused kernel.
#include "engine/cuda/attention_mask_args.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/softmax.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::masked_softmax_forward(const Tensor& scores, const AttentionMask& mask,
                                         const Tensor& probs) {
  const char* op = "masked_softmax_forward";
  SP_CHECK(scores.dim() == 4, op, ": scores must be [B, H, Tq, Tk], got ", scores.describe());
  expect_dtype(op, scores.dtype(), {&probs});
  expect_contiguous(op, {&scores, &probs});
  const int64_t heads = scores.size(1), tq = scores.size(2), tk = scores.size(3);
  const int64_t rows = scores.size(0) * heads * tq;
  if (rows == 0 || tk == 0) return;
  activate(op);
  const AttentionMaskArgs args = attention_mask_args(op, mask);
  dispatch_float(op, scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_vectorizable(tk, sizeof(T), {scores.raw_data(), probs.raw_data()});
    const int threads = threads_for_row(tk, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, masked_softmax_forward_kernel<T>)
    (const_ptr<T>(scores), args, heads, tq, tk, rows, mutable_ptr<T>(probs), vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "masked_softmax_forward_kernel",
                         io_traffic(6.0 * double(scores.numel()), {&scores, &probs}));
  });
}

void CudaBackend::masked_softmax_backward(const Tensor& probs, const Tensor& d_probs, float scale,
                                          const Tensor& d_scores) {
  const char* op = "masked_softmax_backward";
  expect_dtype(op, probs.dtype(), {&d_probs, &d_scores});
  expect_contiguous(op, {&probs, &d_probs, &d_scores});
  const int64_t tk = probs.size(-1);
  const int64_t rows = tk == 0 ? 0 : probs.numel() / tk;
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, probs, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_vectorizable(
        tk, sizeof(T), {probs.raw_data(), d_probs.raw_data(), d_scores.raw_data()});
    const int threads = threads_for_row(tk, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, masked_softmax_backward_kernel<T>)
    (const_ptr<T>(probs), const_ptr<T>(d_probs), scale, rows, tk, mutable_ptr<T>(d_scores),
     vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "masked_softmax_backward_kernel",
                         io_traffic(4.0 * double(probs.numel()), {&probs, &d_probs, &d_scores}));
  });
}

}  // namespace sp::SP_CUDA_NS
