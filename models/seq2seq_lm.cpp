// Seq2SeqLM helpers shared by every encoder-decoder model: embedding lookup and label shifting.
#include "models/seq2seq_lm.h"

#include <vector>

#include "engine/error.h"
#include "engine/backend.h"
#include "engine/ops/embedding.h"

namespace sp {

Tensor Seq2SeqLM::embed(const Tensor& ids) const {
  // A bf16 table on the CPU gives F32 activations (see activation_dtype).
  const Tensor table = word_embeddings();
  return embedding(table, ids).to(activation_dtype(device(), table.dtype()));
}

Tensor Seq2SeqLM::shift_right(const Tensor& labels) const {
  SP_CHECK(labels.dim() == 2, "shift_right: labels must be [B, T], got ", labels.describe());
  const int64_t B = labels.size(0), T = labels.size(1);
  const int64_t start = decoder_start_token_id();
  const int64_t pad = info().pad_token_id.value_or(0);
  std::vector<int64_t> in = labels.to_ints(), out(in.size());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      int64_t id = t == 0 ? start : in[size_t(b * T + t - 1)];
      out[size_t(b * T + t)] = id == -100 ? pad : id;
    }
  }
  return Tensor::from_ints(out, {B, T}, DType::I64, labels.device());
}

}  // namespace sp
