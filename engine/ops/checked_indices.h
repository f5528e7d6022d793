// CheckedIndices: indices checked on the host and kept on a device, where the gathers and the
// loss read them without copying them back to check: the fixed inputs of a captured step.
#pragma once

#include <cstdint>
#include <optional>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace sp {

/// Indices in [0, bound), or equal to an `ignored` value when one is given (a loss's ignore
/// index), stored as I64 on a device. Checked on the host once when made and at each refill(), so
/// the ops that take them (embedding, index_select, linear_cross_entropy) need no host round trip
/// and can run inside a capture (Backend::capture). refill() writes the next batch's indices into
/// the same device memory, which a captured step reads at its next replay. Indices made distinct
/// (and without an ignored value) also keep their scatter grouping (RowGroups), whose shape then
/// never changes, so index_select on them has a backward; they must stay distinct at refills.
class CheckedIndices {
 public:
  CheckedIndices() = default;
  /// `what` names the indices in errors ("input ids"). indices: I32/I64 on the host.
  CheckedIndices(const char* what, const Tensor& indices, int64_t bound, Device device,
                 std::optional<int64_t> ignored = std::nullopt);

  /// Checks `indices` (on the host, the shape made with) and copies them into place; not inside
  /// a capture. Returns how many are not the ignored value.
  int64_t refill(const Tensor& indices);

  const Tensor& on_device() const { return on_device_; }
  int64_t bound() const { return bound_; }
  std::optional<int64_t> ignored() const { return ignored_; }
  /// How many of the current indices are not the ignored value.
  int64_t counted() const { return counted_; }
  /// The scatter grouping of distinct indices (for a gather's backward); undefined otherwise.
  const RowGroups& groups() const { return groups_; }

 private:
  const char* what_ = "indices";
  Tensor on_device_;
  int64_t bound_ = 0;
  std::optional<int64_t> ignored_;
  int64_t counted_ = 0;
  RowGroups groups_;  // on_device_ is the front of their packed buffer when defined
};

}  // namespace sp
