// Language-model losses computed only where labels are not -100: the LM head runs on the
// selected rows alone, as a prompt-tuning step needs (transformers computes all logits first).
#pragma once

#include "engine/ops/cross_entropy.h"
#include "engine/tensor.h"
#include "models/causal_lm.h"

namespace sp {

// Causal LM loss: hidden [B, T, d] (final states), labels [B, T] with -100 ignored; position t
// predicts labels[t + 1]; mean over counted targets (transformers' ForCausalLMLoss).
CrossEntropyResult causal_lm_loss(const CausalLM& model, const Tensor& hidden,
                                  const Tensor& labels);

// Row indices into the flattened [B * T] positions whose next-token label counts, and the
// matching targets. Shared by losses and accuracy metrics.
struct SelectedTargets {
  Tensor rows;     // I64 [n]
  Tensor targets;  // I64 [n]
};
SelectedTargets shifted_targets(const Tensor& labels, int64_t ignore_index = -100);

}  // namespace sp
