// kernels/gather.cuh: row gathers (embedding lookup, index_select) moving raw bytes in the widest
// unit the row size and alignment allow, and the deterministic scatter-add backward (parallel over
// destination rows and columns).
#pragma once

#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

// out[i, :] = table[ids[i], :], a row being units_per_row Units (uint4 = 16 bytes when possible).
template <class Unit>
__global__ void gather_rows_kernel(const Unit* table, const void* ids, bool ids_are_64bit,
                                   int64_t count, int64_t units_per_row, Unit* out) {
  const int64_t n = count * units_per_row;
  for (int64_t e = global_thread_index(); e < n; e += global_thread_count()) {
    const int64_t i = e / units_per_row, u = e % units_per_row;
    out[e] = table[load_index(ids, ids_are_64bit, i) * units_per_row + u];
  }
}

// d_table[targets[g], c] += d_out[order[k], c] for k in [starts[g], starts[g + 1]) (RowGroups):
// blocks take groups (x) and column ranges (y). A destination row belongs to one group, so no two
// threads share an element, and each sums its rows in the ids' order (the CPU's), in fp32,
// rounding once.
template <class T>
__global__ void scatter_add_rows_kernel(const T* d_out, const int64_t* targets,
                                        const int64_t* starts, const int64_t* order, int64_t groups,
                                        int64_t cols, T* d_table) {
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    T* row = d_table + targets[g] * cols;
    for (int64_t c = int64_t(blockIdx.y) * block_threads() + thread_index(); c < cols;
         c += int64_t(gridDim.y) * block_threads()) {
      float sum = to_float(row[c]);
      for (int64_t k = starts[g]; k < starts[g + 1]; ++k)
        sum += to_float(d_out[order[k] * cols + c]);
      row[c] = from_float<T>(sum);
    }
  }
}

}  // namespace sp::SP_CUDA_NS
