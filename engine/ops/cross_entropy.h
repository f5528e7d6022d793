// cross_entropy: mean token loss over rows whose target is not ignore_index (-100), fused with
// log-softmax, as torch.nn.functional.cross_entropy computes it. Differentiable in the logits.
#pragma once

#include <cstdint>

#include "engine/ops/checked_indices.h"
#include "engine/tensor.h"

namespace sp {

struct CrossEntropyResult {
  /// [] mean over counted rows (0 when none, like HF's 0-target case is NaN)
  Tensor loss;
  int64_t counted_rows;  ///< rows whose target != ignore_index
};

/// logits [N, V] (or [..., V]), targets [N] (or [...]) I64/I32, on the host (checked there and
/// uploaded without a wait) or on the logits' device (checked through a copy back). The loss is
/// reduced on the logits' device: reading it is the only wait for the device.
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets,
                                 int64_t ignore_index = -100);

/// The same loss for logits = hidden @ weight^T (weight [V, d]: nn.Linear / tied-embedding
/// layout), computed in row chunks so the [n, V] logits never exist at once. When hidden needs a
/// gradient it is computed during the forward from the chunk's dlogits (written in place of its
/// logits) and the backward only scales it, so the LM head costs no extra GEMM and no stored
/// logits. A trainable weight gets its gradient in backward by recomputing each chunk.
CrossEntropyResult linear_cross_entropy(const Tensor& hidden, const Tensor& weight,
                                        const Tensor& targets, int64_t ignore_index = -100);

/// A loss's targets kept on a device for a captured step: checked on the host (ignore_index
/// allowed), with 1 / (how many are not ignored) as an F32 [] device scalar the mean multiplies by
/// (0 when none). refill() writes the next batch's targets and count in place, outside the capture.
class LossTargets {
 public:
  LossTargets(const Tensor& targets, int64_t vocab, int64_t ignore_index, Device device);
  /// Returns how many of the new targets are not ignored.
  int64_t refill(const Tensor& targets);
  const CheckedIndices& targets() const { return targets_; }
  const Tensor& inverse_count() const { return inverse_count_; }
  int64_t counted() const { return targets_.counted(); }
  int64_t ignore_index() const { return ignore_index_; }

 private:
  CheckedIndices targets_;
  Tensor inverse_count_;
  int64_t ignore_index_;
};

/// linear_cross_entropy on LossTargets: no host round trip, so it can run inside a capture. The
/// head weight must be frozen. The mean is sum * inverse_count rather than sum / count, and the
/// hidden states' gradient is scaled by inverse_count after the head's GEMM instead of before, so
/// results differ from the host-target loss by roundings. counted_rows is the count the targets
/// hold at the call; replays of a captured call read each refill's count on the device.
CrossEntropyResult linear_cross_entropy(const Tensor& hidden, const Tensor& weight,
                                        const LossTargets& targets);

}  // namespace sp
