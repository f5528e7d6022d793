// The train pipeline shared by `softprompt train` and `softprompt demo`: data loading and
// tokenization, the adapter, the trainer with progress display, and the tasks.json record.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cli/common.h"
#include "cli/validate.h"
#include "peft/config.h"
#include "peft/data.h"
#include "peft/peft_model.h"
#include "peft/trainer.h"

namespace sp::cli {

struct TrainJob {
  PromptTuningConfig prompt;
  TrainConfig train;
  std::string train_file;
  std::string eval_file;  // optional
  bool skip_bad_lines = false;
  bool resume = false;
  TokenizeOptions tokenize;
  uint64_t init_seed = 42;
  // Where the sizes came from, for the start-up checks' messages (and exit codes: a flag is a
  // usage error, a config file field bad input). The demo names its demo_config.json.
  Setting virtual_tokens_from{"--num-virtual-tokens"};
  Setting max_length_from{"--max-length"};
  Setting max_new_tokens_from{"--max-new-tokens"};
  bool max_length_given = false;  // else a default that is lowered to the model's context
};

struct TrainJobResult {
  TrainResult result;
  std::optional<EvalResult> initial_eval;  // the base model before training (demo)
};

// Reads tasks.json from an adapter/output directory (empty when absent).
std::vector<std::string> read_task_names(const std::string& dir);
void write_task_names(const std::string& dir, const std::vector<std::string>& names);

// Checks the job against the model and both data files before anything else happens (a bad
// value must not cost a training run), then trains.
TrainJobResult run_train_job(const LoadedModel& loaded, TrainJob job, const CommonOptions& common,
                             bool evaluate_base_first = false);

}  // namespace sp::cli
