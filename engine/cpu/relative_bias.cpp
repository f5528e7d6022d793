// CPU T5 relative-position bias: out[h, i, j] = table[bucket(j - (query_offset + i)), h].
#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"
#include "kernels/relative_position_math.h"

namespace sp {

void CpuBackend::relative_position_bias(const Tensor& table, int64_t query_offset,
                                        bool bidirectional, int64_t num_buckets,
                                        int64_t max_distance, const Tensor& out) {
  const int64_t H = out.size(0), Tq = out.size(1), Tk = out.size(2);
  const float* t = table.data<float>();
  float* o = out.data<float>();
  parallel_for(0, Tq, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t j = 0; j < Tk; ++j) {
        int64_t bucket = t5::relative_position_bucket(j - (query_offset + i), bidirectional,
                                                      num_buckets, max_distance);
        for (int64_t h = 0; h < H; ++h) o[(h * Tq + i) * Tk + j] = t[bucket * H + h];
      }
  });
}

}  // namespace sp
