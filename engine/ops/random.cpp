// randn and the host Generator.
#include "engine/ops/random.h"

#include "engine/backend.h"
#include "engine/error.h"
#include "kernels/philox.h"

namespace sp {

Tensor randn(const Shape& shape, uint64_t seed, uint64_t offset, float mean, float std,
             Device device) {
  Tensor out = Tensor::empty(shape, DType::F32, device);
  if (out.numel() > 0) backend_for(device).normal_fill(out, mean, std, seed, offset);
  return out;
}

float Generator::uniform() {
  return philox::uniform(seed_, 0, counter_++);
}

float Generator::normal() {
  return philox::normal(seed_, 0, counter_++);
}

uint64_t Generator::next_u64() {
  philox::Block block = philox::generate(counter_++, seed_);
  return (uint64_t(block.v[0]) << 32) | block.v[1];
}

int64_t Generator::uniform_int(int64_t n) {
  SP_CHECK(n > 0, "uniform_int: empty range");
  const uint64_t range = uint64_t(n);
  const uint64_t limit = UINT64_MAX - UINT64_MAX % range;  // rejection keeps it unbiased
  while (true) {
    uint64_t value = next_u64();
    if (value < limit) return int64_t(value % range);
  }
}

}  // namespace sp
