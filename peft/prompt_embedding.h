// PromptEmbedding (PEFT's class of the same name): a [N * S, d] fp32 table of soft-prompt
// vectors, shared by every row of the batch.
#pragma once

#include "peft/prompt_adapter.h"

namespace sp {

/// The adapter of PROMPT_TUNING configs.
class PromptEmbedding final : public PromptAdapter {
 public:
  /// `weight` becomes the trainable table ([N * S, d], F32).
  PromptEmbedding(PromptTuningConfig config, Tensor weight);

  Tensor prompts(int64_t batch, const Tensor& task_ids) const override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() const override;
  void load_state(const std::map<std::string, Tensor>& tensors, const std::string& source) override;
  /// forward(indices) as in PEFT: rows of the table, [*indices.shape, d].
  Tensor forward(const Tensor& indices) const;
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_;
};

}  // namespace sp
