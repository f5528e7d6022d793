// Philox4x32-10, the counter-based generator every backend uses, so CPU and CUDA draw the
// same numbers for the same (seed, counter): dropout masks and initialisations match exactly.
#pragma once

#include <cmath>
#include <cstdint>

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

// A float in [0, 1) with 24 random bits.
SP_HOST_DEVICE inline float to_unit_float(uint32_t bits) {
  return float(bits >> 8) * (1.0f / 16777216.0f);
}

// Uniform [0, 1) for element `index` of the stream (seed, offset). Element c = offset + index
// takes word c % 4 of block c / 4, so one Philox block serves four consecutive elements.
SP_HOST_DEVICE inline float uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  const uint64_t c = offset + index;
  return to_unit_float(generate(c >> 2, seed).v[c & 3]);
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
