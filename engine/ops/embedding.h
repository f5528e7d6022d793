// Row gathers: embedding lookup (table[ids]) and index_select along axis 0.
// Differentiable with respect to the table (scatter-add backward).
#pragma once

#include "engine/ops/checked_indices.h"
#include "engine/tensor.h"

namespace sp {

/// table [V, D], ids of any shape (I32/I64) -> [*ids.shape, D]. Ids are range-checked; they may
/// be on the host (checked there and uploaded without a wait: the cheap way on a GPU) or on the
/// table's device (checked through a copy back, which waits for the device).
Tensor embedding(const Tensor& table, const Tensor& ids);
/// x [N, ...] rows picked by 1-D ids -> [len(ids), ...].
Tensor index_select(const Tensor& x, const Tensor& ids);

/// The same gathers from indices already checked and on the table's device: no host round trip,
/// so they can run inside a capture. A table that needs a gradient needs distinct indices (whose
/// grouping CheckedIndices keeps); `ids` must have no ignored value and a bound within the table.
Tensor embedding(const Tensor& table, const CheckedIndices& ids);
Tensor index_select(const Tensor& x, const CheckedIndices& ids);

}  // namespace sp
