// T5 relative position bias [H, Tq, Tk] gathered from a frozen [num_buckets, H] table.
// Not differentiable: the table belongs to the frozen model.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace sp {

/// Queries sit at absolute positions query_offset..query_offset+Tq-1, keys at 0..Tk-1.
Tensor relative_position_bias(const Tensor& table, int64_t tq, int64_t tk, int64_t query_offset,
                              bool bidirectional, int64_t max_distance);

}  // namespace sp
