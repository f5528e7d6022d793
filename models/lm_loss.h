// Language-model losses computed only where labels are not -100: the LM head runs on the
// selected rows alone (fused with the loss, see linear_cross_entropy), never on all positions.
#pragma once

#include "engine/ops/cross_entropy.h"
#include "engine/tensor.h"
#include "models/causal_lm.h"
#include "models/seq2seq_lm.h"

namespace sp {

/// Row indices into the flattened [B * T] positions whose label counts, and the matching
/// targets. Shifted (causal LM): position t predicts labels[t + 1]. Unshifted (seq2seq): position
/// t predicts labels[t]. Shared by the losses and the accuracy metrics. Both are host tensors:
/// the ops that take them check them there and upload them without waiting for the device (pass
/// host labels too: device labels are copied back to be read).
struct SelectedTargets {
  Tensor rows;     ///< I64 [n], on the host
  Tensor targets;  ///< I64 [n], on the host
};
SelectedTargets select_targets(const Tensor& labels, bool shifted, int64_t ignore_index = -100);

/// Causal LM loss: hidden [B, T, d] (final states), labels [B, T] with -100 ignored; mean over
/// counted targets (transformers' ForCausalLMLoss).
CrossEntropyResult causal_lm_loss(const CausalLM& model, const Tensor& hidden,
                                  const Tensor& labels);

/// Seq2seq LM loss: decoder states [B, T, d] vs unshifted labels [B, T], as
/// T5ForConditionalGeneration computes it (the model's output scaling included).
CrossEntropyResult seq2seq_lm_loss(const Seq2SeqLM& model, const Tensor& decoder_hidden,
                                   const Tensor& labels);

}  // namespace sp
