// Prompt initialisation (RANDOM / SAMPLE_VOCAB / TEXT / multitask source inits) and the
// adapter factory.
#include "peft/prompt_adapter.h"

#include <filesystem>

#include "engine/error.h"
#include "engine/autograd.h"
#include "engine/log.h"
#include "engine/ops/ops.h"
#include "engine/safetensors.h"
#include "models/tokenizer.h"
#include "peft/multitask_prompt_embedding.h"
#include "peft/prompt_embedding.h"

namespace sp {

std::vector<Tensor> PromptAdapter::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t PromptAdapter::parameter_count() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

namespace {

// A fresh, contiguous, trainable F32 copy on `device`.
Tensor trainable_copy(const Tensor& t, Device device) {
  NoGradGuard no_grad;
  Tensor copy = t.detach().to(DType::F32).to(device).clone().detach();
  return copy.set_requires_grad(true);
}

bool honour_add_special_tokens(const PromptTuningConfig& config) {
  bool add = true;
  if (!config.tokenizer_kwargs.is_object()) return add;
  for (auto& [key, value] : config.tokenizer_kwargs.items()) {
    if (key == "add_special_tokens" && value.is_boolean()) {
      add = value.get<bool>();
    } else {
      warn("tokenizer_kwargs: '", key, "' has no effect in softprompt and is ignored");
    }
  }
  return add;
}

// The source adapter file of the multitask inits, with its tensors checked against the target.
struct SourcePrompt {
  Tensor shared, cols, rows;
};

SourcePrompt load_source(const PromptTuningConfig& config, int64_t rows_total, int64_t dim) {
  const std::string& path = *config.prompt_tuning_init_state_dict_path;
  SP_CHECK(path.ends_with(".safetensors"), "prompt_tuning_init_state_dict_path '", path,
           "': only .safetensors files can be read (PyTorch pickles are not supported)");
  auto file = SafetensorsFile::open(path);
  auto get = [&](const char* key, bool required) {
    if (!file->contains(key)) {
      SP_CHECK_KIND(kFormat, !required, path, ": missing tensor '", key, "' needed by ",
                    prompt_init_name(config.prompt_tuning_init));
      return Tensor();
    }
    return file->get(key, DType::F32);
  };
  const bool need_factors = config.prompt_tuning_init != PromptInit::kOnlySourceShared;
  SourcePrompt src{get("prompt_embeddings", true), get("prefix_task_cols", need_factors),
                   get("prefix_task_rows", need_factors)};
  SP_CHECK_KIND(kFormat, src.shared.shape() == Shape({rows_total, dim}), path,
                ": prompt_embeddings has shape ", shape_str(src.shared.shape()), ", expected ",
                shape_str({rows_total, dim}));
  if (need_factors) {
    const int64_t ranks = *config.num_ranks;
    SP_CHECK_KIND(kFormat, src.cols.dim() == 3 && src.cols.size(1) == rows_total && src.cols.size(2) == ranks,
                  path, ": prefix_task_cols has shape ", shape_str(src.cols.shape()),
                  ", expected [source_tasks, ", rows_total, ", ", ranks, "]");
    SP_CHECK_KIND(kFormat,
                  src.rows.dim() == 3 && src.rows.size(0) == src.cols.size(0) &&
                      src.rows.size(1) == ranks && src.rows.size(2) == dim,
                  path, ": prefix_task_rows has shape ", shape_str(src.rows.shape()), ", expected [",
                  src.cols.size(0), ", ", ranks, ", ", dim, "]");
  }
  return src;
}

// One task's factors [1, ...] repeated for every target task.
Tensor repeat_tasks(const Tensor& one, int64_t tasks) {
  Shape shape = one.shape();
  shape[0] = tasks;
  return one.expand(shape).contiguous();
}

}  // namespace

std::vector<int64_t> text_init_ids(const PromptTuningConfig& config, const Tokenizer& tokenizer,
                                   int64_t rows) {
  std::vector<int64_t> ids =
      tokenizer.encode(*config.prompt_tuning_init_text, honour_add_special_tokens(config));
  SP_CHECK(!ids.empty(), "prompt_tuning_init_text '", *config.prompt_tuning_init_text,
           "' tokenizes to nothing; TEXT init needs at least one token");
  // PEFT: truncate when longer; otherwise repeat ceil(rows / n) times, then truncate.
  std::vector<int64_t> out;
  while (int64_t(out.size()) < rows) out.insert(out.end(), ids.begin(), ids.end());
  out.resize(size_t(rows));
  return out;
}

std::unique_ptr<PromptAdapter> make_prompt_adapter(const PromptTuningConfig& config,
                                                   const Tensor& word_embeddings,
                                                   const Tokenizer* tokenizer, uint64_t seed) {
  config.validate();
  SP_CHECK(config.token_dim, "make_prompt_adapter: token_dim is unset (fill_from_model first)");
  const int64_t rows = config.total_virtual_tokens(), dim = *config.token_dim;
  const Device device = word_embeddings.device();
  SP_CHECK(word_embeddings.dim() == 2 && word_embeddings.size(1) == dim,
           "adapter token_dim ", dim, " does not match the word embeddings ",
           word_embeddings.describe());
  const int64_t vocab = word_embeddings.size(0);
  NoGradGuard no_grad;

  // The shared table P (PEFT's PromptEmbedding init, which MPT runs first too).
  Tensor shared;
  const bool initialise = !config.inference_mode;
  switch (initialise ? config.prompt_tuning_init : PromptInit::kRandom) {
    case PromptInit::kText: {
      std::unique_ptr<Tokenizer> owned;
      if (!tokenizer) {
        owned = load_tokenizer(*config.tokenizer_name_or_path);
        tokenizer = owned.get();
      }
      std::vector<int64_t> ids = text_init_ids(config, *tokenizer, rows);
      for (int64_t id : ids)
        SP_CHECK(id < vocab, "TEXT init: token id ", id, " from tokenizer '",
                 config.tokenizer_name_or_path.value_or("(model's)"),
                 "' is outside the model's vocabulary of ", vocab);
      shared = embedding(word_embeddings, Tensor::from_ints(ids, {rows}, DType::I64, device));
      break;
    }
    case PromptInit::kSampleVocab: {
      Generator gen(seed);
      std::vector<int64_t> ids(static_cast<size_t>(rows));
      for (auto& id : ids) id = gen.uniform_int(vocab);
      shared = embedding(word_embeddings, Tensor::from_ints(ids, {rows}, DType::I64, device));
      break;
    }
    default: shared = randn({rows, dim}, seed, 0, 0.0f, 1.0f, device); break;
  }
  if (!config.is_multitask()) return std::make_unique<PromptEmbedding>(config, trainable_copy(shared, device));

  const int64_t tasks = *config.num_tasks, ranks = *config.num_ranks;
  Tensor cols = randn({tasks, rows, ranks}, seed, uint64_t(1) << 40, 0.0f, 0.02f, device);
  Tensor task_rows = randn({tasks, ranks, dim}, seed, uint64_t(2) << 40, 0.0f, 0.02f, device);
  const PromptInit init = config.prompt_tuning_init;
  if (initialise && (init == PromptInit::kAverageSourceTasks || init == PromptInit::kExactSourceTask ||
                     init == PromptInit::kOnlySourceShared)) {
    SourcePrompt src = load_source(config, rows, dim);
    shared = src.shared;
    if (init == PromptInit::kAverageSourceTasks) {
      // PEFT's mean over source tasks, given to every target task (PEFT accepts 1 target task).
      cols = repeat_tasks(mean(src.cols, {0}, true), tasks);
      task_rows = repeat_tasks(mean(src.rows, {0}, true), tasks);
    } else if (init == PromptInit::kExactSourceTask) {
      const int64_t source_tasks = src.cols.size(0), task = *config.prompt_tuning_init_task;
      SP_CHECK(task < source_tasks, "prompt_tuning_init_task ", task, " is out of range: ",
               *config.prompt_tuning_init_state_dict_path, " has ", source_tasks, " tasks");
      cols = repeat_tasks(src.cols.slice(0, task, task + 1), tasks);
      task_rows = repeat_tasks(src.rows.slice(0, task, task + 1), tasks);
    }
  }
  return std::make_unique<MultitaskPromptEmbedding>(config, trainable_copy(shared, device),
                                                    trainable_copy(cols, device),
                                                    trainable_copy(task_rows, device));
}

}  // namespace sp
