// Seeded random tensors from the Philox stream: identical on every backend for a (seed, offset).
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace sp {

/// Normal samples from Philox(seed, offset + i): the same values on every backend.
Tensor randn(const Shape& shape, uint64_t seed, uint64_t offset = 0, float mean = 0.0f,
             float std = 1.0f, Device device = Device::cpu());

/// Host-side generator for sampling decisions (token sampling, data shuffles): Philox driven.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t counter = 0) : seed_(seed), counter_(counter) {}
  float uniform();  ///< [0, 1)
  float normal();   ///< N(0, 1)
  uint64_t next_u64();
  int64_t uniform_int(int64_t n);  ///< [0, n), unbiased
  uint64_t seed() const { return seed_; }
  uint64_t counter() const { return counter_; }  ///< state for checkpoints

 private:
  uint64_t seed_;
  uint64_t counter_;
};

}  // namespace sp
