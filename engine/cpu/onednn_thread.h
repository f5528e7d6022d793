// engine/cpu/onednn_thread.h: Debian's oneDNN runs on OpenMP. A GEMM panel is already one pool
// thread's share of the work, so oneDNN called from that thread must not fork a team of its own.
#pragma once

#include <omp.h>

namespace sp::cpu_detail {

// Makes oneDNN calls from the calling thread single-threaded (once per thread).
inline void keep_onednn_on_this_thread() {
  thread_local const bool single_threaded = (omp_set_num_threads(1), true);
  (void)single_threaded;
}

}  // namespace sp::cpu_detail
