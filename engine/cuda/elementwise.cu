// CudaBackend binary (broadcasting) and affine: launches of kernels/elementwise.cuh.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/elementwise.cuh"

namespace sp::SP_CUDA_NS {

namespace {

BinaryKind binary_kind(BinaryOp op) {
  switch (op) {
    case BinaryOp::kAdd:
      return BinaryKind::kAdd;
    case BinaryOp::kSub:
      return BinaryKind::kSub;
    case BinaryOp::kMul:
      return BinaryKind::kMul;
  }
  fail(ErrorKind::kInternal, "binary: unknown op");
}

}  // namespace

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  const char* name = "binary";
  expect_dtype(name, out.dtype(), {&a, &b});
  SP_CHECK(a.shape() == out.shape() && b.shape() == out.shape(), name, ": operands ", a.describe(),
           " and ", b.describe(), " are not views of the output shape ", out.describe());
  const int64_t n = out.numel();
  if (n == 0) return;
  activate(name);
  const StridedLayout<3> layout =
      make_strided_layout<3>(name, out.shape(), {out.strides(), a.strides(), b.strides()});
  const BinaryKind kind = binary_kind(op);
  dispatch_float(name, out, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (is_dense(layout)) {
      const bool vectorized = aligned16({a.raw_data(), b.raw_data(), out.raw_data()});
      const int64_t work = vectorized ? n / Pack<T>::kSize + 1 : n;
      SP_LAUNCH(grid_for(work, kElementwiseThreads), kElementwiseThreads, 0, stream_,
                binary_contiguous_kernel<T>)
      (kind, const_ptr<T>(a), const_ptr<T>(b), mutable_ptr<T>(out), n, vectorized);
      SP_CUDA_CHECK_LAUNCH(*this, name, "binary_contiguous_kernel",
                           io_traffic(double(n), {&a, &b, &out}));
      return;
    }
    SP_LAUNCH(grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream_,
              binary_strided_kernel<T>)
    (kind, const_ptr<T>(a), const_ptr<T>(b), mutable_ptr<T>(out), layout, n);
    SP_CUDA_CHECK_LAUNCH(*this, name, "binary_strided_kernel",
                         io_traffic(double(n), {&a, &b, &out}));
  });
}

void CudaBackend::affine(const Tensor& x, float scale, float shift, const Tensor& out) {
  const char* op = "affine";
  expect_dtype(op, out.dtype(), {&x});
  expect_contiguous(op, {&x, &out});
  const int64_t n = out.numel();
  if (n == 0) return;
  activate(op);
  dispatch_float(op, out, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = aligned16({x.raw_data(), out.raw_data()});
    const int64_t work = vectorized ? n / Pack<T>::kSize + 1 : n;
    SP_LAUNCH(grid_for(work, kElementwiseThreads), kElementwiseThreads, 0, stream_,
              affine_kernel<T>)
    (const_ptr<T>(x), scale, shift, mutable_ptr<T>(out), n, vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "affine_kernel", io_traffic(2.0 * double(n), {&x, &out}));
  });
}

}  // namespace sp::SP_CUDA_NS
