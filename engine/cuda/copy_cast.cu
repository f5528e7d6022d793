// CudaBackend copy (strided, broadcast), cast and fill: launches of kernels/copy_cast.cuh.
#include <cstring>
#include <type_traits>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/copy_cast.cuh"

namespace sp::SP_CUDA_NS {

namespace {

template <class F>
void dispatch_any(const char* op, const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::F32:
      f(TypeTag<float>{});
      return;
    case DType::BF16:
      f(TypeTag<__nv_bfloat16>{});
      return;
    case DType::F16:
      f(TypeTag<__half>{});
      return;
    case DType::I32:
      f(TypeTag<int32_t>{});
      return;
    case DType::I64:
      f(TypeTag<int64_t>{});
      return;
  }
  fail(ErrorKind::kInternal, op, ": unknown dtype of ", t.describe());
}

}  // namespace

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  const char* op = "copy";
  SP_CHECK(src.dtype() == dst.dtype(), op, ": dtype mismatch ", src.describe(), " -> ",
           dst.describe());
  SP_CHECK(src.shape() == dst.shape(), op, ": shape mismatch ", src.describe(), " -> ",
           dst.describe());
  const int64_t n = dst.numel();
  if (n == 0) return;
  activate(op);
  const StridedLayout<2> layout =
      make_strided_layout<2>(op, dst.shape(), {dst.strides(), src.strides()});
  const size_t element = dtype_size(src.dtype());
  if (is_dense(layout)) {
    count_launch("cudaMemcpyAsync (device to device)", {0.0, 2.0 * double(n) * double(element)});
    SP_CUDA_CHECK(op, cudaMemcpyAsync(dst.raw_data(), src.raw_data(), size_t(n) * element,
                                      cudaMemcpyDeviceToDevice, stream_));
    return;
  }
  auto launch = [&](auto tag) {
    using Unit = typename decltype(tag)::type;
    SP_LAUNCH(grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream_,
              strided_copy_kernel<Unit>)
    (static_cast<const Unit*>(src.raw_data()), static_cast<Unit*>(dst.raw_data()), layout, n);
    SP_CUDA_CHECK_LAUNCH(*this, op, "strided_copy_kernel", io_traffic(0.0, {&src, &dst}));
  };
  switch (element) {
    case 2:
      launch(TypeTag<uint16_t>{});
      break;
    case 4:
      launch(TypeTag<uint32_t>{});
      break;
    case 8:
      launch(TypeTag<uint64_t>{});
      break;
    default:
      fail(ErrorKind::kInternal, op, ": unsupported element size ", element);
  }
}

void CudaBackend::cast(const Tensor& src, const Tensor& dst) {
  const char* op = "cast";
  expect_contiguous(op, {&src, &dst});
  SP_CHECK(src.numel() == dst.numel(), op, ": ", src.describe(), " -> ", dst.describe(),
           " differ in size");
  const int64_t n = src.numel();
  if (n == 0) return;
  activate(op);
  if (src.dtype() == dst.dtype()) {
    copy_on_device(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  dispatch_any(op, src, [&](auto from_tag) {
    using From = typename decltype(from_tag)::type;
    dispatch_any(op, dst, [&](auto to_tag) {
      using To = typename decltype(to_tag)::type;
      if constexpr (!std::is_same_v<From, To>) {
        SP_LAUNCH(grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream_,
                  cast_kernel<From, To>)
        (const_ptr<From>(src), mutable_ptr<To>(dst), n);
        SP_CUDA_CHECK_LAUNCH(*this, op, "cast_kernel", io_traffic(double(n), {&src, &dst}));
      }
    });
  });
}

void CudaBackend::fill(const Tensor& dst, float value) {
  const char* op = "fill";
  expect_contiguous(op, {&dst});
  const int64_t n = dst.numel();
  if (n == 0) return;
  activate(op);
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if (bits == 0) {  // +0.0 is all-zero bytes in every dtype
    count_launch("cudaMemsetAsync", {0.0, double(dst.nbytes())});
    SP_CUDA_CHECK(op, cudaMemsetAsync(dst.raw_data(), 0, dst.nbytes(), stream_));
    return;
  }
  dispatch_any(op, dst, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vectorized = aligned16({dst.raw_data()});
    const int64_t work = vectorized ? n / int64_t(16 / sizeof(T)) + 1 : n;
    SP_LAUNCH(grid_for(work, kElementwiseThreads), kElementwiseThreads, 0, stream_, fill_kernel<T>)
    (mutable_ptr<T>(dst), value, n, vectorized);
    SP_CUDA_CHECK_LAUNCH(*this, op, "fill_kernel", io_traffic(0.0, {&dst}));
  });
}

}  // namespace sp::SP_CUDA_NS
