// CPU dropout and normal fills from the counter-based Philox stream (kernels/philox.h).
#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"
#include "kernels/philox.h"

namespace sp {

void CpuBackend::dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset,
                         const Tensor& y) {
  const float* in = x.data<float>();
  float* out = y.data<float>();
  const float keep_scale = 1.0f / (1.0f - p);
  parallel_for(0, x.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
    // philox::uniform element by element, but each block computed once for its four words.
    int64_t i = lo;
    while (i < hi) {
      const uint64_t c = offset + uint64_t(i);
      const philox::Block block = philox::generate(c >> 2, seed);
      for (uint64_t word = c & 3; word < 4 && i < hi; ++word, ++i)
        out[i] = philox::to_unit_float(block.v[word]) < p ? 0.0f : in[i] * keep_scale;
    }
  });
}

void CpuBackend::normal_fill(const Tensor& dst, float mean, float std, uint64_t seed,
                             uint64_t offset) {
  float* out = dst.data<float>();
  parallel_for(0, dst.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      out[i] = mean + std * philox::normal(seed, offset, uint64_t(i));
  });
}

}  // namespace sp
