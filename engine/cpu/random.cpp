// CPU dropout (alone, or fused with a bias and a residual add) and normal fills from the
// counter-based Philox stream (kernels/philox.h).
#include <algorithm>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/dropout_span.h"
#include "engine/error.h"
#include "engine/thread_pool.h"
#include "kernels/philox.h"

namespace sp {

namespace cpu {

void dropout_span(const float* src, float* dst, int64_t count, float p, uint64_t seed,
                  uint64_t first_counter) {
  const float keep_scale = 1.0f / (1.0f - p);
  // Element e takes word (first_counter + e) % 4 of block (first_counter + e) / 4: kLanes blocks
  // at a time.
  constexpr int64_t kWords = 4 * philox::kLanes;
  uint32_t words[kWords];
  int64_t i = 0;
  while (i < count) {
    const uint64_t block_counter = (first_counter + uint64_t(i)) & ~uint64_t(3);
    philox::generate_lanes(block_counter >> 2, seed, words);
    const int64_t first_word = int64_t(first_counter + uint64_t(i) - block_counter);
    const int64_t n = std::min(kWords - first_word, count - i);
    const uint32_t* w = words + first_word;
    int64_t e = 0;
#if defined(__AVX2__)
    // Eight at a time: GCC leaves this select loop scalar, and its branch mispredicts at p.
    const __m256 bound = _mm256_set1_ps(p), scale8 = _mm256_set1_ps(keep_scale);
    const __m256 unit = _mm256_set1_ps(1.0f / 16777216.0f);
    for (; e + 8 <= n; e += 8) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + e));
      const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 8)), unit);
      const __m256 kept = _mm256_mul_ps(_mm256_loadu_ps(src + i + e), scale8);
      _mm256_storeu_ps(dst + i + e, _mm256_and_ps(kept, _mm256_cmp_ps(u, bound, _CMP_GE_OQ)));
    }
#endif
    for (; e < n; ++e) {
      const float kept = src[i + e] * keep_scale;  // read unconditionally: a select, no branch
      dst[i + e] = philox::to_unit_float(w[e]) < p ? 0.0f : kept;
    }
    i += n;
  }
}

void residual_dropout_add_span(const float* residual, const float* x, const float* bias, float* out,
                               int64_t count, float p, uint64_t seed, uint64_t first_counter) {
  // The three steps round as the separate ops do.
  for (int64_t e = 0; e < count; ++e) out[e] = bias ? x[e] + bias[e] : x[e];
  if (p > 0.0f) dropout_span(out, out, count, p, seed, first_counter);
  for (int64_t e = 0; e < count; ++e) out[e] += residual[e];
}

}  // namespace cpu

void CpuBackend::dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset,
                         const Tensor& y) {
  const float* in = x.data<float>();
  float* out = y.data<float>();
  parallel_for(0, x.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
    cpu::dropout_span(in + lo, out + lo, hi - lo, p, seed, offset + uint64_t(lo));
  });
}

void CpuBackend::residual_dropout_add(const Tensor& residual, const Tensor& x, const Tensor& bias,
                                      float p, uint64_t seed, uint64_t offset, const Tensor& out) {
  const float* res = residual.data<float>();
  const float* in = x.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  float* o = out.data<float>();
  const int64_t width = x.size(-1);
  parallel_for(0, x.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
    // Row segments, so the bias is a contiguous run.
    for (int64_t i = lo; i < hi;) {
      const int64_t column = i % width, count = std::min(hi - i, width - column);
      cpu::residual_dropout_add_span(res + i, in + i, b ? b + column : nullptr, o + i, count, p,
                                     seed, offset + uint64_t(i));
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
