// softprompt train: prompt-tune a model directory on JSONL data into a PEFT adapter directory.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/train_pipeline.h"
#include "cli/validate.h"
#include "engine/dist/mpi_communicator.h"
#include "engine/dist/nccl_communicator.h"
#include "engine/error.h"
#include "models/model_loader.h"
#include "peft/evaluate.h"
#include "peft/schedule.h"

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
  CLI::Option* max_length = nullptr;
  double collective_timeout = 300;
  std::unique_ptr<Communicator> nccl;  // --device cuda with several ranks
};

PromptTuningConfig prompt_config_from_flags(const TrainOptions& o, const std::string& model_type) {
  PromptTuningConfig c =
      o.multitask || o.num_tasks > 1 ? MultitaskPromptTuningConfig() : PromptTuningConfig();
  c.task_type = parse_task_type(
      o.task_type.empty() ? (model_type == "t5" ? "SEQ_2_SEQ_LM" : "CAUSAL_LM") : o.task_type);
  c.num_virtual_tokens = o.num_virtual_tokens;
  as_usage("--init", [&] { c.prompt_tuning_init = parse_prompt_init(o.init, c.peft_type); });
  if (!o.init_text.empty()) c.prompt_tuning_init_text = o.init_text;
  if (c.prompt_tuning_init == PromptInit::kText) c.tokenizer_name_or_path = o.model;
  if (c.is_multitask()) {
    c.num_tasks = o.num_tasks > 0 ? o.num_tasks : 1;
    c.num_ranks = o.num_ranks;
    c.prompt_tuning_init_task = o.init_task;
    if (!o.init_from.empty()) c.prompt_tuning_init_state_dict_path = o.init_from;
  }
  // The config's own rules (TEXT needs --init-text, source inits need --init-from, ...) are
  // rules about these flags here.
  as_usage("prompt-tuning flags", [&] { c.validate(); });
  return c;
}

}  // namespace

CommandRunner add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Prompt-tune a frozen model on JSONL data; writes a PEFT adapter directory");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("--model", o->model, "Hugging Face model directory (gpt2, llama, mistral, qwen2, t5)")->required();
  cmd->add_option("--data", o->job.train_file,
                  "training JSONL: {\"input\": ..., \"output\": ..., \"task\": optional}")
      ->required();
  cmd->add_option("--eval-data", o->job.eval_file, "evaluation JSONL (same format)");
  cmd->add_option("--output", o->job.train.output_dir,
                  "output directory: the PEFT adapter, training_state/, metrics.jsonl")
      ->required();
  auto* config = cmd->add_option(
      "--config", o->config_file,
      "adapter_config.json-style file with the prompt-tuning config (instead of the flags below)");
  auto flag_group = [&](CLI::Option* opt) { opt->excludes(config); };
  flag_group(cmd->add_option("--task-type", o->task_type,
                             "CAUSAL_LM or SEQ_2_SEQ_LM (default: from the model)")
                 ->check(choice("CAUSAL_LM|SEQ_2_SEQ_LM",
                                [](const std::string& s) { parse_task_type(s); })));
  flag_group(cmd->add_option("--num-virtual-tokens", o->num_virtual_tokens,
                             "soft-prompt length (gpt2: at most n_positions - 1)")
                 ->capture_default_str()
                 ->check(integer(1, kMaxVirtualTokens)));
  flag_group(cmd->add_option("--init", o->init,
                             "RANDOM, TEXT, SAMPLE_VOCAB; multitask also AVERAGE_SOURCE_TASKS, "
                             "EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED")
                 ->capture_default_str()
                 // Valid for one of the two types here; the pairing with --multitask is checked
                 // once the type is known.
                 ->check(choice("INIT", [](const std::string& s) {
                   try {
                     parse_prompt_init(s, PeftType::kPromptTuning);
                   } catch (const Error&) {
                     parse_prompt_init(s, PeftType::kMultitaskPromptTuning);
                   }
                 })));
  flag_group(cmd->add_option("--init-text", o->init_text,
                             "text for --init TEXT (tokenized with the model's tokenizer)"));
  flag_group(cmd->add_flag("--multitask", o->multitask,
                           "multitask prompt tuning (MPT): needs a 'task' field per line"));
  flag_group(
      cmd->add_option("--num-tasks", o->num_tasks, "MPT: number of tasks (default: from the data)")
          ->check(integer(1, kMaxTasks)));
  flag_group(cmd->add_option("--num-ranks", o->num_ranks, "MPT: rank of the per-task factors")
                 ->capture_default_str()
                 ->check(integer(1, kMaxRanks)));
  flag_group(cmd->add_option("--init-from", o->init_from,
                             "MPT source inits: the source adapter_model.safetensors"));
  flag_group(
      cmd->add_option("--init-task", o->init_task, "MPT EXACT_SOURCE_TASK: source task index")
          ->capture_default_str()
          ->check(integer(0, kMaxTasks - 1)));
  TrainConfig& t = o->job.train;
  cmd->add_option("--lr", t.optim.lr, "AdamW learning rate")
      ->capture_default_str()
      ->check(real(0, kNoLimit, Bound::kClosed, Bound::kClosed, true));
  cmd->add_option("--weight-decay", t.optim.weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str()
      ->check(real(0, kNoLimit, Bound::kClosed, Bound::kClosed, true));
  cmd->add_option("--beta1", t.optim.beta1)
      ->capture_default_str()
      ->check(real(0, 1, Bound::kClosed, Bound::kOpen, true));
  cmd->add_option("--beta2", t.optim.beta2)
      ->capture_default_str()
      ->check(real(0, 1, Bound::kClosed, Bound::kOpen, true));
  // eps 0 divides 0 by 0 where a gradient entry has always been 0.
  cmd->add_option("--eps", t.optim.eps)
      ->capture_default_str()
      ->check(real(0, kNoLimit, Bound::kOpen, Bound::kClosed, true));
  cmd->add_option("--schedule", o->schedule, "constant, linear or cosine (after warmup)")
      ->capture_default_str()
      ->check(choice("constant|linear|cosine", [](const std::string& s) { parse_schedule(s); }));
  cmd->add_option("--warmup-steps", t.warmup_steps)
      ->capture_default_str()
      ->check(integer(0, kMaxSteps));
  cmd->add_option("--epochs", t.epochs, "passes over the data (0: only with --max-steps)")
      ->capture_default_str()
      ->check(integer(0, kMaxEpochs));
  cmd->add_option("--max-steps", t.max_steps, "optimizer steps (overrides --epochs when > 0)")
      ->capture_default_str()
      ->check(integer(0, kMaxSteps));
  cmd->add_option("--batch-size", t.batch_size)
      ->capture_default_str()
      ->check(integer(1, kMaxBatchSize));
  cmd->add_option("--grad-accum", t.grad_accum, "micro-batches per optimizer step")
      ->capture_default_str()
      ->check(integer(1, kMaxBatchSize));
  cmd->add_option("--max-grad-norm", t.max_grad_norm, "global gradient-norm clip (0 = off)")
      ->capture_default_str()
      ->check(real(0, kNoLimit));
  cmd->add_option("--seed", t.seed, "seeds the init, data order and dropout")
      ->capture_default_str()
      ->check(unsigned64());
  cmd->add_option("--bucket", t.bucket_batches, "length-bucket within runs of N batches (0 = off)")
      ->capture_default_str()
      ->check(integer(0, kMaxBatchSize));
  cmd->add_flag("!--no-shuffle", t.shuffle, "keep the file order");
  cmd->add_flag("!--no-dropout", t.dropout,
                "train with the base model's dropout off (PEFT keeps it on)");
  cmd->add_flag("--checkpoint-activations", t.checkpoint_activations,
                "recompute block activations in backward to save memory");
  cmd->add_option("--eval-every", t.eval_every, "evaluate every N steps (0 = at the end)")
      ->capture_default_str()
      ->check(integer(0, kMaxSteps));
  cmd->add_option("--metric", o->metric, "exact_match, token_accuracy or loss")
      ->capture_default_str()
      ->check(
          choice("exact_match|token_accuracy|loss", [](const std::string& s) { parse_metric(s); }));
  cmd->add_option("--eval-batch-size", t.eval_batch_size)
      ->capture_default_str()
      ->check(integer(1, kMaxBatchSize));
  cmd->add_option("--max-new-tokens", t.max_new_tokens,
                  "generation length for exact_match (gpt2: virtual tokens + input + this must fit "
                  "n_positions)")
      ->capture_default_str()
      ->check(integer(1, kMaxTokens));
  cmd->add_flag("!--no-keep-best", t.keep_best,
                "do not keep the best evaluated adapter in <output>/best");
  cmd->add_option("--save-every", t.save_every, "checkpoint every N steps (0 = at the end)")
      ->capture_default_str()
      ->check(integer(0, kMaxSteps));
  cmd->add_option("--log-every", t.log_every, "log line every N steps when not on a terminal")
      ->capture_default_str()
      ->check(integer(1, kMaxSteps));
  o->max_length =
      cmd->add_option("--max-length", o->job.tokenize.max_length,
                      "max text tokens per example (input truncated from the left first); gpt2: at "
                      "most n_positions - virtual tokens, the default is lowered to that")
          ->capture_default_str()
          ->check(integer(1, kMaxTokens));
  cmd->add_option("--max-target-length", o->job.tokenize.max_target_length,
                  "seq2seq: max target tokens")
      ->capture_default_str()
      ->check(integer(1, kMaxTokens));
  cmd->add_flag("--skip-bad-lines", o->job.skip_bad_lines,
                "skip (and count) malformed JSONL lines instead of refusing to start");
  cmd->add_flag("--resume", o->job.resume, "continue from <output>/training_state");
  cmd->add_option("--collective-timeout", o->collective_timeout,
                  "under mpirun: seconds a rank waits for the others in one collective before "
                  "ending the job")
      ->capture_default_str()
      ->check(real(1, 86400));

  return [o]() -> int {
    // Flag combinations first: nothing is loaded for a command line that cannot run.
    if (o->job.train.epochs == 0 && o->job.train.max_steps == 0)
      usage_error("--epochs", "0 needs --max-steps > 0 (expected epochs >= 1 or a step count)");
    Device device = apply_common_options(o->common);
    TrainJob job = o->job;
    if (ranks().size() > 1) {
      if (auto* mpi = dynamic_cast<MpiCommunicator*>(&ranks()))
        mpi->set_timeout(o->collective_timeout);
      job.train.communicator = &ranks();
      // GPUs all-reduce gradients in device memory with NCCL; MPI still launches and carries
      // the rest. The emulated GPU and the CPU stage through host memory over MPI.
      if (device.kind == DeviceKind::CUDA) {
        o->nccl = make_nccl_communicator(ranks(), device);
        job.train.communicator = o->nccl.get();
      }
      note(o->common,
           "data parallel: " + job.train.communicator->description() + "; " +
               std::to_string(job.train.batch_size * ranks().size() * job.train.grad_accum) +
               " examples per step (batch size " + std::to_string(job.train.batch_size) + " x " +
               std::to_string(ranks().size()) + " ranks x grad-accum " +
               std::to_string(job.train.grad_accum) + ")");
    }
    job.max_length_given = o->max_length->count() > 0;
    std::optional<PromptTuningConfig> prompt;
    if (o->config_file.empty()) prompt = prompt_config_from_flags(*o, read_model_type(o->model));
    LoadedModel loaded = load_model(o->model, device, model_dtype(o->common, device));
    if (!o->config_file.empty()) {
      job.prompt = PromptTuningConfig::load(o->config_file);
      job.prompt.inference_mode = false;
      job.virtual_tokens_from = {o->config_file + ": num_virtual_tokens", false};
    } else {
      job.prompt = *prompt;
    }
    job.train.schedule = parse_schedule(o->schedule);
    job.train.metric = parse_metric(o->metric);
    job.init_seed = job.train.seed;
    TrainJobResult r = run_train_job(loaded, job, o->common);
    if (!ranks().is_root()) return r.result.interrupted ? kExitInterrupted : kExitOk;
    if (r.result.interrupted) {
      std::fprintf(
          stderr,
          "softprompt: interrupted at step %lld; checkpoint saved in %s (continue with --resume)\n",
          (long long)r.result.steps, job.train.output_dir.c_str());
      return kExitInterrupted;
    }
    std::printf("trained %lld steps, final loss %.4f", (long long)r.result.steps,
                r.result.final_loss);
    if (r.result.last_eval)
      std::printf(", eval loss %.4f, eval %s %.2f%%", r.result.last_eval->loss,
                  metric_name(job.train.metric), 100.0 * r.result.last_eval->accuracy);
    std::printf("\nadapter written to %s\n", job.train.output_dir.c_str());
    return kExitOk;
  };
}

}  // namespace sp::cli
