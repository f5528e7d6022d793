// CudaBackend cross-entropy forward, backward, both fused, and the mean loss
// (kernels/cross_entropy.cuh); the backward may write d_logits over the logits.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/cross_entropy.cuh"

namespace sp::SP_CUDA_NS {

namespace {

void check_targets(const char* op, const Tensor& targets, int64_t rows) {
  SP_CHECK((targets.dtype() == DType::I32 || targets.dtype() == DType::I64) &&
               targets.is_contiguous() && targets.numel() == rows,
           op, ": targets must be ", rows, " contiguous I32 or I64 values, got ",
           targets.describe());
}

// The rows of logits [..., vocab], after checking the targets and the F32 loss outputs.
int64_t loss_rows(const char* op, const Tensor& logits, const Tensor& targets, const Tensor& loss,
                  const Tensor& lse) {
  expect_dtype(op, DType::F32, {&loss, &lse});
  expect_contiguous(op, {&loss, &lse});
  const int64_t vocab = logits.size(-1);
  const int64_t rows = vocab == 0 ? 0 : logits.numel() / vocab;
  check_targets(op, targets, rows);
  return rows;
}

// Whole-pack loads when every row (ld elements apart) starts 16-byte aligned; a row's last
// vocab % pack logits are then read one by one.
bool rows_aligned(int64_t ld, size_t element_size, std::initializer_list<const void*> bases) {
  return ld % int64_t(16 / element_size) == 0 && aligned16(bases);
}

}  // namespace

void CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                        int64_t ignore_index, const Tensor& loss,
                                        const Tensor& lse) {
  const char* op = "cross_entropy_forward";
  const int64_t vocab = logits.size(-1), rows = loss_rows(op, logits, targets, loss, lse);
  const int64_t ld = logits_row_stride(op, logits, Tensor());
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_aligned(ld, sizeof(T), {logits.raw_data()});
    const int threads = threads_for_row(vocab, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, cross_entropy_forward_kernel<T>)
    (const_ptr<T>(logits), targets.raw_data(), targets.dtype() == DType::I64, ignore_index, rows,
     vocab, ld, mutable_ptr<float>(loss), mutable_ptr<float>(lse), vectorized);
    SP_CUDA_CHECK_LAUNCH(
        *this, op, "cross_entropy_forward_kernel",
        io_traffic(4.0 * double(logits.numel()), {&logits, &targets, &loss, &lse}));
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                         int64_t ignore_index, const Tensor& lse, float grad_scale,
                                         const Tensor& d_logits) {
  const char* op = "cross_entropy_backward";
  expect_dtype(op, logits.dtype(), {&d_logits});
  expect_dtype(op, DType::F32, {&lse});
  expect_contiguous(op, {&lse});
  const int64_t vocab = logits.size(-1), ld = logits_row_stride(op, logits, d_logits);
  const int64_t rows = vocab == 0 ? 0 : logits.numel() / vocab;
  check_targets(op, targets, rows);
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_aligned(ld, sizeof(T), {logits.raw_data(), d_logits.raw_data()});
    const int threads = threads_for_row(vocab, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, cross_entropy_backward_kernel<T>)
    (const_ptr<T>(logits), targets.raw_data(), targets.dtype() == DType::I64, ignore_index,
     const_ptr<float>(lse), grad_scale, rows, vocab, ld, mutable_ptr<T>(d_logits), vectorized);
    SP_CUDA_CHECK_LAUNCH(
        *this, op, "cross_entropy_backward_kernel",
        io_traffic(4.0 * double(logits.numel()), {&logits, &targets, &lse, &d_logits}));
  });
}

void CudaBackend::cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets,
                                                 int64_t ignore_index, float grad_scale,
                                                 const Tensor& loss, const Tensor& lse,
                                                 const Tensor& d_logits) {
  const char* op = "cross_entropy_forward_backward";
  expect_dtype(op, logits.dtype(), {&d_logits});
  const int64_t vocab = logits.size(-1), rows = loss_rows(op, logits, targets, loss, lse);
  const int64_t ld = logits_row_stride(op, logits, d_logits);
  if (rows == 0) return;
  activate(op);
  dispatch_float(op, logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = rows_aligned(ld, sizeof(T), {logits.raw_data(), d_logits.raw_data()});
    const int threads = threads_for_row(vocab, vectorized ? Pack<T>::kSize : 1);
    SP_LAUNCH(grid_for_rows(rows), threads, 0, stream_, cross_entropy_forward_backward_kernel<T>)
    (const_ptr<T>(logits), targets.raw_data(), targets.dtype() == DType::I64, ignore_index,
     grad_scale, rows, vocab, ld, mutable_ptr<float>(loss), mutable_ptr<float>(lse),
     mutable_ptr<T>(d_logits), vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "cross_entropy_forward_backward_kernel",
                         io_traffic(8.0 * double(logits.numel()),
                                    {&logits, &logits, &targets, &loss, &lse, &d_logits}));
  });
}

void CudaBackend::cross_entropy_mean(const Tensor& row_loss, int64_t count, const Tensor& mean) {
  const char* op = "cross_entropy_mean";
  expect_dtype(op, DType::F32, {&row_loss, &mean});
  expect_contiguous(op, {&row_loss});
  SP_CHECK(mean.numel() == 1, op, ": the mean is one value, got ", mean.describe());
  activate(op);
  SP_LAUNCH(1, kElementwiseThreads, 0, stream_, cross_entropy_mean_kernel<>)
  (const_ptr<float>(row_loss), row_loss.numel(), count, mutable_ptr<float>(mean));
  SP_CUDA_CHECK_LAUNCH(*this, op, "cross_entropy_mean_kernel",
                       io_traffic(double(row_loss.numel()), {&row_loss, &mean}));
}

}  // namespace sp::SP_CUDA_NS
