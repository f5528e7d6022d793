// T5's relative-position bucket, shared by the CPU backend and the CUDA kernel. Computed in
// float32 exactly as transformers does, so the bucket table matches bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/philox.h"  // SP_HOST_DEVICE

namespace sp::t5 {

// relative = key_position - query_position. Bidirectional (encoder): half the buckets for
// keys after the query. Causal (decoder): only keys at or before the query count.
SP_HOST_DEVICE inline int64_t relative_position_bucket(int64_t relative, bool bidirectional,
                                                       int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0;
  int64_t n;
  if (bidirectional) {
    num_buckets /= 2;
    if (relative > 0) bucket += num_buckets;
    n = relative < 0 ? -relative : relative;
  } else {
    n = relative < 0 ? -relative : 0;
  }
  const int64_t max_exact = num_buckets / 2;
  if (n < max_exact) return bucket + n;
  // float32 throughout, like torch: log(n / max_exact) / log(max_distance / max_exact) * span
  const float ratio =
      logf(float(n) / float(max_exact)) / float(log(double(max_distance) / double(max_exact)));
  int64_t large = max_exact + int64_t(ratio * float(num_buckets - max_exact));
  if (large > num_buckets - 1) large = num_buckets - 1;
  return bucket + large;
}

}  // namespace sp::t5
