// CudaBackend gather_rows and scatter_add_rows (kernels/gather.cuh).
#include <algorithm>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/gather.cuh"

namespace sp::SP_CUDA_NS {

namespace {

void check_ids(const char* op, const Tensor& ids) {
  SP_CHECK(ids.dtype() == DType::I32 || ids.dtype() == DType::I64, op,
           ": ids must be I32 or I64, got ", ids.describe());
  expect_contiguous(op, {&ids});
}

}  // namespace

void CudaBackend::gather_rows(const Tensor& table, const Tensor& ids, const Tensor& out) {
  const char* op = "gather_rows";
  check_ids(op, ids);
  expect_dtype(op, table.dtype(), {&out});
  expect_contiguous(op, {&table, &out});
  const int64_t count = ids.numel();
  const size_t row_bytes = size_t(table.size(-1)) * dtype_size(table.dtype());
  if (count == 0 || row_bytes == 0) return;
  activate(op);
  // The widest unit that divides the row and both bases' alignment.
  auto launch = [&](auto tag) {
    using Unit = typename decltype(tag)::type;
    const int64_t units = int64_t(row_bytes / sizeof(Unit));
    SP_LAUNCH(grid_for(count * units, kElementwiseThreads), kElementwiseThreads, 0, stream_,
              gather_rows_kernel<Unit>)
    (static_cast<const Unit*>(table.raw_data()), ids.raw_data(), ids.dtype() == DType::I64, count,
     units, static_cast<Unit*>(out.raw_data()));
    SP_CUDA_CHECK_LAUNCH(*this, op, "gather_rows_kernel", io_traffic(0.0, {&ids, &out, &out}));
  };
  const uintptr_t alignment = reinterpret_cast<uintptr_t>(table.raw_data()) |
                              reinterpret_cast<uintptr_t>(out.raw_data()) | row_bytes;
  if (alignment % 16 == 0)
    launch(TypeTag<uint4>{});
  else if (alignment % 4 == 0)
    launch(TypeTag<uint32_t>{});
  else
    launch(TypeTag<uint16_t>{});
}

void CudaBackend::scatter_add_rows(const Tensor& d_out, const RowGroups& groups,
                                   const Tensor& d_table) {
  const char* op = "scatter_add_rows";
  expect_dtype(op, d_table.dtype(), {&d_out});
  expect_dtype(op, DType::I64, {&groups.targets, &groups.starts, &groups.order});
  expect_contiguous(op, {&d_out, &d_table, &groups.targets, &groups.starts, &groups.order});
  const int64_t count = groups.order.numel(), group_count = groups.targets.numel();
  const int64_t cols = d_table.size(-1);
  if (count == 0 || cols == 0) return;
  activate(op);
  // Enough column blocks to fill the device when there are few groups (a prompt's rows).
  const int threads = kElementwiseThreads;
  const int64_t column_blocks = std::min<int64_t>((cols + threads - 1) / threads, 64);
  const dim3 grid(unsigned(std::min<int64_t>(group_count, 65535)), unsigned(column_blocks));
  dispatch_float(op, d_table, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SP_LAUNCH(grid, threads, 0, stream_, scatter_add_rows_kernel<T>)
    (const_ptr<T>(d_out), const_ptr<int64_t>(groups.targets), const_ptr<int64_t>(groups.starts),
     const_ptr<int64_t>(groups.order), group_count, cols, mutable_ptr<T>(d_table));
    // Reads d_out and the groups once, and each destination row once and writes it once.
    SP_CUDA_CHECK_LAUNCH(
        *this, op, "scatter_add_rows_kernel",
        io_traffic(double(count * cols), {&d_out, &groups.targets, &groups.starts, &groups.order},
                   2.0 * double(group_count * cols) * double(dtype_size(d_table.dtype()))));
  });
}

}  // namespace sp::SP_CUDA_NS
