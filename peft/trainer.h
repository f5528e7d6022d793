// Trainer: prompt tuning with AdamW, LR schedules, gradient accumulation and clipping, periodic
// evaluation with keep-best, atomic checkpoints with bitwise-exact resume, NaN and signal
// handling, metrics.jsonl, data-parallel ranks; the output directory is a PEFT adapter directory.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/dist/communicator.h"
#include "engine/optim/adamw.h"
#include "peft/data.h"
#include "peft/evaluate.h"
#include "peft/peft_model.h"
#include "peft/schedule.h"

namespace sp {

/// The Trainer's settings (the CLI's train flags), with Hugging Face Trainer-like defaults.
struct TrainConfig {
  std::string output_dir;
  int64_t batch_size = 8;
  int64_t grad_accum = 1;  ///< micro-batches per optimizer step
  int64_t epochs = 1;
  int64_t max_steps = 0;  ///< optimizer steps; 0 = run the epochs
  AdamWOptions optim;
  Schedule schedule = Schedule::kLinear;  ///< Hugging Face Trainer's default
  int64_t warmup_steps = 0;
  double max_grad_norm = 1.0;  ///< 0 disables clipping
  uint64_t seed = 42;
  bool shuffle = true;
  int64_t bucket_batches = 0;  ///< > 1: length-bucket within runs of this many batches
  /// The base model's dropout in training (PEFT trains in train mode).
  bool dropout = true;
  bool checkpoint_activations = false;
  int64_t eval_every = 0;  ///< optimizer steps; 0 = only at the end
  Metric metric = Metric::kExactMatch;
  int64_t eval_batch_size = 8;
  int64_t max_new_tokens = 16;
  bool keep_best = true;   ///< keep the best evaluated adapter in <output_dir>/best
  int64_t save_every = 0;  ///< checkpoint every N optimizer steps; 0 = only at the end
  int64_t log_every = 10;
  /// Data parallel (null: one process). Each optimizer step takes batch_size x ranks x grad_accum
  /// examples: global micro-batch j of the step (j = m * ranks + rank for this rank's m-th) holds
  /// slots [j * batch_size, (j + 1) * batch_size) of the step's share of the epoch order, so the
  /// data and dropout of a step do not depend on how many ranks share it. Gradients are summed
  /// (each rank scales its losses by 1 / (ranks x grad_accum)), evaluation is sharded by batch,
  /// and rank 0 alone writes the output directory.
  Communicator* communicator = nullptr;
};

/// What the trainer reports as it goes (the CLI draws a progress bar from these).
struct TrainEvent {
  enum class Kind { kStep, kEval, kCheckpoint, kDone } kind = Kind::kStep;
  int64_t step = 0;
  int64_t total_steps = 0;
  int64_t epoch = 0;
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double tokens_per_second = 0.0;
  double elapsed_seconds = 0.0;
  EvalResult eval;
  std::string message;
};

/// How a run ended.
struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0.0;
  bool interrupted = false;  ///< stopped by request (SIGINT/SIGTERM); a checkpoint was saved
  std::optional<EvalResult> last_eval;
  std::optional<EvalResult> best_eval;
  int64_t best_step = -1;
};

/// The ready-made training loop over a PeftModel's active adapter. A custom loop (examples/) needs
/// none of it: PeftModel::forward, Tensor::backward and AdamW are the whole recipe.
class Trainer {
 public:
  /// Trains the model's active adapter. `eval` may be null (no evaluation).
  Trainer(PeftModel& model, const Tokenizer& tokenizer, TrainConfig config, const Dataset& train,
          std::vector<TokenizedExample> train_examples, const Dataset* eval = nullptr,
          std::vector<TokenizedExample> eval_examples = {});

  /// Runs to the end (or until stopped). With resume, continues from
  /// <output_dir>/training_state exactly where it left off.
  TrainResult run(bool resume = false);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Called after every step, evaluation and checkpoint.
  void set_event_callback(std::function<void(const TrainEvent&)> callback) {
    on_event_ = std::move(callback);
  }
  int64_t total_steps() const { return total_steps_; }

  /// Set from a signal handler: the trainer checkpoints at the last completed step (dropping a
  /// partly accumulated one) and returns; it is polled before every micro-batch.
  static std::atomic<bool>& stop_requested();
  /// Installs SIGINT/SIGTERM handlers that set stop_requested().
  static void install_signal_handlers();

 private:
  struct Position {
    int64_t step = 0, epoch = 0, batch_in_epoch = 0;
    bool eval_pending = false;  ///< the evaluation due at `step` has not run yet
  };
  void prepare_output_dir();
  void save_checkpoint(Position at, const TrainResult& result, int64_t metrics_bytes);
  Position load_checkpoint(TrainResult& result, int64_t& metrics_bytes);
  EvalResult run_eval() const;
  /// Ranks > 1: every rank takes rank 0's parameters, optimizer state and position.
  void sync_from_root(Position& at, TrainResult& result);
  /// Ranks > 1: sums the parameters' gradients (zeros where a rank had no micro-batch).
  void all_reduce_gradients(const std::vector<Tensor>& params);
  bool is_root() const { return comm_->is_root(); }
  void emit(const TrainEvent& event) const;
  void open_metrics();
  void append_metrics(const nlohmann::json& record) const;
  int64_t metrics_size() const;

  PeftModel& model_;
  const Tokenizer& tokenizer_;
  TrainConfig config_;
  const Dataset& train_data_;
  std::vector<TokenizedExample> train_;
  const Dataset* eval_data_;
  std::vector<TokenizedExample> eval_;
  std::unique_ptr<AdamW> optimizer_;
  SingleProcessCommunicator single_process_;
  Communicator* comm_ = &single_process_;
  int64_t micro_batches_per_step_ = 1;  ///< grad_accum x ranks
  int64_t batches_per_epoch_ = 0;
  int64_t total_steps_ = 0;
  int64_t pad_id_ = 0;
  int metrics_fd_ = -1;
  std::function<void(const TrainEvent&)> on_event_;
};

}  // namespace sp
