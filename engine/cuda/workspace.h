// engine/cuda/workspace.h: scratch device memory for multi-pass kernels (from the caching
// allocator, so steady state makes no cudaMalloc) and the column-sum launcher the reductions and
// the norm weight gradients share.
#pragma once

#include <algorithm>
#include <cstddef>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "kernels/reduce.cuh"

namespace sp::SP_CUDA_NS {

// Released at scope exit, possibly before the kernels using it ran: every user is on the
// backend's one stream, so the next owner's kernels are queued behind them.
class Workspace {
 public:
  Workspace(CudaBackend& backend, size_t nbytes)
      : allocator_(backend.caching_allocator()),
        nbytes_(nbytes),
        ptr_(allocator_.allocate(nbytes)) {}
  ~Workspace() { allocator_.deallocate(ptr_, nbytes_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  CachingAllocator& allocator_;
  size_t nbytes_;
  void* ptr_;
};

// How a column sum over `rows` splits into row chunks: enough (cols-block, chunk) blocks to keep
// the device busy, and chunks long enough that the partials stay small.
struct ColumnChunks {
  int64_t chunks = 1;
  int64_t rows_per_chunk = 1;
};

inline ColumnChunks column_chunks(const CudaBackend& backend, int64_t rows, int64_t cols,
                                  int threads) {
  const int64_t column_blocks = backend.grid_for(cols, threads);
  const int64_t target_blocks = backend.grid_for(int64_t(1) << 30, threads);
  const int64_t max_chunks =
      std::max<int64_t>(1, std::min<int64_t>(65535, target_blocks / column_blocks));
  ColumnChunks c;
  c.chunks = std::clamp<int64_t>((rows + 63) / 64, 1, max_chunks);
  c.rows_per_chunk = std::max<int64_t>(1, (rows + c.chunks - 1) / c.chunks);
  c.chunks = std::max<int64_t>(1, (rows + c.rows_per_chunk - 1) / c.rows_per_chunk);
  return c;
}

inline constexpr int kColumnSumThreads = 128;

// out[c] (+)= sum_r x[r, c] for contiguous x [rows, cols], deterministically in two passes.
template <class T>
void launch_column_sums(CudaBackend& backend, const char* op, const T* x, int64_t rows,
                        int64_t cols, T* out, bool accumulate) {
  const int threads = kColumnSumThreads;
  const ColumnChunks c = column_chunks(backend, rows, cols, threads);
  Workspace partials(backend, size_t(c.chunks * cols) * sizeof(float));
  const dim3 grid(backend.grid_for(cols, threads), unsigned(c.chunks));
  SP_LAUNCH(grid, threads, 0, backend.stream(), column_partial_sums_kernel<T>)
  (x, rows, cols, c.rows_per_chunk, partials.as<float>());
  SP_CUDA_CHECK_LAUNCH(
      backend, op, "column_partial_sums_kernel",
      KernelTraffic{double(rows * cols),
                    double(rows * cols) * sizeof(T) + double(c.chunks * cols) * sizeof(float)});
  SP_LAUNCH(backend.grid_for(cols, threads), threads, 0, backend.stream(),
            finalize_column_sums_kernel<T>)
  (partials.as<float>(), c.chunks, cols, out, accumulate);
  SP_CUDA_CHECK_LAUNCH(backend, op, "finalize_column_sums_kernel",
                       KernelTraffic{double(c.chunks * cols),
                                     double(c.chunks * cols) * sizeof(float) +
                                         double(cols) * sizeof(T) * (accumulate ? 2.0 : 1.0)});
}

}  // namespace sp::SP_CUDA_NS
