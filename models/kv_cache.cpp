// KvCache allocation and in-place appends.
#include "models/kv_cache.h"

#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

KvCache KvCache::allocate(int64_t layers, int64_t batch, int64_t capacity, int64_t heads,
                          int64_t head_dim, DType dtype, Device device) {
  KvCache cache;
  cache.capacity = capacity;
  for (int64_t i = 0; i < layers; ++i) {
    cache.keys.push_back(Tensor::empty({batch, capacity, heads, head_dim}, dtype, device));
    cache.values.push_back(Tensor::empty({batch, capacity, heads, head_dim}, dtype, device));
  }
  return cache;
}

std::pair<Tensor, Tensor> KvCache::append(int64_t layer, const Tensor& k, const Tensor& v) const {
  SP_ASSERT(layer >= 0 && layer < int64_t(keys.size()));
  const int64_t steps = k.size(1);
  SP_CHECK(length + steps <= capacity, "KV cache overflow: ", length, " + ", steps,
           " positions exceed the capacity of ", capacity);
  const Tensor& kb = keys[size_t(layer)];
  const Tensor& vb = values[size_t(layer)];
  Backend& backend = backend_for(kb.device());
  backend.copy(k, kb.slice(1, length, length + steps));
  backend.copy(v, vb.slice(1, length, length + steps));
  return {kb.slice(1, 0, length + steps), vb.slice(1, 0, length + steps)};
}

}  // namespace sp
