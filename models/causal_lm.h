// CausalLM: what the PEFT layer and the generator need from a decoder-only model (GPT-2):
// the frozen word embeddings, a forward from input embeddings, and the LM head.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/ops/checked_indices.h"
#include "engine/tensor.h"
#include "models/kv_cache.h"

namespace sp {

/// What the PEFT layer needs to know about a base model (sizes and special token ids).
struct ModelInfo {
  std::string model_type;  ///< "gpt2", "t5"
  int64_t token_dim = 0;   ///< hidden size (n_embd / d_model)
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t vocab_size = 0;
  int64_t max_positions = 0;  ///< 0 when unbounded (T5's relative positions)
  /// The widest attention window of any layer when layers attend to a sliding window of past
  /// positions (Mistral); 0 when every layer sees the whole past.
  int64_t sliding_window = 0;
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;
  std::optional<int64_t> bos_token_id;
  int64_t parameter_count = 0;  ///< frozen parameters, as PEFT counts them
};

/// How a forward runs: eval (no dropout) or train (dropout with a seed), and whether blocks
/// recompute their activations in backward instead of storing them.
struct ForwardOptions {
  bool train = false;
  uint64_t dropout_seed = 0;
  bool checkpoint_activations = false;
  /// The caller's promise that the first `shared_prefix` positions of every row are the same
  /// inputs (embeddings, default positions, unmasked): one soft prompt for the whole batch. A
  /// causal model without dropout then computes those positions once, for row 0, and lets
  /// every row attend to their keys and values (the result is the same; the work is 1/B).
  int64_t shared_prefix = 0;
};

/// A frozen decoder-only language model (GPT-2). load_causal_lm() returns one for a Hugging
/// Face directory; PeftModel wraps it to prepend soft prompts.
class CausalLM {
 public:
  virtual ~CausalLM() = default;
  virtual const ModelInfo& info() const = 0;
  virtual Device device() const = 0;
  /// The frozen [V, d] token embedding table (prompt inits copy rows of it).
  virtual Tensor word_embeddings() const = 0;
  /// Token embeddings only (no positions): the inputs_embeds transformers would build.
  Tensor embed(const Tensor& ids) const;
  /// The same from ids checked and kept on the device: no host round trip, so a captured step
  /// can look them up (refilled between replays).
  Tensor embed(const CheckedIndices& ids) const;

  /// Final hidden states [B, T, d] (after the last layer norm) for inputs_embeds [B, T, d].
  /// attention_mask: optional F32 [B, past + T] (1 keep, 0 pad); position_ids: optional I64
  /// [B, T], default arange(past, past + T) like transformers; cache: optional, appended to.
  virtual Tensor hidden_states(const Tensor& inputs_embeds, const Tensor& attention_mask,
                               const Tensor& position_ids, KvCache* cache,
                               const ForwardOptions& options) = 0;
  /// Logits [..., V] for hidden states [..., d] (compute them only where needed).
  virtual Tensor logits(const Tensor& hidden) const = 0;
  /// The LM head as a [V, d] matrix: logits = hidden @ output_embeddings()^T.
  virtual Tensor output_embeddings() const = 0;
  /// A key/value cache for `batch` rows of up to `capacity` positions.
  virtual KvCache make_cache(int64_t batch, int64_t capacity) const = 0;
};

}  // namespace sp
