// kernels/gather.cuh: row gathers (embedding lookup, index_select) moving raw bytes in the widest
// unit the row size and alignment allow, and the deterministic scatter-add backward.
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

// d_table[ids[i], c] += d_out[i, c]. A thread owns a column and walks the ids in order, so
// repeated ids never race and the additions happen in the CPU reference's order.
template <class T>
__global__ void scatter_add_rows_kernel(const T* d_out, const void* ids, bool ids_are_64bit,
                                        int64_t count, int64_t cols, T* d_table) {
  for (int64_t c = global_thread_index(); c < cols; c += global_thread_count()) {
    for (int64_t i = 0; i < count; ++i) {
      T& slot = d_table[load_index(ids, ids_are_64bit, i) * cols + c];
      slot = from_float<T>(to_float(slot) + to_float(d_out[i * cols + c]));
    }
  }
}

}  // namespace sp::SP_CUDA_NS
