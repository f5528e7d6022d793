// PromptAdapter: one trainable soft prompt (a PromptEmbedding or a MultitaskPromptEmbedding)
// with its config, parameters, and the named tensors PEFT stores in adapter_model.safetensors.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "peft/config.h"

namespace sp {

class Tokenizer;

/// One trainable soft prompt. PeftModel owns its adapters; train one by handing parameters()
/// to an optimizer.
class PromptAdapter {
 public:
  explicit PromptAdapter(PromptTuningConfig config) : config_(std::move(config)) {}
  virtual ~PromptAdapter() = default;

  const PromptTuningConfig& config() const { return config_; }
  PromptTuningConfig& mutable_config() { return config_; }
  int64_t total_virtual_tokens() const { return config_.total_virtual_tokens(); }

  /// The prompt rows of each batch row, [B, N * S, d]. task_ids (I64 [B]) select the task of
  /// each row for multitask adapters; plain prompt tuning ignores them.
  virtual Tensor prompts(int64_t batch, const Tensor& task_ids) const = 0;
  /// Trainable tensors, named as PEFT saves them ("prompt_embeddings", "prefix_task_cols", ...).
  virtual std::vector<std::pair<std::string, Tensor>> named_parameters() const = 0;
  /// Replaces the parameters with saved ones; errors name `source`, the key and both shapes.
  virtual void load_state(const std::map<std::string, Tensor>& tensors,
                          const std::string& source) = 0;

  /// The trainable tensors (those of named_parameters()), for an optimizer.
  std::vector<Tensor> parameters() const;
  int64_t parameter_count() const;

 protected:
  PromptTuningConfig config_;
};

/// Creates the adapter for a config already filled from the model (token_dim etc.). Unless the
/// config is in inference mode (loading a saved adapter), the prompt is initialised as the config
/// says: RANDOM (N(0,1) from `seed`), SAMPLE_VOCAB / TEXT (rows of `word_embeddings`), or the
/// multitask source inits. `tokenizer` is used for TEXT; when null, the config's
/// tokenizer_name_or_path directory is loaded.
std::unique_ptr<PromptAdapter> make_prompt_adapter(const PromptTuningConfig& config,
                                                   const Tensor& word_embeddings,
                                                   const Tokenizer* tokenizer, uint64_t seed);

/// The token ids PEFT's TEXT init copies: the tokenized init text, truncated or repeated to
/// `rows` entries (T5's tokenizer includes its EOS).
std::vector<int64_t> text_init_ids(const PromptTuningConfig& config, const Tokenizer& tokenizer,
                                   int64_t rows);

}  // namespace sp
