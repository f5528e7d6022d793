// CausalLM helpers shared by every decoder-only model.
#include "models/causal_lm.h"

#include "engine/ops/embedding.h"

namespace sp {

Tensor CausalLM::embed(const Tensor& ids) const {
  return embedding(word_embeddings(), ids);
}

}  // namespace sp
