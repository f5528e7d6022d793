// CudaBackend T5 relative-position bias (kernels/relative_position.cuh).
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/relative_position.cuh"

namespace sp::SP_CUDA_NS {

void CudaBackend::relative_position_bias(const Tensor& table, int64_t query_offset,
                                         bool bidirectional, int64_t num_buckets,
                                         int64_t max_distance, const Tensor& out) {
  const char* op = "relative_position_bias";
  expect_dtype(op, table.dtype(), {&out});
  expect_contiguous(op, {&table, &out});
  SP_CHECK(table.dim() == 2 && out.dim() == 3 && table.size(1) == out.size(0), op, ": table ",
           table.describe(), " must be [buckets, heads] for out ", out.describe());
  const int64_t heads = out.size(0), tq = out.size(1), tk = out.size(2);
  if (out.numel() == 0) return;
  activate(op);
  const int threads = 256;
  dispatch_float(op, table, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SP_LAUNCH(grid_for(tq * tk, threads), threads, 0, stream_, relative_position_bias_kernel<T>)
    (const_ptr<T>(table), heads, tq, tk, query_offset, bidirectional, num_buckets, max_distance,
     mutable_ptr<T>(out));
    SP_CUDA_CHECK_LAUNCH(*this, op, "relative_position_bias_kernel",
                         io_traffic(20.0 * double(out.numel()), {&table, &out}));
  });
}

}  // namespace sp::SP_CUDA_NS
