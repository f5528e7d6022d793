// softprompt eval: loss and accuracy of a model, with or without an adapter, on JSONL data.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/train_pipeline.h"
#include "cli/validate.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "peft/evaluate.h"

namespace sp::cli {

CommandRunner add_eval_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string model, adapter, data, metric = "exact_match", predictions;
    int64_t batch_size = 8, max_new_tokens = 16, max_length = 512;
    bool skip_bad_lines = false, json = false;
    CLI::Option* max_length_option = nullptr;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("eval", "Evaluate a model (optionally with a PEFT adapter) on JSONL data");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("--model", o->model, "Hugging Face model directory")->required();
  cmd->add_option("--adapter", o->adapter, "PEFT adapter directory (omit to evaluate the base model)");
  cmd->add_option("--data", o->data, "JSONL with input/output (and task for multitask adapters)")->required();
  cmd->add_option("--metric", o->metric, "exact_match, token_accuracy or loss")
      ->capture_default_str()
      ->check(
          choice("exact_match|token_accuracy|loss", [](const std::string& s) { parse_metric(s); }));
  cmd->add_option("--batch-size", o->batch_size)
      ->capture_default_str()
      ->check(integer(1, kMaxBatchSize));
  cmd->add_option("--max-new-tokens", o->max_new_tokens,
                  "generation length for exact_match (gpt2: virtual tokens + input + this must fit "
                  "n_positions)")
      ->capture_default_str()
      ->check(integer(1, kMaxTokens));
  o->max_length_option = cmd->add_option("--max-length", o->max_length,
                                         "max text tokens per example; gpt2: at most n_positions - "
                                         "virtual tokens, the default is lowered to that")
                             ->capture_default_str()
                             ->check(integer(1, kMaxTokens));
  cmd->add_option("--predictions", o->predictions, "write the generated outputs here (JSONL)");
  cmd->add_flag("--skip-bad-lines", o->skip_bad_lines);
  cmd->add_flag("--json", o->json, "print the result as one JSON object");

  return [o]() -> int {
    Device device = apply_common_options(o->common);
    LoadedModel loaded = load_model(o->model, device, model_dtype(o->common, device));
    std::unique_ptr<PeftModel> peft = loaded.peft();
    PeftModel& model = *peft;
    Dataset data = load_jsonl(o->data, o->skip_bad_lines);
    std::optional<TaskIndex> tasks;
    TokenizeOptions tokenize;
    tokenize.max_length = o->max_length;
    tokenize.task_type = model.task_type();
    if (!o->adapter.empty()) {
      PromptAdapter& a = model.load_adapter(o->adapter, "default");
      tokenize.task_type = *a.config().task_type;
      if (a.config().is_multitask()) {
        std::vector<std::string> names = read_task_names(o->adapter);
        tasks = names.empty() ? TaskIndex::from_examples(data.examples) : TaskIndex::from_names(names);
      }
    }
    EvalOptions options;
    options.metric = parse_metric(o->metric);
    // The same start-up checks as train's: lengths against the model's context.
    const bool causal = tokenize.task_type == TaskType::kCausalLm;
    const int64_t virtual_tokens =
        o->adapter.empty() ? 0 : model.adapter().config().total_virtual_tokens();
    const int64_t room = causal ? text_positions(loaded.info(), virtual_tokens,
                                                 {o->adapter + ": num_virtual_tokens", false})
                                : std::numeric_limits<int64_t>::max();
    tokenize.max_length = fit_max_length(o->max_length, o->max_length_option->count() > 0, room,
                                         {"--max-length"}, o->common);
    if (options.metric == Metric::kExactMatch)
      check_generation_fits(o->max_new_tokens, room, {"--max-new-tokens"});
    auto examples = tokenize_examples(data, *loaded.tokenizer, tasks ? &*tasks : nullptr, tokenize);
    if (options.metric == Metric::kExactMatch && causal)
      check_eval_rows_fit(data, examples, o->max_new_tokens, room, virtual_tokens);
    options.batch_size = o->batch_size;
    options.max_new_tokens = o->max_new_tokens;
    options.pad_id = loaded.tokenizer->pad_id().value_or(loaded.tokenizer->eos_id().value_or(0));
    options.use_adapter = !o->adapter.empty();
    options.keep_predictions = !o->predictions.empty();
    EvalResult r = evaluate(model, *loaded.tokenizer, data, examples, options);
    if (!o->predictions.empty()) {
      std::string text;
      for (size_t i = 0; i < r.predictions.size(); ++i)
        text += nlohmann::json{{"input", data.examples[i].input}, {"output", data.examples[i].output},
                               {"prediction", r.predictions[i]}}.dump() + "\n";
      write_file_atomically(o->predictions, text);
    }
    if (o->json) {
      std::printf("%s\n", nlohmann::json{{"loss", r.loss}, {"metric", o->metric}, {"accuracy", r.accuracy},
                                         {"correct", r.correct}, {"examples", r.examples}}.dump().c_str());
    } else {
      std::printf("examples %lld  loss %.4f", (long long)r.examples, r.loss);
      if (options.metric != Metric::kLoss)
        std::printf("  %s %.2f%% (%lld/%lld)", o->metric.c_str(), 100.0 * r.accuracy,
                    (long long)r.correct, (long long)r.examples);
      std::printf("\n");
    }
    return kExitOk;
  };
}

}  // namespace sp::cli
