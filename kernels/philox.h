// Philox4x32-10, the counter-based generator every backend uses, so CPU and CUDA draw the
// same numbers for the same (seed, counter): dropout masks and initialisations match exactly.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

#if defined(__CUDACC__)
#define SP_HOST_DEVICE __host__ __device__
#else
#define SP_HOST_DEVICE
#endif

namespace sp::philox {

struct Block {
  uint32_t v[4];
};

SP_HOST_DEVICE inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t product = uint64_t(a) * uint64_t(b);
  hi = uint32_t(product >> 32);
  lo = uint32_t(product);
}

// Ten rounds of Philox4x32 on counter `c` with key `k` (constants from Salmon et al., SC'11).
SP_HOST_DEVICE inline Block generate(uint64_t counter, uint64_t seed) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Block{{c0, c1, c2, c3}};
}

// Philox blocks first_block .. first_block + kLanes - 1, word w of block j in words[4 * j + w]
// (counter order, as uniform() numbers them): the same numbers as generate(), computed
// lane-parallel (AVX2 where the build has it) because the CPU's dropout is otherwise bound by the
// scalar rounds.
constexpr int kLanes = 16;

#if defined(__AVX2__) && !defined(__CUDACC__)
namespace lanes_detail {
// hi and lo words of m * c for eight 32-bit lanes.
inline void mulhilo8(__m256i m, __m256i c, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
}  // namespace lanes_detail

inline void generate_lanes(uint64_t first_block, uint64_t seed, uint32_t (&words)[4 * kLanes]) {
  using lanes_detail::mulhilo8;
  const __m256i m0 = _mm256_set1_epi32(int(0xD2511F53u)), m1 = _mm256_set1_epi32(int(0xCD9E8D57u));
  for (int half = 0; half < kLanes; half += 8) {
    alignas(32) uint32_t lo_words[8], hi_words[8];
    for (int j = 0; j < 8; ++j) {
      const uint64_t counter = first_block + uint64_t(half + j);
      lo_words[j] = uint32_t(counter), hi_words[j] = uint32_t(counter >> 32);
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo_words));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi_words));
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(m0, c0, hi0, lo0);
      mulhilo8(m1, c2, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(int(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(int(k1)));
      c1 = lo1, c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    // Transpose the four word vectors into counter order: blocks j and j + 1 per 256-bit store.
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i b04 = _mm256_unpacklo_epi64(t0, t2), b15 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i b26 = _mm256_unpacklo_epi64(t1, t3), b37 = _mm256_unpackhi_epi64(t1, t3);
    __m256i* out = reinterpret_cast<__m256i*>(words + 4 * half);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(b04, b15, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(b26, b37, 0x20));
    _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(b04, b15, 0x31));
    _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(b26, b37, 0x31));
  }
}
#else
inline void generate_lanes(uint64_t first_block, uint64_t seed, uint32_t (&words)[4 * kLanes]) {
  for (int j = 0; j < kLanes; ++j) {
    const Block block = generate(first_block + uint64_t(j), seed);
    for (int w = 0; w < 4; ++w) words[4 * j + w] = block.v[w];
  }
}
#endif

// A float in [0, 1) with 24 random bits. Converted through int32 (exact below 2^24) because a
// signed conversion vectorises on AVX2 and an unsigned one does not.
SP_HOST_DEVICE inline float to_unit_float(uint32_t bits) {
  return float(int32_t(bits >> 8)) * (1.0f / 16777216.0f);
}

// Word c % 4 of a block, picked by selects: indexing the array with a run-time value would put
// the block in a GPU thread's local memory (a stack frame, off-chip) instead of registers.
SP_HOST_DEVICE inline uint32_t word_of(const Block& block, uint64_t c) {
  const uint32_t low = (c & 1) ? block.v[1] : block.v[0];
  const uint32_t high = (c & 1) ? block.v[3] : block.v[2];
  return (c & 2) ? high : low;
}

// Uniform [0, 1) for element `index` of the stream (seed, offset). Element c = offset + index
// takes word c % 4 of block c / 4, so one Philox block serves four consecutive elements.
SP_HOST_DEVICE inline float uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  const uint64_t c = offset + index;
  return to_unit_float(word_of(generate(c >> 2, seed), c));
}

// The uniforms of stream elements first .. first + N - 1 (counters, offset included): a block
// holds four consecutive counters' words, so one block serves four elements (two blocks where
// they straddle a block boundary), where uniform() computes a block per element.
template <int N>
SP_HOST_DEVICE inline void uniforms(uint64_t seed, uint64_t first, float (&out)[N]) {
  Block block = generate(first >> 2, seed);
  for (int e = 0; e < N; ++e) {
    const uint64_t c = first + uint64_t(e);
    if (e > 0 && (c & 3) == 0) block = generate(c >> 2, seed);
    out[e] = to_unit_float(word_of(block, c));
  }
}

// Standard normal for element `index` (Box-Muller on two words of one Philox block).
SP_HOST_DEVICE inline float normal(uint64_t seed, uint64_t offset, uint64_t index) {
  Block block = generate(offset + index, seed);
  // u1 in (0, 1]: avoids log(0).
  float u1 = (float(block.v[0] >> 8) + 1.0f) * (1.0f / 16777216.0f);
  float u2 = to_unit_float(block.v[1]);
  float radius = sqrtf(-2.0f * logf(u1));
  return radius * cosf(6.28318530717958647692f * u2);
}

}  // namespace sp::philox
