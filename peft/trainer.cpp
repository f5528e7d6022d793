// The training loop, checkpoints and resume.
#include "peft/trainer.h"

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "engine/log.h"
#include "engine/ops/ops.h"
#include "engine/safetensors.h"
#include "engine/thread_pool.h"
#include "models/tokenizer.h"
#include "peft/adapter_io.h"

namespace sp {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kStateDir = "training_state";
constexpr int kStateVersion = 1;

uint64_t mix_seed(uint64_t seed, uint64_t step, uint64_t micro) {
  // splitmix64 of the triple: distinct dropout streams per micro-batch, reproducible on resume.
  uint64_t z = seed ^ (step * 0x9E3779B97F4A7C15ull) ^ (micro * 0xD1B54A32D192ED03ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void handle_stop_signal(int) { Trainer::stop_requested().store(true); }

}  // namespace

std::atomic<bool>& Trainer::stop_requested() {
  static std::atomic<bool> flag{false};
  return flag;
}

void Trainer::install_signal_handlers() {
  std::signal(SIGINT, handle_stop_signal);
  std::signal(SIGTERM, handle_stop_signal);
}

Trainer::Trainer(PeftModel& model, const Tokenizer& tokenizer, TrainConfig config,
                 const Dataset& train, std::vector<TokenizedExample> train_examples,
                 const Dataset* eval, std::vector<TokenizedExample> eval_examples)
    : model_(model),
      tokenizer_(tokenizer),
      config_(std::move(config)),
      train_data_(train),
      train_(std::move(train_examples)),
      eval_data_(eval),
      eval_(std::move(eval_examples)) {
  SP_CHECK(!config_.output_dir.empty(), "training needs an output directory");
  SP_CHECK(config_.batch_size > 0, "batch size must be positive, got ", config_.batch_size);
  SP_CHECK(config_.grad_accum > 0, "gradient accumulation steps must be positive, got ",
           config_.grad_accum);
  SP_CHECK(config_.epochs > 0 || config_.max_steps > 0, "need epochs > 0 or max_steps > 0");
  SP_CHECK(!train_.empty(), "no training examples");
  batches_per_epoch_ = (int64_t(train_.size()) + config_.batch_size - 1) / config_.batch_size;
  const int64_t steps_per_epoch = (batches_per_epoch_ + config_.grad_accum - 1) / config_.grad_accum;
  total_steps_ = config_.max_steps > 0 ? config_.max_steps : steps_per_epoch * config_.epochs;
  pad_id_ = tokenizer.pad_id().value_or(tokenizer.eos_id().value_or(0));
  optimizer_ = std::make_unique<AdamW>(model_.adapter().parameters(), config_.optim);
}

void Trainer::emit(const TrainEvent& event) const {
  if (on_event_) on_event_(event);
}

void Trainer::append_metrics(const json& record) const {
  std::ofstream out(fs::path(config_.output_dir) / "metrics.jsonl", std::ios::app);
  if (!out) fail(ErrorKind::kIo, config_.output_dir, "/metrics.jsonl: cannot write");
  out << record.dump() << "\n";
}

EvalResult Trainer::run_eval() const {
  EvalOptions options;
  options.metric = config_.metric;
  options.batch_size = config_.eval_batch_size;
  options.max_new_tokens = config_.max_new_tokens;
  options.pad_id = pad_id_;
  return evaluate(model_, tokenizer_, *eval_data_, eval_, options);
}

void Trainer::save_checkpoint(int64_t step, int64_t epoch, int64_t batch_in_epoch,
                              const TrainResult& result) {
  const fs::path out(config_.output_dir);
  const fs::path staged = out / (std::string(kStateDir) + ".staged");
  const fs::path state = out / kStateDir;
  const fs::path previous = out / (std::string(kStateDir) + ".previous");
  std::error_code ec;
  fs::remove_all(staged, ec);
  fs::create_directories(staged);
  save_adapter(staged.string(), model_.adapter());
  std::vector<std::pair<std::string, Tensor>> moments;
  auto named = model_.adapter().named_parameters();
  for (size_t i = 0; i < named.size(); ++i) {
    moments.push_back({"exp_avg." + named[i].first, optimizer_->exp_avg()[i]});
    moments.push_back({"exp_avg_sq." + named[i].first, optimizer_->exp_avg_sq()[i]});
  }
  save_safetensors((staged / "optimizer.safetensors").string(), moments, {{"format", "pt"}});
  json meta = {{"version", kStateVersion},
               {"global_step", step},
               {"epoch", epoch},
               {"batch_in_epoch", batch_in_epoch},
               {"optimizer_steps", optimizer_->steps_taken()},
               {"best_step", result.best_step},
               {"best_accuracy", result.best_eval ? result.best_eval->accuracy : 0.0},
               {"best_loss", result.best_eval ? result.best_eval->loss : 0.0},
               {"seed", config_.seed},
               {"batch_size", config_.batch_size},
               {"grad_accum", config_.grad_accum},
               {"total_steps", total_steps_},
               {"threads", num_threads()}};
  write_file_atomically((staged / "trainer_state.json").string(), meta.dump(2));
  // Swap the directories: at every moment one complete state exists on disk.
  fs::remove_all(previous, ec);
  if (fs::exists(state)) fs::rename(state, previous);
  fs::rename(staged, state);
  fs::remove_all(previous, ec);
  save_adapter(out.string(), model_.adapter());  // the output dir itself stays a PEFT adapter
  TrainEvent event;
  event.kind = TrainEvent::Kind::kCheckpoint;
  event.step = step;
  event.total_steps = total_steps_;
  event.message = "checkpoint saved at step " + std::to_string(step);
  emit(event);
}

void Trainer::load_checkpoint(int64_t& step, int64_t& epoch, int64_t& batch_in_epoch,
                              TrainResult& result) {
  const fs::path out(config_.output_dir);
  fs::path state = out / kStateDir;
  if (!fs::exists(state) && fs::exists(out / (std::string(kStateDir) + ".previous")))
    state = out / (std::string(kStateDir) + ".previous");  // interrupted during the swap
  if (!fs::exists(state / "trainer_state.json"))
    fail(ErrorKind::kIo, state.string(), ": no checkpoint to resume from (missing trainer_state.json)");
  json meta;
  try {
    std::ifstream in(state / "trainer_state.json");
    meta = json::parse(in);
  } catch (const json::exception& e) {
    fail(ErrorKind::kFormat, (state / "trainer_state.json").string(), ": ", e.what());
  }
  auto check_same = [&](const char* key, int64_t now) {
    int64_t then = meta.at(key).get<int64_t>();
    SP_CHECK(then == now, "--resume: the checkpoint was trained with ", key, " = ", then,
             " but this run has ", now, "; resuming would not continue the same run");
  };
  check_same("batch_size", config_.batch_size);
  check_same("grad_accum", config_.grad_accum);
  check_same("total_steps", total_steps_);
  SP_CHECK(meta.at("seed").get<uint64_t>() == config_.seed, "--resume: the checkpoint used seed ",
           meta.at("seed").get<uint64_t>(), " but this run has seed ", config_.seed);
  if (meta.at("threads").get<int>() != num_threads())
    warn("--resume: the checkpoint was written with ", meta.at("threads").get<int>(),
         " threads and this run uses ", num_threads(),
         "; results stay correct but may differ in the last bits");
  AdapterFiles files = read_adapter_files(state.string());
  model_.adapter().load_state(files.tensors, (state / kAdapterWeightsFile).string());
  auto moments = SafetensorsFile::open((state / "optimizer.safetensors").string());
  std::vector<Tensor> exp_avg, exp_avg_sq;
  for (auto& [name, param] : model_.adapter().named_parameters()) {
    exp_avg.push_back(moments->get("exp_avg." + name));
    exp_avg_sq.push_back(moments->get("exp_avg_sq." + name));
  }
  optimizer_->load_state(meta.at("optimizer_steps").get<int64_t>(), exp_avg, exp_avg_sq);
  step = meta.at("global_step").get<int64_t>();
  epoch = meta.at("epoch").get<int64_t>();
  batch_in_epoch = meta.at("batch_in_epoch").get<int64_t>();
  result.best_step = meta.at("best_step").get<int64_t>();
  if (result.best_step >= 0) {
    result.best_eval = EvalResult{};
    result.best_eval->accuracy = meta.at("best_accuracy").get<double>();
    result.best_eval->loss = meta.at("best_loss").get<double>();
  }
}

TrainResult Trainer::run(bool resume) {
  fs::create_directories(config_.output_dir);
  stop_requested().store(false);
  TrainResult result;
  int64_t step = 0, epoch = 0, batch_in_epoch = 0;
  if (resume) {
    load_checkpoint(step, epoch, batch_in_epoch, result);
  } else {
    std::ofstream(fs::path(config_.output_dir) / "metrics.jsonl", std::ios::trunc);
  }
  const auto start = std::chrono::steady_clock::now();
  const float base_lr = config_.optim.lr;
  std::vector<Tensor> params = model_.adapter().parameters();
  int64_t tokens_since_log = 0;
  auto last_log = start;

  auto better = [&](const EvalResult& r) {
    if (!result.best_eval) return true;
    return config_.metric == Metric::kLoss ? r.loss < result.best_eval->loss
                                           : r.accuracy > result.best_eval->accuracy;
  };
  auto evaluate_now = [&](int64_t at_step) {
    if (!eval_data_ || eval_.empty()) return;
    EvalResult r = run_eval();
    result.last_eval = r;
    append_metrics({{"type", "eval"}, {"step", at_step}, {"loss", r.loss}, {"metric", metric_name(config_.metric)},
                    {"accuracy", r.accuracy}, {"examples", r.examples}});
    TrainEvent event;
    event.kind = TrainEvent::Kind::kEval;
    event.step = at_step;
    event.total_steps = total_steps_;
    event.eval = r;
    emit(event);
    if (config_.keep_best && better(r)) {
      result.best_eval = r;
      result.best_step = at_step;
      save_adapter((fs::path(config_.output_dir) / "best").string(), model_.adapter());
    }
  };

  while (step < total_steps_) {
    std::vector<size_t> order = epoch_order(train_, config_.seed, epoch, config_.shuffle,
                                            config_.batch_size, config_.bucket_batches);
    while (batch_in_epoch < batches_per_epoch_ && step < total_steps_) {
      double step_loss = 0.0;
      int64_t micro = 0;
      for (; micro < config_.grad_accum && batch_in_epoch < batches_per_epoch_; ++micro) {
        const size_t begin = size_t(batch_in_epoch * config_.batch_size);
        std::vector<size_t> indices(order.begin() + long(begin),
                                    order.begin() + long(std::min(order.size(), begin + size_t(config_.batch_size))));
        Batch batch = collate(train_, indices, pad_id_);
        ForwardOptions options;
        options.train = config_.dropout;
        options.dropout_seed = mix_seed(config_.seed, uint64_t(step), uint64_t(micro));
        options.checkpoint_activations = config_.checkpoint_activations;
        PeftBatch pb{batch.input_ids, batch.attention_mask, batch.labels, batch.task_ids, {}};
        PeftOutput out = model_.forward(pb, options);
        const float loss = out.loss.item();
        if (!std::isfinite(loss))
          fail(ErrorKind::kNumerical, "loss is ", loss, " at step ", step + 1,
               "; training stopped. The last good checkpoint is in ", config_.output_dir, "/",
               kStateDir, " (if one was saved); lower the learning rate or check the data");
        scale(out.loss, 1.0f / float(config_.grad_accum)).backward();
        step_loss += double(loss) / double(config_.grad_accum);
        tokens_since_log += batch.text_tokens;
        ++batch_in_epoch;
      }
      const double lr = base_lr * schedule_factor(config_.schedule, step, config_.warmup_steps, total_steps_);
      optimizer_->set_lr(float(lr));
      const double norm = config_.max_grad_norm > 0 ? clip_grad_norm(params, config_.max_grad_norm)
                                                    : grad_norm(params);
      if (!std::isfinite(norm))
        fail(ErrorKind::kNumerical, "gradient norm is ", norm, " at step ", step + 1,
             "; training stopped. The last good checkpoint is in ", config_.output_dir, "/", kStateDir,
             " (if one was saved)");
      optimizer_->step();
      optimizer_->zero_grad();
      ++step;
      result.steps = step;
      result.final_loss = step_loss;

      const auto now = std::chrono::steady_clock::now();
      const double window = std::chrono::duration<double>(now - last_log).count();
      TrainEvent event;
      event.step = step;
      event.total_steps = total_steps_;
      event.epoch = epoch;
      event.loss = step_loss;
      event.lr = lr;
      event.grad_norm = norm;
      event.tokens_per_second = window > 0 ? double(tokens_since_log) / window : 0.0;
      event.elapsed_seconds = std::chrono::duration<double>(now - start).count();
      tokens_since_log = 0;
      last_log = now;
      append_metrics({{"type", "train"}, {"step", step}, {"epoch", epoch}, {"loss", step_loss},
                      {"lr", lr}, {"grad_norm", norm}, {"tokens_per_second", event.tokens_per_second},
                      {"elapsed", event.elapsed_seconds}});
      emit(event);

      if (config_.eval_every > 0 && step % config_.eval_every == 0 && step < total_steps_) evaluate_now(step);
      if (stop_requested().load()) {
        save_checkpoint(step, epoch + (batch_in_epoch >= batches_per_epoch_ ? 1 : 0),
                        batch_in_epoch >= batches_per_epoch_ ? 0 : batch_in_epoch, result);
        result.interrupted = true;
        return result;
      }
      if (config_.save_every > 0 && step % config_.save_every == 0 && step < total_steps_)
        save_checkpoint(step, epoch + (batch_in_epoch >= batches_per_epoch_ ? 1 : 0),
                        batch_in_epoch >= batches_per_epoch_ ? 0 : batch_in_epoch, result);
    }
    if (batch_in_epoch >= batches_per_epoch_) {
      ++epoch;
      batch_in_epoch = 0;
    }
  }
  evaluate_now(step);
  save_checkpoint(step, epoch, batch_in_epoch, result);
  TrainEvent done;
  done.kind = TrainEvent::Kind::kDone;
  done.step = step;
  done.total_steps = total_steps_;
  emit(done);
  return result;
}

}  // namespace sp
