// PromptTuningConfig and MultitaskPromptTuningConfig: every field of PEFT's configs (with
// PeftConfig / PromptLearningConfig), PEFT's defaults and validation, and adapter_config.json IO
// byte-compatible with PEFT's save_pretrained.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace sp {

struct ModelInfo;

/// Sanity bounds on sizes read from configs and flags, checked before anything is allocated.
/// Far above any real prompt-tuning setup (PEFT papers use 1-1000 virtual tokens, MPT tens of
/// tasks, ranks below 100), far below sizes whose products could overflow.
/// The CLI's flags share these bounds (cli/validate.h). 2^16 virtual tokens mainly guards T5,
/// whose relative positions set no context limit of their own.
inline constexpr int64_t kMaxVirtualTokens = int64_t(1) << 16;
inline constexpr int64_t kMaxTasks = int64_t(1) << 16;
inline constexpr int64_t kMaxRanks = int64_t(1) << 12;
/// The most trainable elements an adapter may have (4 GiB of fp32, 12 GiB with AdamW's moments).
inline constexpr int64_t kMaxAdapterElements = int64_t(1) << 30;

/// PEFT's task_type: CAUSAL_LM (GPT-2) or SEQ_2_SEQ_LM (T5).
enum class TaskType { kCausalLm, kSeq2SeqLm };
/// PEFT's peft_type: PROMPT_TUNING or MULTITASK_PROMPT_TUNING.
enum class PeftType { kPromptTuning, kMultitaskPromptTuning };
/// PEFT's PromptTuningInit (RANDOM, TEXT, SAMPLE_VOCAB) and MultitaskPromptTuningInit (RANDOM,
/// TEXT, AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED).
enum class PromptInit {
  kRandom,
  kText,
  kSampleVocab,
  kAverageSourceTasks,
  kExactSourceTask,
  kOnlySourceShared,
};

const char* task_type_name(TaskType type);  ///< "CAUSAL_LM"
const char* peft_type_name(PeftType type);  ///< "PROMPT_TUNING"
/// "RANDOM", "TEXT", "EXACT_SOURCE_TASK", ...
const char* prompt_init_name(PromptInit init);
/// Parse PEFT's strings; errors list the accepted values (and say when PEFT accepts a value
/// that softprompt does not support, e.g. task type SEQ_CLS).
TaskType parse_task_type(const std::string& text);
PeftType parse_peft_type(const std::string& text);
PromptInit parse_prompt_init(const std::string& text, PeftType for_type);

/// The PEFT version whose file format softprompt writes when a config did not come from a file.
inline constexpr const char* kPeftFormatVersion = "0.21.2";

/// PEFT's PromptTuningConfig, field for field (optional = PEFT's None). Set task_type and
/// num_virtual_tokens at least; PeftModel::add_adapter() validates it and fills the
/// model-dependent fields. With peft_type MULTITASK_PROMPT_TUNING (or as
/// MultitaskPromptTuningConfig) the multitask fields below apply too.
struct PromptTuningConfig {
  // ---- PeftConfig ----
  std::optional<TaskType> task_type;
  PeftType peft_type = PeftType::kPromptTuning;
  nlohmann::json auto_mapping;  ///< null or an object, kept as given
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> revision;
  bool inference_mode = false;
  std::optional<std::string> peft_version;
  // ---- PromptLearningConfig ----
  std::optional<int64_t> num_virtual_tokens;  ///< required: a positive integer
  std::optional<int64_t> token_dim;           ///< null: filled from the model
  std::optional<int64_t> num_transformer_submodules;
  std::optional<int64_t> num_attention_heads;
  std::optional<int64_t> num_layers;
  nlohmann::json modules_to_save;  ///< must be null: prompt tuning trains no base modules
  // ---- PromptTuningConfig ----
  PromptInit prompt_tuning_init = PromptInit::kRandom;
  std::optional<std::string> prompt_tuning_init_text;
  std::optional<std::string> tokenizer_name_or_path;  ///< a local directory here
  nlohmann::json tokenizer_kwargs;                    ///< null or an object
  // ---- MultitaskPromptTuningConfig (used when peft_type is MULTITASK_PROMPT_TUNING) ----
  std::optional<std::string> prompt_tuning_init_state_dict_path;
  std::optional<int64_t> prompt_tuning_init_task = 0;
  std::optional<int64_t> num_ranks = 1;
  std::optional<int64_t> num_tasks = 1;

  bool is_multitask() const { return peft_type == PeftType::kMultitaskPromptTuning; }
  /// Trainable elements on a model of width `token_dim`: the prompt rows, plus MPT's
  /// prefix_task_cols and prefix_task_rows. Sizes within the k-Max bounds cannot overflow.
  int64_t trainable_elements(int64_t token_dim) const;
  /// Rows of the prompt table: num_virtual_tokens * num_transformer_submodules.
  int64_t total_virtual_tokens() const;

  /// PEFT's ValueErrors, with the same conditions, as sp::Error.
  void validate() const;
  /// token_dim, num_layers, num_attention_heads, num_transformer_submodules when null;
  /// errors if a given value contradicts the model.
  void fill_from_model(const ModelInfo& info);

  /// All fields (nulls included) as PEFT's to_dict gives them.
  nlohmann::json to_json() const;
  /// PEFT's adapter_config.json text: sorted keys, indent 2, inference_mode true.
  std::string to_adapter_config_text() const;
  /// From parsed JSON (an adapter_config.json or a user config file). Unknown keys are warned
  /// about and ignored, as PEFT does; wrong types are errors naming `source` and the field.
  static PromptTuningConfig from_json(const nlohmann::json& json, const std::string& source);
  /// from_json() of a file (adapter_config.json or a user config).
  static PromptTuningConfig load(const std::string& path);
};

/// PEFT's class names: the same fields, with peft_type preset.
struct MultitaskPromptTuningConfig : PromptTuningConfig {
  MultitaskPromptTuningConfig() { peft_type = PeftType::kMultitaskPromptTuning; }
};

}  // namespace sp
