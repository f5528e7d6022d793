// PromptEmbedding: the shared prompt table.
#include "peft/prompt_embedding.h"

#include "engine/error.h"
#include "engine/ops/embedding.h"
#include "peft/state_checks.h"

namespace sp {

PromptEmbedding::PromptEmbedding(PromptTuningConfig config, Tensor weight)
    : PromptAdapter(std::move(config)), weight_(std::move(weight)) {
  SP_ASSERT(weight_.requires_grad() && weight_.dtype() == DType::F32);
}

Tensor PromptEmbedding::prompts(int64_t batch, const Tensor& /*task_ids*/) const {
  // Every row gets the same rows; expand shares memory and its backward sums over the batch.
  return weight_.unsqueeze(0).expand({batch, weight_.size(0), weight_.size(1)});
}

std::vector<std::pair<std::string, Tensor>> PromptEmbedding::named_parameters() const {
  return {{"prompt_embeddings", weight_}};
}

void PromptEmbedding::load_state(const std::map<std::string, Tensor>& tensors,
                                 const std::string& source) {
  copy_saved_tensor(tensors, "prompt_embeddings", weight_, source);
}

Tensor PromptEmbedding::forward(const Tensor& indices) const { return embedding(weight_, indices); }

}  // namespace sp
