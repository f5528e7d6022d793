// PeftModel: a frozen base model (causal LM or seq2seq) with named prompt adapters (PEFT's
// PeftModel for prompt learning): prompt injection, masks, -100 label prefixes, task ids, adapter
// switching, per-row adapters in one batch, generation with prompts, PEFT's parameter summary.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "models/causal_lm.h"
#include "models/generate.h"
#include "models/seq2seq_lm.h"
#include "peft/prompt_adapter.h"

namespace sp {

class Tokenizer;

/// The inputs of a prompted forward, as PEFT's PeftModel.forward takes them.
struct PeftBatch {
  Tensor input_ids;       ///< I64 [B, T] (seq2seq: the encoder input)
  Tensor attention_mask;  ///< optional [B, T]: 1 real token, 0 padding
  Tensor labels;          ///< optional I64: causal [B, T]; seq2seq the targets [B, L]; -100 ignored
  Tensor task_ids;        ///< I64 [B]; required by multitask adapters
  /// Optional adapter name per row: rows may use different adapters (and prompt lengths).
  std::vector<std::string> row_adapters;
};

/// What a prompted forward returns.
struct PeftOutput {
  Tensor loss;                  ///< [] when labels were given
  int64_t counted_targets = 0;  ///< labels that entered the loss
  Tensor logits;                ///< when requested: causal [B, N + T, V]; seq2seq decoder logits
  Tensor hidden;                ///< final (decoder) hidden states the logits come from
  Tensor labels;                ///< labels with any -100 prompt prefix, as the base model saw them
};

/// A frozen base model plus named soft-prompt adapters: PEFT's PeftModel for prompt learning.
/// Training a prompt is forward() -> loss.backward() -> AdamW over adapter().parameters();
/// the base model's weights never receive gradients.
class PeftModel {
 public:
  /// `tokenizer` serves TEXT inits whose tokenizer_name_or_path is the base model itself; it
  /// may be null (the config's directory is loaded then).
  explicit PeftModel(std::shared_ptr<CausalLM> base,
                     std::shared_ptr<const Tokenizer> tokenizer = nullptr);
  explicit PeftModel(std::shared_ptr<Seq2SeqLM> base,
                     std::shared_ptr<const Tokenizer> tokenizer = nullptr);

  /// get_peft_model / add_adapter: validates and fills the config from the model, initialises
  /// the prompt, and makes it active if it is the first adapter.
  PromptAdapter& add_adapter(const std::string& name, PromptTuningConfig config, uint64_t seed = 0);
  /// from_pretrained / load_adapter: a PEFT adapter directory; `trainable` keeps it trainable
  /// (PEFT's is_trainable) instead of inference mode.
  PromptAdapter& load_adapter(const std::string& dir, const std::string& name,
                              bool trainable = false);
  /// Makes `name` the active adapter (used when a batch names none per row).
  void set_adapter(const std::string& name);
  /// Removes an adapter; another one becomes active if it was the active one.
  void delete_adapter(const std::string& name);
  /// Adapter names, sorted.
  std::vector<std::string> list_adapters() const;
  bool has_adapter(const std::string& name) const { return adapters_.count(name) != 0; }
  /// The active adapter's name; throws when there is none.
  const std::string& active_adapter() const;
  /// The adapter called `name` (throws when there is none), or the active one.
  PromptAdapter& adapter(const std::string& name) const;
  PromptAdapter& adapter() const { return adapter(active_adapter()); }
  /// Writes the adapter (default: the active one) as a PEFT directory.
  void save_pretrained(const std::string& dir, const std::string& name = "") const;

  /// The prompted forward. Logits are computed only when asked; the loss only on rows whose
  /// label counts. Causal LM: [prompt][text]. Seq2seq: prompt rows [0, N) before the encoder
  /// input; multitask adapters with two submodules also put rows [N, 2N) before the decoder input
  /// (and N x -100 before the labels), as PEFT trains them. use_adapter = false runs the bare
  /// base model (the untuned baseline).
  PeftOutput forward(const PeftBatch& batch, const ForwardOptions& options = {},
                     bool return_logits = false, bool use_adapter = true) const;

  /// Generation with prompts: each row gets its adapter's prompt (row_adapters, else the active
  /// one) and task id; returned ids exclude virtual tokens and the prompt ids (seq2seq: the new
  /// decoder tokens). use_adapter = false generates with the bare base model.
  std::vector<std::vector<int64_t>> generate(const std::vector<std::vector<int64_t>>& prompt_ids,
                                             const GenerationConfig& config,
                                             const std::vector<std::string>& row_adapters = {},
                                             const std::vector<int64_t>& task_ids = {},
                                             bool use_adapter = true) const;
  /// Beyond PEFT (off by default, for parity): seq2seq multitask adapters with two submodules
  /// also get their decoder prompt at generation, so they generate the way they were trained.
  void set_decoder_prompt_in_generate(bool inject) { decoder_prompt_in_generate_ = inject; }

  /// Logits for (decoder) hidden states, with the base model's output scaling.
  Tensor logits(const Tensor& hidden) const;
  /// Whether labels[t + 1] (causal) or labels[t] (seq2seq) is predicted at position t.
  bool labels_are_shifted() const { return causal_ != nullptr; }

  /// "trainable params: X || all params: Y || trainable%: Z" as PEFT prints it.
  std::string trainable_parameters_summary() const;
  /// PEFT's counts: the active adapter's prompt parameters; the base model's plus all adapters'.
  int64_t trainable_parameter_count() const;
  int64_t all_parameter_count() const;

  bool is_seq2seq() const { return seq2seq_ != nullptr; }
  TaskType task_type() const { return is_seq2seq() ? TaskType::kSeq2SeqLm : TaskType::kCausalLm; }
  const ModelInfo& base_info() const;
  Device device() const;
  Tensor word_embeddings() const;
  CausalLM& causal_base() const;    ///< throws for a seq2seq base
  Seq2SeqLM& seq2seq_base() const;  ///< throws for a causal base
  const std::shared_ptr<const Tokenizer>& tokenizer() const { return tokenizer_; }

 private:
  PeftOutput forward_causal(const PeftBatch& batch, const ForwardOptions& options,
                            bool return_logits, bool use_adapter) const;
  PeftOutput forward_seq2seq(const PeftBatch& batch, const ForwardOptions& options,
                             bool return_logits, bool use_adapter) const;
  void prepare_config(PromptTuningConfig& config, const std::string& where) const;

  std::shared_ptr<CausalLM> causal_;
  std::shared_ptr<Seq2SeqLM> seq2seq_;
  bool decoder_prompt_in_generate_ = false;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::map<std::string, std::unique_ptr<PromptAdapter>> adapters_;
  std::string active_;
};

}  // namespace sp
