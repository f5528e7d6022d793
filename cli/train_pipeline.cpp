// run_train_job: the common path from files to a trained adapter directory.
#include "cli/train_pipeline.h"

#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "cli/progress.h"
#include "engine/error.h"
#include "engine/input_file.h"
#include "engine/safetensors.h"

namespace sp::cli {

namespace fs = std::filesystem;

std::vector<std::string> read_task_names(const std::string& dir) {
  const fs::path path = fs::path(dir) / "tasks.json";
  if (!path_exists(path.string())) return {};
  const nlohmann::json j = read_json_file(path.string());
  if (!j.is_array())
    fail(ErrorKind::kFormat, path.string(), ": expected a JSON list of task names");
  std::vector<std::string> names;
  for (auto& v : j) {
    if (!v.is_string()) fail(ErrorKind::kFormat, path.string(), ": task names must be strings");
    names.push_back(v.get<std::string>());
  }
  return names;
}

void write_task_names(const std::string& dir, const std::vector<std::string>& names) {
  write_file_atomically((fs::path(dir) / "tasks.json").string(), nlohmann::json(names).dump(2));
}

TrainJobResult run_train_job(const LoadedModel& loaded, TrainJob job, const CommonOptions& common,
                             bool evaluate_base_first) {
  job.prompt.validate();  // a config file's fields (flags were checked when parsed)
  // Sizes against the model's context first, before the data or the adapter is allocated.
  const bool causal = *job.prompt.task_type == TaskType::kCausalLm;
  const int64_t virtual_tokens = *job.prompt.num_virtual_tokens;
  const int64_t room = causal
                           ? text_positions(loaded.info(), virtual_tokens, job.virtual_tokens_from)
                           : std::numeric_limits<int64_t>::max();
  job.tokenize.max_length = fit_max_length(job.tokenize.max_length, job.max_length_given, room,
                                           job.max_length_from, common);
  const bool generates = !job.eval_file.empty() && job.train.metric == Metric::kExactMatch;
  if (generates) check_generation_fits(job.train.max_new_tokens, room, job.max_new_tokens_from);

  Dataset train = load_jsonl(job.train_file, job.skip_bad_lines);
  std::optional<Dataset> eval;
  if (!job.eval_file.empty()) eval = load_jsonl(job.eval_file, job.skip_bad_lines);
  if (train.skipped_lines)
    note(common, "skipped " + std::to_string(train.skipped_lines) + " malformed training lines");

  std::optional<TaskIndex> tasks;
  if (job.prompt.is_multitask()) {
    std::vector<std::string> known = job.resume && ranks().is_root()
                                         ? read_task_names(job.train.output_dir)
                                         : std::vector<std::string>{};
    if (job.resume && ranks().size() > 1)  // only rank 0 reads the output directory
      known = nlohmann::json::parse(broadcast_string(ranks(), nlohmann::json(known).dump(), 0))
                  .get<std::vector<std::string>>();
    tasks = known.empty() ? TaskIndex::from_examples(train.examples) : TaskIndex::from_names(known);
    if (!job.prompt.num_tasks || *job.prompt.num_tasks <= 1)
      job.prompt.num_tasks = std::max<int64_t>(1, tasks->size());
    SP_CHECK(tasks->size() <= *job.prompt.num_tasks, job.train_file, ": the data has ",
             tasks->size(), " tasks but the adapter has num_tasks = ", *job.prompt.num_tasks);
  }
  check_adapter_size(job.prompt, loaded.info().token_dim, job.virtual_tokens_from);
  const TaskIndex* task_index = tasks ? &*tasks : nullptr;
  job.tokenize.task_type = *job.prompt.task_type;
  auto train_examples = tokenize_examples(train, *loaded.tokenizer, task_index, job.tokenize);
  std::vector<TokenizedExample> eval_examples;
  if (eval) eval_examples = tokenize_examples(*eval, *loaded.tokenizer, task_index, job.tokenize);
  // Evaluation runs after training: a row it cannot serve must fail now, not then.
  if (generates && causal)
    check_eval_rows_fit(*eval, eval_examples, job.train.max_new_tokens, room, virtual_tokens);

  std::unique_ptr<PeftModel> peft = loaded.peft();
  PeftModel& model = *peft;
  if (!job.prompt.base_model_name_or_path) job.prompt.base_model_name_or_path = loaded.dir;
  model.add_adapter("default", job.prompt, job.init_seed);
  note(common, model.trainable_parameters_summary());

  TrainJobResult out;
  if (evaluate_base_first && eval) {
    EvalOptions options;
    options.metric = job.train.metric;
    options.batch_size = job.train.eval_batch_size;
    options.max_new_tokens = job.train.max_new_tokens;
    options.pad_id = loaded.tokenizer->pad_id().value_or(loaded.tokenizer->eos_id().value_or(0));
    options.use_adapter = false;
    out.initial_eval = evaluate(model, *loaded.tokenizer, *eval, eval_examples, options);
  }

  if (ranks().is_root()) {  // rank 0 alone writes the output directory
    fs::create_directories(job.train.output_dir);
    if (tasks && !tasks->names().empty()) write_task_names(job.train.output_dir, tasks->names());
  }
  Trainer trainer(model, *loaded.tokenizer, job.train, train, std::move(train_examples),
                  eval ? &*eval : nullptr, std::move(eval_examples));
  ProgressDisplay progress(common.quiet || !ranks().is_root(), job.train.log_every);
  trainer.set_event_callback([&](const TrainEvent& e) { progress(e); });
  Trainer::install_signal_handlers();
  out.result = trainer.run(job.resume);
  progress.finish();
  return out;
}

}  // namespace sp::cli
