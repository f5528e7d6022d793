// CausalLM helpers shared by every decoder-only model.
#include "models/causal_lm.h"

#include "engine/backend.h"
#include "engine/ops/embedding.h"

namespace sp {

Tensor CausalLM::embed(const Tensor& ids) const {
  // A bf16 table on the CPU gives F32 activations (see activation_dtype).
  const Tensor table = word_embeddings();
  return embedding(table, ids).to(activation_dtype(device(), table.dtype()));
}

Tensor CausalLM::embed(const CheckedIndices& ids) const {
  const Tensor table = word_embeddings();
  return embedding(table, ids).to(activation_dtype(device(), table.dtype()));
}

}  // namespace sp
