// Text generation for encoder-decoder models: the encoder runs once over right-padded rows, the
// decoder one position per step from a KV cache with cross-attention keys/values computed once.
// Greedy or sampled (GenerationConfig from models/generate.h), per-row soft prompts.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "models/generate.h"
#include "models/seq2seq_lm.h"

namespace sp {

/// One row of an encoder-decoder generation batch.
struct Seq2SeqGenerationRequest {
  std::vector<int64_t> input_ids;  ///< encoder tokens (T5's tokenizer appends EOS); may be empty
                                   ///< when an encoder prefix is given
  /// Optional [N, d] soft prompt placed before input_ids on the encoder side (PEFT's prompt
  /// tuning). Its positions are attended like tokens (mask ones).
  Tensor encoder_prefix_embeds;
  /// Optional [M, d] placed before the decoder start token. PEFT's generate never does this (a
  /// multitask prompt with two submodules is trained with decoder prompts but generated without
  /// them); callers pass it only when they opt in.
  Tensor decoder_prefix_embeds;
};

/// Returns the new tokens of each row: what follows the decoder start token, the EOS included
/// when generated. Rows stop at config.eos_token_id or after max_new_tokens. A row's output does
/// not depend on the other rows of the batch under greedy decoding (encoder rows are right
/// padded and masked; decoder prefixes of different lengths are left padded and masked, which
/// leaves T5's relative positions unchanged).
std::vector<std::vector<int64_t>> generate_seq2seq(
    Seq2SeqLM& model, const std::vector<Seq2SeqGenerationRequest>& requests,
    const GenerationConfig& config);

}  // namespace sp
