// Prompt-tuning configs: parsing, PEFT's validation, defaults from the model, JSON output.
#include "peft/config.h"

#include <set>

#include "engine/error.h"
#include "engine/input_file.h"
#include "engine/log.h"
#include "models/causal_lm.h"

namespace sp {

using json = nlohmann::json;

const char* task_type_name(TaskType type) {
  return type == TaskType::kCausalLm ? "CAUSAL_LM" : "SEQ_2_SEQ_LM";
}

const char* peft_type_name(PeftType type) {
  return type == PeftType::kPromptTuning ? "PROMPT_TUNING" : "MULTITASK_PROMPT_TUNING";
}

const char* prompt_init_name(PromptInit init) {
  switch (init) {
    case PromptInit::kRandom:
      return "RANDOM";
    case PromptInit::kText:
      return "TEXT";
    case PromptInit::kSampleVocab:
      return "SAMPLE_VOCAB";
    case PromptInit::kAverageSourceTasks:
      return "AVERAGE_SOURCE_TASKS";
    case PromptInit::kExactSourceTask:
      return "EXACT_SOURCE_TASK";
    case PromptInit::kOnlySourceShared:
      return "ONLY_SOURCE_SHARED";
  }
  return "?";
}

TaskType parse_task_type(const std::string& text) {
  if (text == "CAUSAL_LM") return TaskType::kCausalLm;
  if (text == "SEQ_2_SEQ_LM") return TaskType::kSeq2SeqLm;
  static const std::set<std::string> peft_only = {"SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS",
                                                  "FEATURE_EXTRACTION"};
  if (peft_only.count(text))
    fail(ErrorKind::kUnsupported, "task_type '", text,
         "' is a PEFT task type that softprompt does not support; supported: CAUSAL_LM, "
         "SEQ_2_SEQ_LM");
  fail(ErrorKind::kInvalidArgument, "Invalid task type: '", text,
       "'. Must be one of the following task types: SEQ_CLS, SEQ_2_SEQ_LM, CAUSAL_LM, "
       "TOKEN_CLS, QUESTION_ANS, FEATURE_EXTRACTION");
}

PeftType parse_peft_type(const std::string& text) {
  if (text == "PROMPT_TUNING") return PeftType::kPromptTuning;
  if (text == "MULTITASK_PROMPT_TUNING") return PeftType::kMultitaskPromptTuning;
  fail(ErrorKind::kUnsupported, "peft_type '", text,
       "' is not supported; softprompt handles PROMPT_TUNING and MULTITASK_PROMPT_TUNING");
}

PromptInit parse_prompt_init(const std::string& text, PeftType for_type) {
  const bool multitask = for_type == PeftType::kMultitaskPromptTuning;
  if (text == "RANDOM") return PromptInit::kRandom;
  if (text == "TEXT") return PromptInit::kText;
  if (!multitask && text == "SAMPLE_VOCAB") return PromptInit::kSampleVocab;
  if (multitask && text == "AVERAGE_SOURCE_TASKS") return PromptInit::kAverageSourceTasks;
  if (multitask && text == "EXACT_SOURCE_TASK") return PromptInit::kExactSourceTask;
  if (multitask && text == "ONLY_SOURCE_SHARED") return PromptInit::kOnlySourceShared;
  fail(ErrorKind::kInvalidArgument, "prompt_tuning_init '", text, "' is not valid for ",
       peft_type_name(for_type), "; expected one of ",
       multitask ? "TEXT, RANDOM, AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED"
                 : "TEXT, SAMPLE_VOCAB, RANDOM");
}

int64_t PromptTuningConfig::trainable_elements(int64_t dim) const {
  const int64_t rows = total_virtual_tokens();
  int64_t elements = rows * dim;
  if (is_multitask()) elements += num_tasks.value_or(1) * num_ranks.value_or(1) * (rows + dim);
  return elements;
}

int64_t PromptTuningConfig::total_virtual_tokens() const {
  SP_CHECK(num_virtual_tokens, "num_virtual_tokens is not set");
  return *num_virtual_tokens * num_transformer_submodules.value_or(1);
}

void PromptTuningConfig::validate() const {
  SP_CHECK(task_type.has_value(), "task_type is required: CAUSAL_LM (GPT-2) or SEQ_2_SEQ_LM (T5)");
  SP_CHECK(num_virtual_tokens.has_value(), "num_virtual_tokens is required");
  SP_CHECK(*num_virtual_tokens > 0, "num_virtual_tokens must be a positive integer, got ",
           *num_virtual_tokens);
  SP_CHECK(*num_virtual_tokens <= kMaxVirtualTokens, "num_virtual_tokens = ", *num_virtual_tokens,
           " is absurdly large (at most ", kMaxVirtualTokens, ")");
  const bool text = prompt_tuning_init == PromptInit::kText;
  SP_CHECK(!text || (tokenizer_name_or_path && !tokenizer_name_or_path->empty()),
           "When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be None.");
  SP_CHECK(!text || prompt_tuning_init_text.has_value(),
           "When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None.");
  SP_CHECK(text || tokenizer_kwargs.is_null() || tokenizer_kwargs.empty(),
           "tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'.");
  SP_CHECK(tokenizer_kwargs.is_null() || tokenizer_kwargs.is_object(),
           "tokenizer_kwargs must be an object (or null)");
  SP_CHECK(modules_to_save.is_null() || modules_to_save.empty(),
           "modules_to_save is not supported with prompt tuning: the base model stays frozen");
  for (auto [name, value] : {std::pair{"token_dim", token_dim},
                             {"num_transformer_submodules", num_transformer_submodules},
                             {"num_attention_heads", num_attention_heads},
                             {"num_layers", num_layers}})
    SP_CHECK(!value || *value > 0, name, " must be a positive integer, got ", *value);
  SP_CHECK(!num_transformer_submodules || *num_transformer_submodules <= 2,
           "num_transformer_submodules must be 1 or 2, got ", *num_transformer_submodules);
  if (is_multitask()) {
    SP_CHECK(prompt_tuning_init != PromptInit::kSampleVocab,
             "prompt_tuning_init SAMPLE_VOCAB is not available for multitask prompt tuning");
    SP_CHECK(num_ranks && *num_ranks > 0, "num_ranks must be a positive integer");
    SP_CHECK(num_tasks && *num_tasks > 0, "num_tasks must be a positive integer");
    SP_CHECK(*num_ranks <= kMaxRanks, "num_ranks = ", *num_ranks, " is absurdly large (at most ",
             kMaxRanks, ")");
    SP_CHECK(*num_tasks <= kMaxTasks, "num_tasks = ", *num_tasks, " is absurdly large (at most ",
             kMaxTasks, ")");
    const bool from_source = prompt_tuning_init == PromptInit::kAverageSourceTasks ||
                             prompt_tuning_init == PromptInit::kExactSourceTask ||
                             prompt_tuning_init == PromptInit::kOnlySourceShared;
    SP_CHECK(!from_source || prompt_tuning_init_state_dict_path,
             "prompt_tuning_init_state_dict_path needs to be specified with ",
             prompt_init_name(prompt_tuning_init), " init method");
    SP_CHECK(prompt_tuning_init != PromptInit::kExactSourceTask ||
                 (prompt_tuning_init_task && *prompt_tuning_init_task >= 0),
             "prompt_tuning_init_task must be a non-negative task index for EXACT_SOURCE_TASK");
  } else {
    SP_CHECK(prompt_tuning_init != PromptInit::kAverageSourceTasks &&
                 prompt_tuning_init != PromptInit::kExactSourceTask &&
                 prompt_tuning_init != PromptInit::kOnlySourceShared,
             "prompt_tuning_init ", prompt_init_name(prompt_tuning_init),
             " needs peft_type MULTITASK_PROMPT_TUNING");
  }
}

void PromptTuningConfig::fill_from_model(const ModelInfo& info) {
  auto fill = [](std::optional<int64_t>& field, int64_t value, const char* name,
                 const char* model_field) {
    if (!field) {
      field = value;
      return;
    }
    SP_CHECK(*field == value, "adapter ", name, " = ", *field, " does not match the model's ",
             model_field, " = ", value);
  };
  fill(token_dim, info.token_dim, "token_dim", "hidden size");
  fill(num_layers, info.num_layers, "num_layers", "number of layers");
  fill(num_attention_heads, info.num_heads, "num_attention_heads", "number of heads");
  if (!num_transformer_submodules)
    num_transformer_submodules = task_type == TaskType::kSeq2SeqLm ? 2 : 1;
  SP_CHECK(task_type != TaskType::kCausalLm || *num_transformer_submodules == 1,
           "num_transformer_submodules must be 1 for CAUSAL_LM, got ", *num_transformer_submodules);
  // Checked here, before the tables are allocated: validate() bounded each factor, so none of
  // these products overflows, but together they can still ask for terabytes.
  const int64_t rows = total_virtual_tokens();
  if (task_type == TaskType::kCausalLm && info.max_positions > 0)
    SP_CHECK(rows < info.max_positions, "num_virtual_tokens = ", rows,
             " leaves no room for text in the model's context of ", info.max_positions,
             " positions (n_positions)");
  const int64_t elements = trainable_elements(*token_dim);
  SP_CHECK(
      elements <= kMaxAdapterElements, "the adapter would have ", elements,
      " trainable parameters (num_virtual_tokens = ", *num_virtual_tokens,
      is_multitask() ? str_cat(", num_tasks = ", *num_tasks, ", num_ranks = ", *num_ranks) : "",
      ", token_dim = ", *token_dim, "), more than the limit of ", kMaxAdapterElements);
}

namespace {

json optional_value(const std::optional<int64_t>& v) {
  return v ? json(*v) : json(nullptr);
}
json optional_value(const std::optional<std::string>& v) {
  return v ? json(*v) : json(nullptr);
}

}  // namespace

json PromptTuningConfig::to_json() const {
  json j = json::object();
  j["task_type"] = task_type ? json(task_type_name(*task_type)) : json(nullptr);
  j["peft_type"] = peft_type_name(peft_type);
  j["auto_mapping"] = auto_mapping;
  j["base_model_name_or_path"] = optional_value(base_model_name_or_path);
  j["revision"] = optional_value(revision);
  j["inference_mode"] = inference_mode;
  j["peft_version"] = peft_version ? json(*peft_version) : json(kPeftFormatVersion);
  j["num_virtual_tokens"] = optional_value(num_virtual_tokens);
  j["token_dim"] = optional_value(token_dim);
  j["num_transformer_submodules"] = optional_value(num_transformer_submodules);
  j["num_attention_heads"] = optional_value(num_attention_heads);
  j["num_layers"] = optional_value(num_layers);
  j["modules_to_save"] = modules_to_save;
  j["prompt_tuning_init"] = prompt_init_name(prompt_tuning_init);
  j["prompt_tuning_init_text"] = optional_value(prompt_tuning_init_text);
  j["tokenizer_name_or_path"] = optional_value(tokenizer_name_or_path);
  j["tokenizer_kwargs"] = tokenizer_kwargs;
  if (is_multitask()) {
    j["prompt_tuning_init_state_dict_path"] = optional_value(prompt_tuning_init_state_dict_path);
    j["prompt_tuning_init_task"] = optional_value(prompt_tuning_init_task);
    j["num_ranks"] = optional_value(num_ranks);
    j["num_tasks"] = optional_value(num_tasks);
  }
  return j;
}

std::string PromptTuningConfig::to_adapter_config_text() const {
  json j = to_json();
  j["inference_mode"] = true;  // PEFT's save_pretrained sets it
  // nlohmann objects iterate in sorted key order and escape non-ASCII like Python's
  // json.dumps(indent=2, sort_keys=True) with its default ensure_ascii.
  return j.dump(2, ' ', /*ensure_ascii=*/true);
}

PromptTuningConfig PromptTuningConfig::from_json(const json& j, const std::string& source) {
  SP_CHECK_KIND(kFormat, j.is_object(), source, ": expected a JSON object, found ", j.type_name());
  PromptTuningConfig c;
  auto where = [&](const std::string& key) { return source + ": field '" + key + "'"; };
  auto get_string = [&](const std::string& key) -> std::optional<std::string> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    SP_CHECK_KIND(kFormat, j[key].is_string(), where(key), " must be a string or null, found ",
                  j[key].type_name());
    return j[key].get<std::string>();
  };
  auto get_int = [&](const std::string& key) -> std::optional<int64_t> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    SP_CHECK_KIND(kFormat, j[key].is_number_integer(), where(key),
                  " must be an integer or null, found ", j[key].type_name(), " ", j[key].dump());
    SP_CHECK_KIND(kFormat,
                  !j[key].is_number_unsigned() || j[key].get<uint64_t>() <= uint64_t(INT64_MAX),
                  where(key), " = ", j[key].dump(), " does not fit a 64-bit integer");
    return j[key].get<int64_t>();
  };
  auto wrap = [&](const std::string& key, auto parse) {
    try {
      return parse();
    } catch (const Error& e) {
      throw Error(e.kind(), where(key) + ": " + e.what());
    }
  };
  if (auto type = get_string("peft_type"))
    c.peft_type = wrap("peft_type", [&] { return parse_peft_type(*type); });
  if (auto type = get_string("task_type"))
    c.task_type = wrap("task_type", [&] { return parse_task_type(*type); });
  if (j.contains("auto_mapping")) c.auto_mapping = j["auto_mapping"];
  c.base_model_name_or_path = get_string("base_model_name_or_path");
  c.revision = get_string("revision");
  if (j.contains("inference_mode") && !j["inference_mode"].is_null()) {
    SP_CHECK_KIND(kFormat, j["inference_mode"].is_boolean(), where("inference_mode"),
                  " must be true or false");
    c.inference_mode = j["inference_mode"].get<bool>();
  }
  c.peft_version = get_string("peft_version");
  c.num_virtual_tokens = get_int("num_virtual_tokens");
  c.token_dim = get_int("token_dim");
  c.num_transformer_submodules = get_int("num_transformer_submodules");
  c.num_attention_heads = get_int("num_attention_heads");
  c.num_layers = get_int("num_layers");
  if (j.contains("modules_to_save")) c.modules_to_save = j["modules_to_save"];
  if (auto init = get_string("prompt_tuning_init"))
    c.prompt_tuning_init =
        wrap("prompt_tuning_init", [&] { return parse_prompt_init(*init, c.peft_type); });
  c.prompt_tuning_init_text = get_string("prompt_tuning_init_text");
  c.tokenizer_name_or_path = get_string("tokenizer_name_or_path");
  if (j.contains("tokenizer_kwargs")) c.tokenizer_kwargs = j["tokenizer_kwargs"];
  std::set<std::string> known = {"task_type",
                                 "peft_type",
                                 "auto_mapping",
                                 "base_model_name_or_path",
                                 "revision",
                                 "inference_mode",
                                 "peft_version",
                                 "num_virtual_tokens",
                                 "token_dim",
                                 "num_transformer_submodules",
                                 "num_attention_heads",
                                 "num_layers",
                                 "modules_to_save",
                                 "prompt_tuning_init",
                                 "prompt_tuning_init_text",
                                 "tokenizer_name_or_path",
                                 "tokenizer_kwargs"};
  if (c.is_multitask()) {
    c.prompt_tuning_init_state_dict_path = get_string("prompt_tuning_init_state_dict_path");
    if (j.contains("prompt_tuning_init_task"))
      c.prompt_tuning_init_task = get_int("prompt_tuning_init_task");
    if (j.contains("num_ranks")) c.num_ranks = get_int("num_ranks");
    if (j.contains("num_tasks")) c.num_tasks = get_int("num_tasks");
    known.insert({"prompt_tuning_init_state_dict_path", "prompt_tuning_init_task", "num_ranks",
                  "num_tasks"});
  }
  for (auto& [key, value] : j.items())
    if (!known.count(key)) warn(source, ": unknown field '", key, "' ignored (as PEFT does)");
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.kind(), source + ": " + e.what());
  }
  return c;
}

PromptTuningConfig PromptTuningConfig::load(const std::string& path) {
  return from_json(read_json_file(path), path);
}

}  // namespace sp
