// CudaBackend rotary position embedding: one launch of kernels/rotary.cuh.
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/rotary.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin,
                                   bool inverse, const Tensor& out) {
  const char* op = "rotary_embedding";
  expect_dtype(op, x.dtype(), {&out});
  expect_dtype(op, DType::F32, {&cos, &sin});
  expect_contiguous(op, {&cos, &sin});
  const std::optional<int64_t> ldx = rotary_row_stride(x), ldo = rotary_row_stride(out);
  SP_CHECK(ldx && ldo && out.shape() == x.shape(), op, ": x ", x.describe(), " and out ",
           out.describe(), " must be [B, T, H, D] rows of dense heads");
  const int64_t rows = x.size(0) * x.size(1), heads = x.size(2), half = x.size(3) / 2;
  if (rows * heads * half == 0) return;
  activate(op);
  dispatch_float(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int threads = 256;
    SP_LAUNCH(grid_for(rows * heads * half, threads), threads, 0, stream_,
              rotary_embedding_kernel<T>)
    (const_ptr<T>(x), *ldx, const_ptr<float>(cos), const_ptr<float>(sin), inverse ? -1.0f : 1.0f,
     rows, heads, half, mutable_ptr<T>(out), *ldo);
    SP_CUDA_CHECK_LAUNCH(*this, op, "rotary_embedding_kernel",
                         io_traffic(6.0 * double(x.numel()), {&x, &cos, &sin, &out}));
  });
}

}  // namespace sp::SP_CUDA_NS
