// CPU row gather (embedding lookup, index_select) and its scatter-add backward.
#include <cstring>

#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

int64_t id_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::I64 ? ids.data<int64_t>()[i] : ids.data<int32_t>()[i];
}

}  // namespace

void CpuBackend::gather_rows(const Tensor& table, const Tensor& ids, const Tensor& out) {
  const int64_t cols = table.size(-1);
  const size_t row_bytes = size_t(cols) * dtype_size(table.dtype());
  const char* src = static_cast<const char*>(table.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  parallel_for(0, ids.numel(), 64, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      std::memcpy(dst + size_t(i) * row_bytes, src + size_t(id_at(ids, i)) * row_bytes, row_bytes);
  });
}

void CpuBackend::scatter_add_rows(const Tensor& d_out, const RowGroups& groups,
                                  const Tensor& d_table) {
  const int64_t cols = d_table.size(-1);
  const float* g = d_out.data<float>();
  float* t = d_table.data<float>();
  const int64_t* targets = groups.targets.data<int64_t>();
  const int64_t* starts = groups.starts.data<int64_t>();
  const int64_t* order = groups.order.data<int64_t>();
  // A task per destination row, adding its rows in the ids' order: no two tasks share a row.
  parallel_for(0, groups.targets.numel(), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t group = lo; group < hi; ++group) {
      float* row = t + targets[group] * cols;
      for (int64_t k = starts[group]; k < starts[group + 1]; ++k) {
        const float* grad = g + order[k] * cols;
        for (int64_t c = 0; c < cols; ++c) row[c] += grad[c];
      }
    }
  });
}

}  // namespace sp
