// softprompt train: prompt-tune a model directory on JSONL data into a PEFT adapter directory.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/train_pipeline.h"
#include "engine/error.h"
#include "models/model_loader.h"

namespace sp::cli {

namespace {

struct TrainOptions {
  CommonOptions common;
  std::string model, data, eval_data, output, config_file;
  std::string task_type;  // default from the model
  std::string init = "RANDOM", init_text, init_from;
  int64_t num_virtual_tokens = 20, num_tasks = 0, num_ranks = 1, init_task = 0;
  bool multitask = false;
  std::string schedule = "linear", metric = "exact_match";
  TrainJob job;
};

PromptTuningConfig prompt_config_from_flags(const TrainOptions& o, const std::string& model_type) {
  PromptTuningConfig c = o.multitask || o.num_tasks > 1 ? MultitaskPromptTuningConfig() : PromptTuningConfig();
  c.task_type = parse_task_type(o.task_type.empty() ? (model_type == "t5" ? "SEQ_2_SEQ_LM" : "CAUSAL_LM") : o.task_type);
  c.num_virtual_tokens = o.num_virtual_tokens;
  c.prompt_tuning_init = parse_prompt_init(o.init, c.peft_type);
  if (!o.init_text.empty()) c.prompt_tuning_init_text = o.init_text;
  if (c.prompt_tuning_init == PromptInit::kText) c.tokenizer_name_or_path = o.model;
  if (c.is_multitask()) {
    c.num_tasks = o.num_tasks > 0 ? o.num_tasks : 1;
    c.num_ranks = o.num_ranks;
    c.prompt_tuning_init_task = o.init_task;
    if (!o.init_from.empty()) c.prompt_tuning_init_state_dict_path = o.init_from;
  }
  return c;
}

}  // namespace

CommandRunner add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  CLI::App* cmd = app.add_subcommand("train", "Prompt-tune a frozen model on JSONL data; writes a PEFT adapter directory");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("--model", o->model, "Hugging Face model directory (gpt2 family)")->required();
  cmd->add_option("--data", o->job.train_file, "training JSONL: {\"input\": ..., \"output\": ..., \"task\": optional}")->required();
  cmd->add_option("--eval-data", o->job.eval_file, "evaluation JSONL (same format)");
  cmd->add_option("--output", o->job.train.output_dir, "output directory: the PEFT adapter, training_state/, metrics.jsonl")->required();
  auto* config = cmd->add_option("--config", o->config_file, "adapter_config.json-style file with the prompt-tuning config (instead of the flags below)");
  auto flag_group = [&](CLI::Option* opt) { opt->excludes(config); };
  flag_group(cmd->add_option("--task-type", o->task_type, "CAUSAL_LM or SEQ_2_SEQ_LM (default: from the model)"));
  flag_group(cmd->add_option("--num-virtual-tokens", o->num_virtual_tokens, "soft-prompt length")->capture_default_str());
  flag_group(cmd->add_option("--init", o->init, "RANDOM, TEXT, SAMPLE_VOCAB; multitask also AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED")->capture_default_str());
  flag_group(cmd->add_option("--init-text", o->init_text, "text for --init TEXT (tokenized with the model's tokenizer)"));
  flag_group(cmd->add_flag("--multitask", o->multitask, "multitask prompt tuning (MPT): needs a 'task' field per line"));
  flag_group(cmd->add_option("--num-tasks", o->num_tasks, "MPT: number of tasks (default: from the data)"));
  flag_group(cmd->add_option("--num-ranks", o->num_ranks, "MPT: rank of the per-task factors")->capture_default_str());
  flag_group(cmd->add_option("--init-from", o->init_from, "MPT source inits: the source adapter_model.safetensors"));
  flag_group(cmd->add_option("--init-task", o->init_task, "MPT EXACT_SOURCE_TASK: source task index")->capture_default_str());
  TrainConfig& t = o->job.train;
  cmd->add_option("--lr", t.optim.lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--weight-decay", t.optim.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  cmd->add_option("--beta1", t.optim.beta1)->capture_default_str();
  cmd->add_option("--beta2", t.optim.beta2)->capture_default_str();
  cmd->add_option("--eps", t.optim.eps)->capture_default_str();
  cmd->add_option("--schedule", o->schedule, "constant, linear or cosine (after warmup)")->capture_default_str();
  cmd->add_option("--warmup-steps", t.warmup_steps)->capture_default_str();
  cmd->add_option("--epochs", t.epochs)->capture_default_str();
  cmd->add_option("--max-steps", t.max_steps, "optimizer steps (overrides --epochs when > 0)")->capture_default_str();
  cmd->add_option("--batch-size", t.batch_size)->capture_default_str();
  cmd->add_option("--grad-accum", t.grad_accum, "micro-batches per optimizer step")->capture_default_str();
  cmd->add_option("--max-grad-norm", t.max_grad_norm, "global gradient-norm clip (0 = off)")->capture_default_str();
  cmd->add_option("--seed", t.seed, "seeds the init, data order and dropout")->capture_default_str();
  cmd->add_option("--bucket", t.bucket_batches, "length-bucket within runs of N batches (0 = off)")->capture_default_str();
  cmd->add_flag("!--no-shuffle", t.shuffle, "keep the file order");
  cmd->add_flag("!--no-dropout", t.dropout, "train with the base model's dropout off (PEFT keeps it on)");
  cmd->add_flag("--checkpoint-activations", t.checkpoint_activations, "recompute block activations in backward to save memory");
  cmd->add_option("--eval-every", t.eval_every, "evaluate every N steps (0 = at the end)")->capture_default_str();
  cmd->add_option("--metric", o->metric, "exact_match, token_accuracy or loss")->capture_default_str();
  cmd->add_option("--eval-batch-size", t.eval_batch_size)->capture_default_str();
  cmd->add_option("--max-new-tokens", t.max_new_tokens, "generation length for exact_match")->capture_default_str();
  cmd->add_flag("!--no-keep-best", t.keep_best, "do not keep the best evaluated adapter in <output>/best");
  cmd->add_option("--save-every", t.save_every, "checkpoint every N steps (0 = at the end)")->capture_default_str();
  cmd->add_option("--log-every", t.log_every, "log line every N steps when not on a terminal")->capture_default_str();
  cmd->add_option("--max-length", o->job.tokenize.max_length, "max text tokens per example (input truncated from the left first)")->capture_default_str();
  cmd->add_option("--max-target-length", o->job.tokenize.max_target_length, "seq2seq: max target tokens")->capture_default_str();
  cmd->add_flag("--skip-bad-lines", o->job.skip_bad_lines, "skip (and count) malformed JSONL lines instead of refusing to start");
  cmd->add_flag("--resume", o->job.resume, "continue from <output>/training_state");

  return [o]() -> int {
    Device device = apply_common_options(o->common);
    LoadedModel loaded = load_model(o->model, device);
    TrainJob job = o->job;
    if (!o->config_file.empty()) {
      job.prompt = PromptTuningConfig::load(o->config_file);
      job.prompt.inference_mode = false;
    } else {
      job.prompt = prompt_config_from_flags(*o, read_model_type(o->model));
    }
    job.train.schedule = parse_schedule(o->schedule);
    job.train.metric = parse_metric(o->metric);
    job.init_seed = job.train.seed;
    TrainJobResult r = run_train_job(loaded, job, o->common);
    if (r.result.interrupted) {
      std::fprintf(stderr, "softprompt: interrupted at step %lld; checkpoint saved in %s (continue with --resume)\n",
                   (long long)r.result.steps, job.train.output_dir.c_str());
      return kExitInterrupted;
    }
    std::printf("trained %lld steps, final loss %.4f", (long long)r.result.steps, r.result.final_loss);
    if (r.result.last_eval)
      std::printf(", eval loss %.4f, eval %s %.2f%%", r.result.last_eval->loss,
                  metric_name(job.train.metric), 100.0 * r.result.last_eval->accuracy);
    std::printf("\nadapter written to %s\n", job.train.output_dir.c_str());
    return kExitOk;
  };
}

}  // namespace sp::cli
