// split_gemm_into_panels: how the CPU GEMMs (fp32 sgemm and the bf16 GEMM) share out one GEMM
// across the thread pool: independent row or column panels, each a single-threaded GEMM.
#pragma once

#include <cstdint>

#include "engine/thread_pool.h"

namespace sp::cpu_detail {

// Calls panel(row_begin, row_end, col_begin, col_end) over a partition of the m x n output.
// The larger output dimension is split so that every panel is an independent single-threaded
// GEMM: the result does not depend on scheduling, and small GEMMs stay on the calling thread.
template <typename Panel>
void split_gemm_into_panels(int64_t m, int64_t n, int64_t k, bool single_thread, Panel&& panel) {
  constexpr int64_t kMinPanel = 64;
  const int64_t flops = m * n * k;
  if (single_thread || flops < (int64_t(1) << 18) || num_threads() == 1) {
    panel(0, m, 0, n);
    return;
  }
  if (m >= n || n < 2 * kMinPanel) {
    parallel_for(0, m, kMinPanel / 4, [&](int64_t lo, int64_t hi) { panel(lo, hi, 0, n); });
  } else {
    parallel_for(0, n, kMinPanel, [&](int64_t lo, int64_t hi) { panel(0, m, lo, hi); });
  }
}

}  // namespace sp::cpu_detail
