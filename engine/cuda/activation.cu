// CudaBackend activations and gated activations: launches of kernels/activation.cuh.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/activation.cuh"

namespace sp::SP_CUDA_NS {

namespace {

ActivationKind activation_kind(Activation act) {
  switch (act) {
    case Activation::kGeluTanh:
      return ActivationKind::kGeluTanh;
    case Activation::kGeluErf:
      return ActivationKind::kGeluErf;
    case Activation::kRelu:
      return ActivationKind::kRelu;
    case Activation::kSilu:
      return ActivationKind::kSilu;
  }
  fail(ErrorKind::kInternal, "activation: unknown kind");
}

// A row-strided view may load whole packs only if no pack crosses a row: width and row stride
// both whole packs (a dense tensor is one long row).
template <class T>
bool whole_packs(int64_t width, int64_t ld) {
  return ld == width || (width % Pack<T>::kSize == 0 && ld % Pack<T>::kSize == 0);
}

}  // namespace

void CudaBackend::activation_forward(Activation act, const Tensor& x, const Tensor& bias,
                                     const Tensor& y) {
  const char* op = "activation_forward";
  expect_dtype(op, x.dtype(), {&bias, &y});
  expect_contiguous(op, {&x, &bias, &y});
  const int64_t n = x.numel();
  if (n == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = aligned16({x.raw_data(), y.raw_data()});
    SP_LAUNCH(grid_for(n / Pack<T>::kSize + 1, kElementwiseThreads), kElementwiseThreads, 0,
              stream_, activation_forward_kernel<T>)
    (activation_kind(act), const_ptr<T>(x), const_ptr<T>(bias), x.size(-1), mutable_ptr<T>(y), n,
     vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "activation_forward_kernel",
                         io_traffic(9.0 * double(n), {&x, &bias, &y}));
  });
}

void CudaBackend::activation_backward(Activation act, const Tensor& x, const Tensor& bias,
                                      const Tensor& dy, const Tensor& dx) {
  const char* op = "activation_backward";
  expect_dtype(op, x.dtype(), {&bias, &dy, &dx});
  expect_contiguous(op, {&x, &bias, &dy, &dx});
  const int64_t n = x.numel();
  if (n == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = aligned16({x.raw_data(), dy.raw_data(), dx.raw_data()});
    SP_LAUNCH(grid_for(n / Pack<T>::kSize + 1, kElementwiseThreads), kElementwiseThreads, 0,
              stream_, activation_backward_kernel<T>)
    (activation_kind(act), const_ptr<T>(x), const_ptr<T>(bias), x.size(-1), const_ptr<T>(dy),
     mutable_ptr<T>(dx), n, vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "activation_backward_kernel",
                         io_traffic(14.0 * double(n), {&x, &bias, &dy, &dx}));
  });
}

void CudaBackend::gated_forward(Activation act, const Tensor& gate, const Tensor& up,
                                const Tensor& y) {
  const char* op = "gated_forward";
  expect_dtype(op, gate.dtype(), {&up, &y});
  expect_contiguous(op, {&y});
  const int64_t ld = gated_row_stride(op, gate, up);
  const int64_t n = y.numel(), width = y.size(-1);
  if (n == 0) return;
  activate(op);
  dispatch_float(op, gate, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized =
        aligned16({gate.raw_data(), up.raw_data(), y.raw_data()}) && whole_packs<T>(width, ld);
    SP_LAUNCH(grid_for(n / Pack<T>::kSize + 1, kElementwiseThreads), kElementwiseThreads, 0,
              stream_, gated_forward_kernel<T>)
    (activation_kind(act), const_ptr<T>(gate), const_ptr<T>(up), width, ld, mutable_ptr<T>(y), n,
     vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "gated_forward_kernel",
                         io_traffic(9.0 * double(n), {&gate, &up, &y}));
  });
}

void CudaBackend::gated_backward(Activation act, const Tensor& gate, const Tensor& up,
                                 const Tensor& dy, const Tensor& d_gate, const Tensor& d_up) {
  const char* op = "gated_backward";
  expect_dtype(op, gate.dtype(), {&up, &dy, &d_gate, &d_up});
  expect_contiguous(op, {&dy});
  const int64_t ld = gated_row_stride(op, gate, up, d_gate, d_up);
  const int64_t n = dy.numel(), width = dy.size(-1);
  if (n == 0 || (!d_gate.defined() && !d_up.defined())) return;
  activate(op);
  dispatch_float(op, gate, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* dg = mutable_ptr<T>(d_gate);
    T* du = mutable_ptr<T>(d_up);
    const bool vectorized = aligned16({gate.raw_data(), up.raw_data(), dy.raw_data(), dg, du}) &&
                            whole_packs<T>(width, ld);
    SP_LAUNCH(grid_for(n / Pack<T>::kSize + 1, kElementwiseThreads), kElementwiseThreads, 0,
              stream_, gated_backward_kernel<T>)
    (activation_kind(act), const_ptr<T>(gate), const_ptr<T>(up), const_ptr<T>(dy), width, ld, dg,
     du, n, vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "gated_backward_kernel",
                         io_traffic(16.0 * double(n), {&gate, &up, &dy, &d_gate, &d_up}));
  });
}

}  // namespace sp::SP_CUDA_NS
