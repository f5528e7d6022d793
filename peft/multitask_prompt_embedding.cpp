// MultitaskPromptEmbedding: P * (cols[task] @ rows[task]) per batch row.
#include "peft/multitask_prompt_embedding.h"

#include "engine/error.h"
#include "engine/ops/ops.h"
#include "peft/state_checks.h"

namespace sp {

MultitaskPromptEmbedding::MultitaskPromptEmbedding(PromptTuningConfig config, Tensor shared,
                                                   Tensor task_cols, Tensor task_rows)
    : PromptAdapter(std::move(config)),
      shared_(std::move(shared)),
      task_cols_(std::move(task_cols)),
      task_rows_(std::move(task_rows)) {}

Tensor MultitaskPromptEmbedding::prompts(int64_t batch, const Tensor& task_ids) const {
  SP_CHECK(task_ids.defined(),
           "task_ids cannot be None: multitask prompt tuning needs a task id per row");
  SP_CHECK(task_ids.dim() == 1 && task_ids.size(0) == batch, "task_ids must be [", batch,
           "] (one per batch row), got ", task_ids.describe());
  for (int64_t t : task_ids.to_ints())
    SP_CHECK(t >= 0 && t < num_tasks(), "task id ", t, " is out of range: the adapter has ",
             num_tasks(), " tasks");
  Tensor cols = index_select(task_cols_, task_ids);  // [B, N*S, r]
  Tensor rows = index_select(task_rows_, task_ids);  // [B, r, d]
  Tensor shared = shared_.unsqueeze(0).expand({batch, shared_.size(0), shared_.size(1)});
  return mul(shared, matmul(cols, rows));
}

std::vector<std::pair<std::string, Tensor>> MultitaskPromptEmbedding::named_parameters() const {
  return {{"prompt_embeddings", shared_},
          {"prefix_task_cols", task_cols_},
          {"prefix_task_rows", task_rows_}};
}

void MultitaskPromptEmbedding::load_state(const std::map<std::string, Tensor>& tensors,
                                          const std::string& source) {
  copy_saved_tensor(tensors, "prompt_embeddings", shared_, source);
  copy_saved_tensor(tensors, "prefix_task_cols", task_cols_, source);
  copy_saved_tensor(tensors, "prefix_task_rows", task_rows_, source);
}

}  // namespace sp
