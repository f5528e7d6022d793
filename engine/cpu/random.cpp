// CPU dropout and normal fills from the counter-based Philox stream (kernels/philox.h).
#include <algorithm>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

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
    // Element i takes word (offset + i) % 4 of block (offset + i) / 4: kLanes blocks at a time.
    // Locals, not the captured references, so that stores to out cannot alias them and the
    // select loop vectorises.
    const float drop_below = p, scale = keep_scale;
    const float* __restrict src = in;
    float* __restrict dst = out;
    constexpr int64_t kWords = 4 * philox::kLanes;
    uint32_t words[kWords];
    int64_t i = lo;
    while (i < hi) {
      const uint64_t first_counter = (offset + uint64_t(i)) & ~uint64_t(3);
      philox::generate_lanes(first_counter >> 2, seed, words);
      const int64_t first_word = int64_t(offset + uint64_t(i) - first_counter);
      const int64_t count = std::min(kWords - first_word, hi - i);
      const uint32_t* w = words + first_word;
      int64_t e = 0;
#if defined(__AVX2__)
      // Eight at a time: GCC leaves this select loop scalar, and its branch mispredicts at p.
      const __m256 bound = _mm256_set1_ps(drop_below), scale8 = _mm256_set1_ps(scale);
      const __m256 unit = _mm256_set1_ps(1.0f / 16777216.0f);
      for (; e + 8 <= count; e += 8) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + e));
        const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 8)), unit);
        const __m256 kept = _mm256_mul_ps(_mm256_loadu_ps(src + i + e), scale8);
        _mm256_storeu_ps(dst + i + e, _mm256_and_ps(kept, _mm256_cmp_ps(u, bound, _CMP_GE_OQ)));
      }
#endif
      for (; e < count; ++e) {
        const float kept = src[i + e] * scale;  // read unconditionally: a select, no branch
        dst[i + e] = philox::to_unit_float(w[e]) < drop_below ? 0.0f : kept;
      }
      i += count;
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
