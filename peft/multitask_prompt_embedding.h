// MultitaskPromptEmbedding (PEFT's MPT): prompt for task t = P * (cols[t] @ rows[t]), with a
// shared P [N * S, d] and per-task rank-r factors cols [tasks, N * S, r], rows [tasks, r, d].
#pragma once

#include "peft/prompt_adapter.h"

namespace sp {

/// The adapter of MULTITASK_PROMPT_TUNING configs.
class MultitaskPromptEmbedding final : public PromptAdapter {
 public:
  MultitaskPromptEmbedding(PromptTuningConfig config, Tensor shared, Tensor task_cols,
                           Tensor task_rows);

  /// task_ids is required ("task_ids cannot be None", as PEFT says) and range-checked.
  Tensor prompts(int64_t batch, const Tensor& task_ids) const override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() const override;
  /// Unlike PEFT, missing prefix_task_cols / prefix_task_rows are an error, not silently kept.
  void load_state(const std::map<std::string, Tensor>& tensors, const std::string& source) override;

  const Tensor& shared() const { return shared_; }
  const Tensor& task_cols() const { return task_cols_; }
  const Tensor& task_rows() const { return task_rows_; }
  int64_t num_tasks() const { return task_cols_.size(0); }

 private:
  Tensor shared_, task_cols_, task_rows_;
};

}  // namespace sp
