// KvCache: preallocated per-layer key/value buffers [B, capacity, H, D] for incremental
// decoding; each step writes its new keys/values in place and attends over the filled prefix.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace sp {

/// Keys and values of the positions seen so far, one buffer pair per layer.
struct KvCache {
  std::vector<Tensor> keys;    ///< per layer [B, capacity, H, D]
  std::vector<Tensor> values;  ///< per layer [B, capacity, H, D]
  int64_t length = 0;          ///< filled positions (the same for every layer)
  int64_t capacity = 0;

  /// Uninitialised buffers for `layers` layers of [batch, capacity, heads, head_dim].
  static KvCache allocate(int64_t layers, int64_t batch, int64_t capacity, int64_t heads,
                          int64_t head_dim, DType dtype, Device device);
  /// Writes k/v [B, T, H, D] for `layer` at positions [length, length + T) and returns views of
  /// the filled prefix [B, length + T, H, D]. The caller advances `length` after the last layer.
  std::pair<Tensor, Tensor> append(int64_t layer, const Tensor& k, const Tensor& v) const;
};

}  // namespace sp
