// The training loop, checkpoints and resume.
#include "peft/trainer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>

#include "engine/durable_fs.h"
#include "engine/error.h"
#include "engine/input_file.h"
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

// Crash safety. training_state/ is the authoritative checkpoint and is replaced as a whole by
// commit_directory (complete new directory, fsynced, renamed to training_state.next — the commit
// point — then swapped in); best/ the same way. The output directory's own top-level
// adapter_config.json + adapter_model.safetensors must keep their paths for PEFT's
// from_pretrained, so they cannot switch in one rename: they are a publication of
// training_state/'s adapter, each file replaced atomically after the checkpoint commits, and
// re-published from training_state/ on every resume. After a kill -9 at any point the top level
// is an older or newer complete adapter (or, before the first checkpoint, possibly a config
// without weights); `train --resume` restores the exact pair and cleans every staging leftover.
constexpr const char* kStateDir = "training_state";
constexpr const char* kBestDir = "best";
constexpr const char* kMetricsFile = "metrics.jsonl";
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr int kStateVersion = 3;  // 2 added metrics_bytes and eval_pending, 3 world_size

uint64_t mix_seed(uint64_t seed, uint64_t step, uint64_t micro) {
  // splitmix64 of the triple: distinct dropout streams per micro-batch, reproducible on resume.
  uint64_t z = seed ^ (step * 0x9E3779B97F4A7C15ull) ^ (micro * 0xD1B54A32D192ED03ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void handle_stop_signal(int) {
  Trainer::stop_requested().store(true);
}

// Typed, range-checked reads of trainer_state.json fields; errors name the file and field.
[[noreturn]] void bad_field(const std::string& path, const char* key, const std::string& expected,
                            const nlohmann::json& found) {
  std::string shown = found.dump();
  if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
  fail(ErrorKind::kFormat, path, ": field '", key, "' must be ", expected, ", found ",
       found.type_name(), " ", shown);
}

const nlohmann::json& field(const nlohmann::json& meta, const std::string& path, const char* key) {
  auto it = meta.find(key);
  if (it == meta.end())
    fail(ErrorKind::kFormat, path, ": missing field '", key,
         "' (the checkpoint is incomplete or from another program)");
  return *it;
}

int64_t int_field(const nlohmann::json& meta, const std::string& path, const char* key, int64_t lo,
                  int64_t hi) {
  const nlohmann::json& v = field(meta, path, key);
  const std::string expected =
      "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
  if (!v.is_number_integer()) bad_field(path, key, expected, v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    bad_field(path, key, expected, v);
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad_field(path, key, expected, v);
  return x;
}

uint64_t uint_field(const nlohmann::json& meta, const std::string& path, const char* key) {
  const nlohmann::json& v = field(meta, path, key);
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
    bad_field(path, key, "a non-negative integer", v);
  return v.get<uint64_t>();
}

double number_field(const nlohmann::json& meta, const std::string& path, const char* key) {
  const nlohmann::json& v = field(meta, path, key);
  if (!v.is_number() || !std::isfinite(v.get<double>())) bad_field(path, key, "a finite number", v);
  return v.get<double>();
}

bool bool_field(const nlohmann::json& meta, const std::string& path, const char* key) {
  const nlohmann::json& v = field(meta, path, key);
  if (!v.is_boolean()) bad_field(path, key, "true or false", v);
  return v.get<bool>();
}

int64_t ceil_div(int64_t a, int64_t b) {
  return a / b + (a % b != 0 ? 1 : 0);
}  // a >= 0, b > 0

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
  SP_CHECK(config_.epochs >= 0 && config_.max_steps >= 0,
           "epochs and max_steps must not be negative, got ", config_.epochs, " and ",
           config_.max_steps);
  SP_CHECK(config_.epochs > 0 || config_.max_steps > 0, "need epochs > 0 or max_steps > 0");
  SP_CHECK(config_.warmup_steps >= 0 && config_.eval_every >= 0 && config_.save_every >= 0 &&
               config_.log_every >= 0 && config_.bucket_batches >= 0,
           "warmup_steps, eval_every, save_every, log_every and bucket_batches must not be "
           "negative");
  SP_CHECK(config_.eval_batch_size > 0, "evaluation batch size must be positive, got ",
           config_.eval_batch_size);
  SP_CHECK(config_.max_new_tokens >= 0, "max_new_tokens must not be negative, got ",
           config_.max_new_tokens);
  SP_CHECK(std::isfinite(config_.max_grad_norm) && config_.max_grad_norm >= 0,
           "max_grad_norm must be a finite number >= 0 (0 disables clipping), got ",
           config_.max_grad_norm);
  SP_CHECK(!train_.empty(), "no training examples");
  if (config_.communicator) comm_ = config_.communicator;
  micro_batches_per_step_ = config_.grad_accum * comm_->size();  // both <= 2^31: no overflow
  // Overflow-safe: a batch larger than the dataset is simply one batch.
  batches_per_epoch_ = ceil_div(int64_t(train_.size()), config_.batch_size);
  const int64_t steps_per_epoch = ceil_div(batches_per_epoch_, micro_batches_per_step_);
  if (config_.max_steps > 0) {
    total_steps_ = config_.max_steps;
  } else if (__builtin_mul_overflow(steps_per_epoch, config_.epochs, &total_steps_)) {
    fail(ErrorKind::kInvalidArgument, "epochs = ", config_.epochs, " times ", steps_per_epoch,
         " steps per epoch overflows a 64-bit step count");
  }
  pad_id_ = tokenizer.pad_id().value_or(tokenizer.eos_id().value_or(0));
  optimizer_ = std::make_unique<AdamW>(model_.adapter().parameters(), config_.optim);
}

Trainer::~Trainer() {
  if (metrics_fd_ >= 0) ::close(metrics_fd_);
}

void Trainer::emit(const TrainEvent& event) const {
  if (on_event_) on_event_(event);
}

// metrics.jsonl is opened without following a symlink and refused if it is one: writing through
// a link truncates whatever it points to, and silently replacing the link would discard what
// the user set up there. The error says what to do.
void Trainer::open_metrics() {
  if (metrics_fd_ >= 0) return;
  const std::string path = (fs::path(config_.output_dir) / kMetricsFile).string();
  fs_hook_point("open", path);
  // O_NONBLOCK: a FIFO planted there must not block open(); it is refused just below.
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK,
                  0644);
  if (fd < 0) {
    if (errno == ELOOP)
      fail(ErrorKind::kIo, path,
           ": is a symbolic link; softprompt does not write metrics through a link (it would "
           "overwrite the link's target). Remove the link or choose another output directory");
    fail(ErrorKind::kIo, path, ": cannot open for writing: ", std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorKind::kIo, path, ": not a regular file; cannot write metrics there");
  }
  metrics_fd_ = fd;
}

int64_t Trainer::metrics_size() const {
  struct stat st;
  if (::fstat(metrics_fd_, &st) != 0)
    fail(ErrorKind::kIo, config_.output_dir, "/", kMetricsFile,
         ": cannot stat: ", std::strerror(errno));
  return int64_t(st.st_size);
}

void Trainer::append_metrics(const json& record) const {
  if (!is_root()) return;
  const std::string line = record.dump() + "\n";
  fs_hook_point("write", (fs::path(config_.output_dir) / kMetricsFile).string());
  // One write per record (O_APPEND): a crash leaves at most a partial last line, which resume
  // truncates away with everything after the checkpoint.
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(metrics_fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      fail(ErrorKind::kIo, config_.output_dir, "/", kMetricsFile,
           ": write failed: ", std::strerror(errno));
    p += n;
    left -= size_t(n);
  }
}

EvalResult Trainer::run_eval() const {
  EvalOptions options;
  options.metric = config_.metric;
  options.batch_size = config_.eval_batch_size;
  options.max_new_tokens = config_.max_new_tokens;
  options.pad_id = pad_id_;
  options.communicator = comm_;
  return evaluate(model_, tokenizer_, *eval_data_, eval_, options);
}

void Trainer::prepare_output_dir() {
  const fs::path out(config_.output_dir);
  std::error_code ec;
  if (!fs::is_directory(out, ec)) {
    fs_hook_point("mkdir", out.string());
    fs::create_directories(out, ec);
    if (ec)
      fail(ErrorKind::kIo, out.string(), ": cannot create the output directory: ", ec.message());
  }
  // A state left by the previous writer (one training_state.previous, renamed before the swap).
  const std::string state = (out / kStateDir).string(), legacy = state + ".previous";
  if (!path_exists(state) && path_exists(legacy)) rename_path(legacy, state);
  remove_tree(legacy);
  // Finish or roll back whatever a killed run was in the middle of, then drop its staging.
  recover_directory(state);
  recover_directory((out / kBestDir).string());
  remove_stale_adapter_temporaries(out.string());
  remove_stale_temporaries(out.string(), {"tasks.json"});
  for (const char* legacy_staged :
       {".adapter_model.safetensors.staged", ".adapter_config.json.staged"})
    remove_tree((out / legacy_staged).string());
}

void Trainer::save_checkpoint(Position at, const TrainResult& result, int64_t metrics_bytes) {
  if (!is_root()) return;
  const fs::path out(config_.output_dir);
  commit_directory((out / kStateDir).string(), [&](const std::string& staged) {
    save_adapter(staged, model_.adapter());
    std::vector<std::pair<std::string, Tensor>> moments;
    auto named = model_.adapter().named_parameters();
    for (size_t i = 0; i < named.size(); ++i) {
      moments.push_back({"exp_avg." + named[i].first, optimizer_->exp_avg()[i]});
      moments.push_back({"exp_avg_sq." + named[i].first, optimizer_->exp_avg_sq()[i]});
    }
    save_safetensors((fs::path(staged) / kOptimizerFile).string(), moments, {{"format", "pt"}});
    json meta = {{"version", kStateVersion},
                 {"global_step", at.step},
                 {"epoch", at.epoch},
                 {"batch_in_epoch", at.batch_in_epoch},
                 {"eval_pending", at.eval_pending},
                 {"optimizer_steps", optimizer_->steps_taken()},
                 {"best_step", result.best_step},
                 {"best_accuracy", result.best_eval ? result.best_eval->accuracy : 0.0},
                 {"best_loss", result.best_eval ? result.best_eval->loss : 0.0},
                 {"seed", config_.seed},
                 {"batch_size", config_.batch_size},
                 {"grad_accum", config_.grad_accum},
                 {"world_size", comm_->size()},
                 {"total_steps", total_steps_},
                 {"threads", num_threads()},
                 {"metrics_bytes", metrics_bytes}};
    write_file_atomically((fs::path(staged) / kStateFile).string(), meta.dump(2));
  });
  save_adapter(out.string(), model_.adapter());  // the output dir itself stays a PEFT adapter
  TrainEvent event;
  event.kind = TrainEvent::Kind::kCheckpoint;
  event.step = at.step;
  event.total_steps = total_steps_;
  event.message = "checkpoint saved at step " + std::to_string(at.step);
  emit(event);
}

Trainer::Position Trainer::load_checkpoint(TrainResult& result, int64_t& metrics_bytes) {
  const fs::path state = fs::path(config_.output_dir) / kStateDir;
  const std::string path = (state / kStateFile).string();
  if (!fs::exists(path))
    fail(ErrorKind::kIo, state.string(), ": no checkpoint to resume from (missing ", kStateFile,
         ")");
  const json meta = read_json_file(path, size_t(1) << 20);
  if (!meta.is_object())
    fail(ErrorKind::kFormat, path, ": expected a JSON object of trainer state fields, found ",
         meta.type_name());
  const int64_t version = int_field(meta, path, "version", 1, kStateVersion);
  auto check_same = [&](const char* key, int64_t now) {
    const int64_t then = int_field(meta, path, key, 1, std::numeric_limits<int64_t>::max());
    SP_CHECK(then == now, "--resume: the checkpoint was trained with ", key, " = ", then,
             " but this run has ", now, "; resuming would not continue the same run");
  };
  check_same("batch_size", config_.batch_size);
  // The data order is defined per global micro-batch, so a run on M ranks continues one of N
  // ranks exactly when grad_accum x ranks is the same.
  const int64_t then_accum = int_field(meta, path, "grad_accum", 1, 1 << 30);
  const int64_t then_ranks = version >= 3 ? int_field(meta, path, "world_size", 1, 1 << 20) : 1;
  SP_CHECK(then_accum * then_ranks == micro_batches_per_step_, "--resume: the checkpoint took ",
           then_accum * then_ranks, " micro-batches per step (grad_accum ", then_accum, " x ",
           then_ranks, " ranks) but this run takes ", micro_batches_per_step_, " (grad_accum ",
           config_.grad_accum, " x ", comm_->size(),
           " ranks); choose --grad-accum so that the products match to continue the same run");
  check_same("total_steps", total_steps_);
  const uint64_t seed = uint_field(meta, path, "seed");
  SP_CHECK(seed == config_.seed, "--resume: the checkpoint used seed ", seed,
           " but this run has seed ", config_.seed);
  const int64_t threads = int_field(meta, path, "threads", 1, 1 << 20);
  if (threads != num_threads())
    warn("--resume: the checkpoint was written with ", threads, " threads and this run uses ",
         num_threads(), "; results stay correct but may differ in the last bits");
  Position at;
  at.step = int_field(meta, path, "global_step", 0, total_steps_);
  // Every epoch holds at least one step, so the epoch count never exceeds the step count.
  at.epoch = int_field(meta, path, "epoch", 0, at.step);
  at.batch_in_epoch = int_field(meta, path, "batch_in_epoch", 0, batches_per_epoch_ - 1);
  const int64_t optimizer_steps = int_field(meta, path, "optimizer_steps", at.step, at.step);
  result.best_step = int_field(meta, path, "best_step", -1, at.step);
  const double best_accuracy = number_field(meta, path, "best_accuracy");
  const double best_loss = number_field(meta, path, "best_loss");
  if (result.best_step >= 0) {
    result.best_eval = EvalResult{};
    result.best_eval->accuracy = best_accuracy;
    result.best_eval->loss = best_loss;
  }
  metrics_bytes =
      version >= 2 ? int_field(meta, path, "metrics_bytes", 0, std::numeric_limits<int64_t>::max())
                   : -1;
  at.eval_pending = version >= 2 && bool_field(meta, path, "eval_pending");

  AdapterFiles files = read_adapter_files(state.string());
  model_.adapter().load_state(files.tensors, (state / kAdapterWeightsFile).string());
  const std::string moments_path = (state / kOptimizerFile).string();
  auto moments = SafetensorsFile::open(moments_path);
  const auto named = model_.adapter().named_parameters();
  std::vector<Tensor> exp_avg, exp_avg_sq;
  for (auto& [name, param] : named) {
    for (const char* kind : {"exp_avg.", "exp_avg_sq."}) {
      const bool squares = std::string_view(kind) == "exp_avg_sq.";
      const std::string key = kind + name;
      const std::vector<std::string> names = moments->names();
      if (std::find(names.begin(), names.end(), key) == names.end())
        fail(ErrorKind::kFormat, moments_path, ": missing tensor '", key,
             "' (the AdamW moment of parameter '", name, "')");
      const SafetensorsEntry& entry = moments->entry(key);
      if (entry.dtype != "F32" || entry.shape != param.shape())
        fail(ErrorKind::kFormat, moments_path, ": tensor '", key, "' must be F32 ",
             shape_str(param.shape()), " like its parameter, found ", entry.dtype, " ",
             shape_str(entry.shape));
      Tensor t = moments->get(key);
      for (float v : t.to_floats())
        if (!std::isfinite(v) || (squares && v < 0))
          fail(ErrorKind::kFormat, moments_path, ": tensor '", key, "' holds ", v,
               "; AdamW moments are finite", squares ? " and non-negative" : "");
      (squares ? exp_avg_sq : exp_avg).push_back(t);
    }
  }
  if (moments->names().size() != 2 * named.size())
    fail(ErrorKind::kFormat, moments_path, ": expected ", 2 * named.size(),
         " tensors (exp_avg and exp_avg_sq per parameter), found ", moments->names().size());
  optimizer_->load_state(optimizer_steps, exp_avg, exp_avg_sq);
  return at;
}

void Trainer::sync_from_root(Position& at, TrainResult& result) {
  json meta;
  if (is_root())
    meta = {{"step", at.step},
            {"epoch", at.epoch},
            {"batch_in_epoch", at.batch_in_epoch},
            {"eval_pending", at.eval_pending},
            {"optimizer_steps", optimizer_->steps_taken()},
            {"best_step", result.best_step},
            {"best_accuracy", result.best_eval ? result.best_eval->accuracy : 0.0},
            {"best_loss", result.best_eval ? result.best_eval->loss : 0.0}};
  // JSON numbers print doubles to round trip, so every rank compares against the same best.
  meta = json::parse(broadcast_string(*comm_, is_root() ? meta.dump() : std::string(), 0));
  std::vector<Tensor> state = model_.adapter().parameters();
  std::vector<Tensor> exp_avg, exp_avg_sq;
  for (size_t i = 0; i < state.size(); ++i) {
    exp_avg.push_back(optimizer_->exp_avg()[i].clone());
    exp_avg_sq.push_back(optimizer_->exp_avg_sq()[i].clone());
  }
  state.insert(state.end(), exp_avg.begin(), exp_avg.end());
  state.insert(state.end(), exp_avg_sq.begin(), exp_avg_sq.end());
  broadcast_tensors(*comm_, state, 0);
  if (is_root()) return;
  at.step = meta["step"].get<int64_t>();
  at.epoch = meta["epoch"].get<int64_t>();
  at.batch_in_epoch = meta["batch_in_epoch"].get<int64_t>();
  at.eval_pending = meta["eval_pending"].get<bool>();
  result.steps = at.step;
  result.best_step = meta["best_step"].get<int64_t>();
  if (result.best_step >= 0) {
    result.best_eval = EvalResult{};
    result.best_eval->accuracy = meta["best_accuracy"].get<double>();
    result.best_eval->loss = meta["best_loss"].get<double>();
  }
  optimizer_->load_state(meta["optimizer_steps"].get<int64_t>(), exp_avg, exp_avg_sq);
}

void Trainer::all_reduce_gradients(const std::vector<Tensor>& params) {
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    // A rank without a micro-batch in this step (the last, short step of an epoch) has none.
    if (!p.grad().defined()) {
      Tensor zeros = Tensor::zeros(p.shape(), DType::F32, p.device());
      Tensor(p).set_grad(zeros);
    }
    grads.push_back(p.grad());
  }
  comm_->all_reduce_sum(grads);
}

TrainResult Trainer::run(bool resume) {
  stop_requested().store(false);
  if (is_root()) {
    prepare_output_dir();
    open_metrics();
  }
  TrainResult result;
  Position at;
  if (!is_root()) {
    // Rank 0 alone reads and writes the output directory; the others take its state below.
  } else if (resume) {
    int64_t metrics_bytes = -1;
    at = load_checkpoint(result, metrics_bytes);
    // Re-publish the checkpoint's adapter: the top-level pair may lag behind training_state/
    // (or be half of a first save) when the previous run was killed.
    save_adapter(config_.output_dir, model_.adapter());
    // One record per step: drop what the killed run logged after its checkpoint.
    if (metrics_bytes >= 0 && metrics_bytes <= metrics_size()) {
      fs_hook_point("ftruncate", (fs::path(config_.output_dir) / kMetricsFile).string());
      if (::ftruncate(metrics_fd_, metrics_bytes) != 0)
        fail(ErrorKind::kIo, config_.output_dir, "/", kMetricsFile,
             ": cannot truncate: ", std::strerror(errno));
    } else if (metrics_bytes >= 0) {
      warn(config_.output_dir, "/", kMetricsFile,
           " is shorter than when the checkpoint was saved (", metrics_size(), " < ", metrics_bytes,
           " bytes); appending to it as it is");
    }
  } else {
    fs_hook_point("ftruncate", (fs::path(config_.output_dir) / kMetricsFile).string());
    if (::ftruncate(metrics_fd_, 0) != 0)
      fail(ErrorKind::kIo, config_.output_dir, "/", kMetricsFile,
           ": cannot truncate: ", std::strerror(errno));
  }
  if (comm_->size() > 1) sync_from_root(at, result);
  int64_t& step = at.step;
  int64_t& epoch = at.epoch;
  int64_t& batch_in_epoch = at.batch_in_epoch;
  result.steps = step;
  const auto start = std::chrono::steady_clock::now();
  const float base_lr = config_.optim.lr;
  std::vector<Tensor> params = model_.adapter().parameters();
  int64_t tokens_since_log = 0;
  auto last_log = start;
  const int64_t n_examples = int64_t(train_.size());
  // epoch_order multiplies these: clamped, they give the same order without overflowing.
  const int64_t order_batch = std::min(config_.batch_size, n_examples);
  const int64_t order_bucket = std::min(config_.bucket_batches, batches_per_epoch_);

  auto position = [&](bool eval_pending) {
    Position p = at;
    if (p.batch_in_epoch >= batches_per_epoch_) {
      ++p.epoch;
      p.batch_in_epoch = 0;
    }
    p.eval_pending = eval_pending;
    return p;
  };
  auto checkpoint = [&](bool eval_pending) {
    save_checkpoint(position(eval_pending), result, is_root() ? metrics_size() : 0);
  };
  auto interrupted = [&](bool eval_pending) {
    checkpoint(eval_pending);
    result.interrupted = true;
    return result;
  };
  auto better = [&](const EvalResult& r) {
    if (!result.best_eval) return true;
    return config_.metric == Metric::kLoss ? r.loss < result.best_eval->loss
                                           : r.accuracy > result.best_eval->accuracy;
  };
  auto evaluate_now = [&](int64_t at_step) {
    if (!eval_data_ || eval_.empty()) return;
    EvalResult r = run_eval();
    result.last_eval = r;
    append_metrics({{"type", "eval"},
                    {"step", at_step},
                    {"loss", r.loss},
                    {"metric", metric_name(config_.metric)},
                    {"accuracy", r.accuracy},
                    {"examples", r.examples}});
    TrainEvent event;
    event.kind = TrainEvent::Kind::kEval;
    event.step = at_step;
    event.total_steps = total_steps_;
    event.eval = r;
    emit(event);
    if (config_.keep_best && better(r)) {
      result.best_eval = r;
      result.best_step = at_step;
      if (is_root())
        commit_directory(
            (fs::path(config_.output_dir) / kBestDir).string(),
            [&](const std::string& staged) { save_adapter(staged, model_.adapter()); });
    }
  };
  // A periodic evaluation that fails must not cost the steps trained since the last checkpoint:
  // save one marked eval_pending (resume runs that evaluation first), then report the error.
  auto periodic_eval = [&]() {
    const int64_t metrics_before = is_root() ? metrics_size() : 0;
    const TrainResult before = result;
    try {
      evaluate_now(step);
    } catch (...) {
      try {
        save_checkpoint(position(true), before, metrics_before);
      } catch (const std::exception& e) {
        warn("could not save a checkpoint after the failed evaluation: ", e.what());
      }
      throw;
    }
  };

  // One process polls the stop flag before every micro-batch. Ranks must agree on where to
  // stop (or one would wait in a collective for the others), so with several ranks the flag
  // travels with each step's sums and the run stops after that step, on every rank.
  const int64_t ranks = comm_->size(), rank = comm_->rank();
  bool stop_agreed = false;
  auto stop_now = [&] { return ranks == 1 ? stop_requested().load() : stop_agreed; };

  if (at.eval_pending) periodic_eval();
  while (step < total_steps_) {
    if (stop_now()) return interrupted(false);
    std::vector<size_t> order =
        epoch_order(train_, config_.seed, epoch, config_.shuffle, order_batch, order_bucket);
    while (batch_in_epoch < batches_per_epoch_ && step < total_steps_) {
      const int64_t step_first_batch = batch_in_epoch;
      const int64_t step_batches =
          std::min(micro_batches_per_step_, batches_per_epoch_ - step_first_batch);
      double step_loss = 0.0;
      int64_t step_tokens = 0;
      // Each micro-batch's loss stays on the device until the step's last backward is queued:
      // reading it at once would idle a GPU while the host queues that micro-batch's backward.
      std::vector<Tensor> micro_losses;
      // This rank's micro-batches of the step: global indices rank, rank + ranks, ...
      for (int64_t micro = rank; micro < step_batches; micro += ranks) {
        if (ranks == 1 && stop_requested().load()) {
          // Honoured between micro-batches too: the partial step is dropped and the checkpoint
          // is the last completed step, so resume redoes this step from its first batch.
          optimizer_->zero_grad();
          batch_in_epoch = step_first_batch;
          return interrupted(false);
        }
        // The batch index < ceil(n / batch_size), so begin < n and nothing here overflows.
        const size_t begin = size_t((step_first_batch + micro) * config_.batch_size);
        const size_t count =
            size_t(std::min<int64_t>(config_.batch_size, n_examples - int64_t(begin)));
        std::vector<size_t> indices(order.begin() + long(begin),
                                    order.begin() + long(begin + count));
        Batch batch = collate(train_, indices, pad_id_);
        ForwardOptions options;
        options.train = config_.dropout;
        options.dropout_seed = mix_seed(config_.seed, uint64_t(step), uint64_t(micro));
        options.checkpoint_activations = config_.checkpoint_activations;
        PeftBatch pb{batch.input_ids, batch.attention_mask, batch.labels, batch.task_ids, {}};
        PeftOutput out = model_.forward(pb, options);
        micro_losses.push_back(out.loss.detach().reshape({1}));
        // A host seed: the loss's backward folds it into its scale, with no device scalar.
        out.loss.backward(Tensor::full({}, 1.0f / float(micro_batches_per_step_)));
        step_tokens += batch.text_tokens;
      }
      batch_in_epoch = step_first_batch + step_batches;
      if (ranks > 1) all_reduce_gradients(params);
      const double lr =
          base_lr * schedule_factor(config_.schedule, step, config_.warmup_steps, total_steps_);
      optimizer_->set_lr(float(lr));
      // The update is queued before anything is read: the device clips, and skips the update
      // when a loss or the gradient norm is not finite, so the step's one host read (the losses
      // and the norm together) comes after it. (A data-parallel rank may have had no
      // micro-batch this step.)
      Tensor losses;
      if (!micro_losses.empty())
        losses =
            (micro_losses.size() == 1 ? micro_losses[0] : concat(micro_losses, 0)).to(DType::F32);
      const Tensor norm_on_device = optimizer_->step_if_finite(losses, config_.max_grad_norm);
      optimizer_->zero_grad();
      const std::vector<float> read =
          (losses.defined() ? concat({losses, norm_on_device}, 0) : norm_on_device).to_floats();
      // A non-finite loss or norm fails the run. The device skipped the update, leaving the
      // adapter and the optimiser as they were, and the gradients are cleared, so a model trained
      // again starts clean. Data-parallel ranks agree through the summed loss: every rank fails.
      const double norm = read.back();
      bool losses_finite = true;
      float bad_loss = 0.0f;
      for (size_t i = 0; i + 1 < read.size(); ++i) {
        if (!std::isfinite(read[i]) && losses_finite) {
          losses_finite = false;
          bad_loss = read[i];
        }
        step_loss += double(read[i]) / double(micro_batches_per_step_);
      }
      if (!losses_finite || !std::isfinite(norm)) optimizer_->discard_skipped_step();
      if (ranks > 1) {
        std::vector<double> sums = {step_loss, double(step_tokens),
                                    stop_requested().load() ? 1.0 : 0.0};
        comm_->all_reduce_sum(std::span<double>(sums));
        step_loss = sums[0];
        step_tokens = int64_t(sums[1]);
        stop_agreed = sums[2] > 0;
      }
      if (!std::isfinite(step_loss))
        fail(ErrorKind::kNumerical, "loss is ", losses_finite ? step_loss : double(bad_loss),
             " at step ", step + 1, losses_finite ? " (on another rank)" : "",
             "; training stopped. The last good checkpoint is in ", config_.output_dir, "/",
             kStateDir, " (if one was saved); lower the learning rate or check the data");
      if (!std::isfinite(norm))
        fail(ErrorKind::kNumerical, "gradient norm is ", norm, " at step ", step + 1,
             "; training stopped. The last good checkpoint is in ", config_.output_dir, "/",
             kStateDir, " (if one was saved)");
      tokens_since_log += step_tokens;
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
      append_metrics({{"type", "train"},
                      {"step", step},
                      {"epoch", epoch},
                      {"loss", step_loss},
                      {"lr", lr},
                      {"grad_norm", norm},
                      {"tokens_per_second", event.tokens_per_second},
                      {"elapsed", event.elapsed_seconds}});
      emit(event);

      const bool eval_due =
          config_.eval_every > 0 && step % config_.eval_every == 0 && step < total_steps_;
      if (eval_due) {
        if (stop_now()) return interrupted(/*eval_pending=*/true);
        periodic_eval();
      }
      if (stop_now()) return interrupted(false);
      if (config_.save_every > 0 && step % config_.save_every == 0 && step < total_steps_)
        checkpoint(false);
    }
    if (batch_in_epoch >= batches_per_epoch_) {
      ++epoch;
      batch_in_epoch = 0;
    }
  }
  // The trained adapter and its checkpoint are on disk before the final evaluation runs, so an
  // evaluation error never loses the run; resuming a finished run repeats only that evaluation.
  checkpoint(false);
  if (stop_now()) {
    result.interrupted = true;  // the run is complete; resume only repeats the final evaluation
    return result;
  }
  evaluate_now(step);
  TrainEvent done;
  done.kind = TrainEvent::Kind::kDone;
  done.step = step;
  done.total_steps = total_steps_;
  emit(done);
  return result;
}

}  // namespace sp
