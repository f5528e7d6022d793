// Text generation for causal LMs: greedy or sampled (temperature, top-k, top-p; seeded), batched
// prompts of different lengths, KV cache, optional soft-prompt embeddings prepended per row.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/tensor.h"
#include "models/causal_lm.h"

namespace sp {

/// Decoding settings, as in transformers' GenerationConfig (greedy unless do_sample).
struct GenerationConfig {
  int64_t max_new_tokens = 20;
  bool do_sample = false;
  float temperature = 1.0f;
  int64_t top_k = 0;   ///< 0 = off
  float top_p = 1.0f;  ///< 1 = off
  uint64_t seed = 0;
  std::optional<int64_t> eos_token_id;  ///< stop a row when generated; nullopt = never stop early
};

/// One row of a generation batch.
struct GenerationRequest {
  std::vector<int64_t> prompt_ids;  ///< may be empty when a prefix is given
  Tensor prefix_embeds;             ///< optional [N, d] soft prompt placed before the prompt ids
};

/// Returns the new tokens of each row (the EOS included when generated). Rows are left padded
/// internally with positions counted from each row's first real position, so a row's output is
/// the same whether it runs alone or in a batch.
std::vector<std::vector<int64_t>> generate(CausalLM& model,
                                           const std::vector<GenerationRequest>& requests,
                                           const GenerationConfig& config);

/// Picks the next token from a row of logits: argmax (first maximum) or a seeded sample.
int64_t choose_next_token(const float* logits, int64_t vocab, const GenerationConfig& config,
                          class Generator& rng);

}  // namespace sp
