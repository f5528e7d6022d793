// GenerationService: request validation and queueing, the scheduler loop (admit, decode,
// finish), streaming text without partial characters or stop strings, and the prefix cache.
#include "peft/generation_service.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <future>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/ops/ops.h"
#include "engine/ops/random.h"
#include "models/tokenizer.h"

namespace sp {

using Clock = std::chrono::steady_clock;

struct CompletionState {
  std::mutex mutex;
  std::condition_variable changed;
  std::string pending;
  bool finished = false;
  std::string finish_reason;
  std::optional<ServiceError> error;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::atomic<bool> cancelled{false};
};

struct GenerationService::Job {
  CompletionRequest request;
  std::shared_ptr<CompletionState> state;
  std::vector<int64_t> prompt_ids;
  int64_t task = 0;
  GenerationConfig config;
  Generator rng;
  Clock::time_point deadline;
  std::vector<int64_t> generated;
  std::string text;    // decoded text of `generated`, cut at a stop string
  size_t emitted = 0;  // bytes of `text` already handed to the caller
  int64_t row = -1;    // DecodeBatch row id once admitted
  int64_t next_token = 0;
};

struct GenerationService::Command {
  std::function<void()> action;
  std::promise<void> done;
};

// ---- CompletionHandle ----

CompletionHandle::~CompletionHandle() {
  cancel();
}

void CompletionHandle::cancel() {
  state_->cancelled = true;
}

CompletionUpdate CompletionHandle::next(Clock::time_point until) {
  std::unique_lock lock(state_->mutex);
  state_->changed.wait_until(lock, until,
                             [&] { return !state_->pending.empty() || state_->finished; });
  CompletionUpdate update;
  update.text = std::move(state_->pending);
  state_->pending.clear();
  update.finished = state_->finished;
  update.finish_reason = state_->finish_reason;
  update.error = state_->error;
  update.prompt_tokens = state_->prompt_tokens;
  update.completion_tokens = state_->completion_tokens;
  return update;
}

CompletionUpdate CompletionHandle::wait() {
  CompletionUpdate all;
  for (;;) {
    CompletionUpdate part = next(Clock::time_point::max());
    all.text += part.text;
    if (part.finished) {
      part.text = std::move(all.text);
      return part;
    }
  }
}

// ---- GenerationService ----

namespace {

// The first byte at or before `end` that starts a UTF-8 character (never before `floor`).
size_t character_boundary(const std::string& text, size_t end, size_t floor) {
  while (end > floor && end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
    --end;
  return end;
}

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

}  // namespace

GenerationService::GenerationService(std::unique_ptr<PeftModel> model,
                                     std::shared_ptr<const Tokenizer> tokenizer,
                                     ServiceOptions options)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), options_(options) {
  SP_CHECK(model_ && tokenizer_, "GenerationService: needs a model and a tokenizer");
  SP_CHECK(!model_->is_seq2seq(), "serving covers decoder-only models; this ",
           model_->base_info().model_type, " model is encoder-decoder");
  SP_CHECK(options_.max_batch >= 1, "max_batch must be >= 1, got ", options_.max_batch);
  SP_CHECK(options_.max_queue >= 0, "max_queue must be >= 0, got ", options_.max_queue);
  SP_CHECK(options_.max_tokens_limit >= 1, "max_tokens_limit must be >= 1");
  const int64_t limit = model_->base_info().max_positions;
  // Models without a position limit (RoPE) get a context bounded by memory, not by the model.
  context_ = options_.max_context > 0 ? options_.max_context : (limit > 0 ? limit : 4096);
  if (limit > 0) context_ = std::min(context_, limit);
  SP_CHECK(context_ >= 2, "max_context must be >= 2, got ", context_);
  batch_ = std::make_unique<DecodeBatch>(model_->causal_base(), options_.max_batch, context_);
  for (const std::string& name : model_->list_adapters())
    adapters_[name] = AdapterInfo::of(model_->adapter(name).config(), {});
  thread_ = std::thread([this] { run(); });
}

GenerationService::AdapterInfo GenerationService::AdapterInfo::of(
    const PromptTuningConfig& config, std::vector<std::string> task_names) {
  return {std::move(task_names), config.total_virtual_tokens(),
          config.is_multitask() ? config.num_tasks.value_or(1) : 0};
}

GenerationService::~GenerationService() {
  stop();
}

int64_t GenerationService::resolve_task(const std::string& adapter,
                                        const std::optional<std::string>& task) const {
  if (adapter.empty()) {
    if (task)
      throw ServiceError(400, "invalid_request_error", "'task' needs an adapter as 'model'");
    return 0;
  }
  const AdapterInfo& info = adapters_.at(adapter);
  if (info.num_tasks == 0) return 0;  // plain prompt tuning ignores task ids, as PEFT does
  std::string known;
  for (const std::string& name : info.task_names) known += (known.empty() ? "" : ", ") + name;
  const std::string choices = "a task id in [0, " + std::to_string(info.num_tasks) + ")" +
                              (known.empty() ? "" : " or a name (" + known + ")");
  if (!task)
    throw ServiceError(400, "invalid_request_error",
                       "adapter '" + adapter + "' is multitask: give 'task', " + choices);
  auto it = std::find(info.task_names.begin(), info.task_names.end(), *task);
  if (it != info.task_names.end()) return int64_t(it - info.task_names.begin());
  char* end = nullptr;
  const long long id = std::strtoll(task->c_str(), &end, 10);
  if (task->empty() || *end != '\0' || id < 0 || id >= info.num_tasks)
    throw ServiceError(
        400, "invalid_request_error",
        "unknown task '" + *task + "' for adapter '" + adapter + "': expected " + choices);
  return id;
}

std::unique_ptr<CompletionHandle> GenerationService::submit(CompletionRequest request) {
  auto bad = [](const std::string& message) {
    return ServiceError(400, "invalid_request_error", message);
  };
  if (request.max_tokens < 1 || request.max_tokens > options_.max_tokens_limit)
    throw bad("'max_tokens' must be in [1, " + std::to_string(options_.max_tokens_limit) +
              "], got " + std::to_string(request.max_tokens));
  if (!(request.temperature >= 0.0f && request.temperature <= 2.0f))
    throw bad("'temperature' must be in [0, 2], got " + std::to_string(request.temperature));
  if (!(request.top_p > 0.0f && request.top_p <= 1.0f))
    throw bad("'top_p' must be in (0, 1], got " + std::to_string(request.top_p));
  if (request.stop.size() > 4)
    throw bad("'stop' takes at most 4 strings, got " + std::to_string(request.stop.size()));
  for (const std::string& stop : request.stop)
    if (stop.empty()) throw bad("'stop' strings must not be empty");

  auto job = std::make_unique<Job>();
  int64_t virtual_tokens = 0;
  {
    std::lock_guard lock(mutex_);
    if (refusing_) throw ServiceError(503, "unavailable", "the server is shutting down");
    if (!request.adapter.empty() && !adapters_.count(request.adapter)) {
      std::string loaded;
      for (const auto& [name, info] : adapters_) loaded += (loaded.empty() ? "" : ", ") + name;
      throw ServiceError(404, "not_found",
                         "model '" + request.adapter + "' is not loaded (adapters: " +
                             (loaded.empty() ? "none" : loaded) + ")");
    }
    job->task = resolve_task(request.adapter, request.task);
    if (!request.adapter.empty()) virtual_tokens = adapters_.at(request.adapter).virtual_tokens;
    job->rng = Generator(request.seed.value_or(next_seed_++));
  }
  const int64_t vocab = model_->base_info().vocab_size;
  if (request.prompt_ids) {
    for (int64_t id : *request.prompt_ids)
      if (id < 0 || id >= vocab)
        throw bad("token id " + std::to_string(id) + " in 'prompt' is outside the vocabulary [0, " +
                  std::to_string(vocab) + ")");
    job->prompt_ids = *request.prompt_ids;
  } else {
    job->prompt_ids = tokenizer_->encode(request.prompt, true);
  }
  if (job->prompt_ids.empty() && virtual_tokens == 0) throw bad("'prompt' is empty");
  const int64_t needed = virtual_tokens + int64_t(job->prompt_ids.size()) + request.max_tokens;
  if (needed > context_)
    throw bad("this server's context is " + std::to_string(context_) +
              " positions; the request needs " + std::to_string(virtual_tokens) + " virtual + " +
              std::to_string(job->prompt_ids.size()) + " prompt + " +
              std::to_string(request.max_tokens) + " max_tokens = " + std::to_string(needed));

  job->config.do_sample = request.temperature > 0.0f;
  job->config.temperature = request.temperature > 0.0f ? request.temperature : 1.0f;
  job->config.top_p = request.top_p;
  job->config.max_new_tokens = request.max_tokens;
  job->config.eos_token_id = tokenizer_->eos_id();
  job->deadline = Clock::now() + options_.request_timeout;
  job->state = std::make_shared<CompletionState>();
  job->state->prompt_tokens = int64_t(job->prompt_ids.size());
  job->request = std::move(request);
  auto handle = std::make_unique<CompletionHandle>(job->state);
  {
    std::lock_guard lock(mutex_);
    if (refusing_) throw ServiceError(503, "unavailable", "the server is shutting down");
    // Requests beyond the rows that are free now wait in the queue, up to max_queue of them.
    const int64_t free_rows = std::max<int64_t>(0, options_.max_batch - stats_.active);
    if (int64_t(queue_.size()) >= options_.max_queue + free_rows)
      throw ServiceError(429, "overloaded",
                         "the server is busy: " + std::to_string(queue_.size()) +
                             " requests are waiting (--max-queue " +
                             std::to_string(options_.max_queue) + "); retry later");
    queue_.push_back(std::move(job));
    stats_.queued = int64_t(queue_.size());
  }
  wake_.notify_one();
  return handle;
}

void GenerationService::load_adapter(const std::string& name, const std::string& dir,
                                     std::vector<std::string> task_names) {
  run_on_scheduler([this, name, dir, task_names = std::move(task_names)] {
    if (model_->has_adapter(name))
      throw ServiceError(409, "conflict",
                         "adapter '" + name + "' is already loaded; unload it first");
    try {
      model_->load_adapter(dir, name);
    } catch (const ServiceError&) {
      throw;
    } catch (const std::exception& e) {
      throw ServiceError(400, "invalid_request_error", e.what());
    }
    AdapterInfo info = AdapterInfo::of(model_->adapter(name).config(), task_names);
    std::lock_guard lock(mutex_);
    adapters_[name] = std::move(info);
  });
}

void GenerationService::unload_adapter(const std::string& name) {
  run_on_scheduler([this, name] {
    if (!model_->has_adapter(name))
      throw ServiceError(404, "not_found", "adapter '" + name + "' is not loaded");
    model_->delete_adapter(name);
    std::erase_if(prefix_cache_, [&](const auto& entry) { return entry.first.first == name; });
    std::lock_guard lock(mutex_);
    adapters_.erase(name);
  });
}

void GenerationService::run_on_scheduler(std::function<void()> action) {
  auto command = std::make_shared<Command>();
  command->action = std::move(action);
  std::future<void> done = command->done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw ServiceError(503, "unavailable", "the server is shutting down");
    commands_.push_back(command);
    stats_.pending_commands = int64_t(commands_.size());
  }
  wake_.notify_one();
  done.get();
}

std::vector<std::string> GenerationService::adapters() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, info] : adapters_) names.push_back(name);
  return names;
}

bool GenerationService::has_adapter(const std::string& name) const {
  std::lock_guard lock(mutex_);
  return adapters_.count(name) != 0;
}

void GenerationService::begin_shutdown() {
  std::lock_guard lock(mutex_);
  refusing_ = true;
}

bool GenerationService::wait_idle(Clock::time_point until) {
  std::unique_lock lock(mutex_);
  return idle_.wait_until(lock, until, [&] { return queue_.empty() && stats_.active == 0; });
}

void GenerationService::request_stop() {
  {
    std::lock_guard lock(mutex_);
    refusing_ = true;
    stopping_ = true;
  }
  wake_.notify_all();
}

void GenerationService::stop() {
  request_stop();
  if (thread_.joinable()) thread_.join();
  fail_all(ServiceError(503, "unavailable", "the server shut down before the request finished"));
}

ServiceStats GenerationService::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void GenerationService::fail_all(const ServiceError& error) {
  std::deque<std::unique_ptr<Job>> queued;
  {
    std::lock_guard lock(mutex_);
    queued.swap(queue_);
    stats_.queued = 0;
  }
  for (auto& job : queued) finish(*job, "", error);
  fail_running(error);
  std::lock_guard lock(mutex_);
  stats_.active = 0;
  idle_.notify_all();
}

void GenerationService::fail_running(const ServiceError& error) {
  for (auto& job : running_) finish(*job, "", error);
  running_.clear();
  batch_ = std::make_unique<DecodeBatch>(model_->causal_base(), options_.max_batch, context_);
}

void GenerationService::finish(Job& job, std::string reason, std::optional<ServiceError> error) {
  {
    std::lock_guard lock(job.state->mutex);
    if (job.state->finished) return;
    job.state->pending += job.text.substr(job.emitted);
    job.emitted = job.text.size();
    job.state->finished = true;
    job.state->finish_reason = std::move(reason);
    job.state->error = std::move(error);
    job.state->completion_tokens = int64_t(job.generated.size());
  }
  job.state->changed.notify_all();
  std::lock_guard lock(mutex_);
  ++(job.state->error ? stats_.failed : stats_.completed);
}

Tensor GenerationService::prompt_embeddings(const std::string& adapter, int64_t task) const {
  Tensor tasks = Tensor::from_ints({task}, {1});
  return model_->adapter(adapter).prompts(1, tasks).select(0, 0);
}

const RowKv& GenerationService::prefix_for(const std::string& adapter, int64_t task) {
  const std::pair<std::string, int64_t> key{adapter, task};
  auto it = prefix_cache_.find(key);
  const bool hit = it != prefix_cache_.end();
  {
    std::lock_guard lock(mutex_);
    ++(hit ? stats_.prefix_cache_hits : stats_.prefix_cache_misses);
  }
  if (hit) return it->second;
  RowKv prefix = extend_row(model_->causal_base(), nullptr, prompt_embeddings(adapter, task));
  return prefix_cache_.emplace(key, std::move(prefix)).first->second;
}

bool GenerationService::accept_token(Job& job, int64_t token) {
  {
    std::lock_guard lock(mutex_);
    ++stats_.generated_tokens;
  }
  if (job.config.eos_token_id && token == *job.config.eos_token_id) {
    job.generated.push_back(token);
    finish(job, "stop");
    return true;
  }
  job.generated.push_back(token);
  job.text = tokenizer_->decode(job.generated, true);
  size_t cut = std::string::npos, longest_stop = 0;
  for (const std::string& stop : job.request.stop) {
    cut = std::min(cut, job.text.find(stop));
    longest_stop = std::max(longest_stop, stop.size());
  }
  if (cut != std::string::npos) {
    job.text.resize(cut);
    finish(job, "stop");
    return true;
  }
  if (int64_t(job.generated.size()) >= job.request.max_tokens) {
    finish(job, "length");
    return true;
  }
  // Hand out what can no longer change: not the start of a stop string, not a character whose
  // bytes are still arriving (decoded as U+FFFD until they are complete).
  size_t ready = job.text.size();
  if (longest_stop > 1) ready = ready >= longest_stop - 1 ? ready - (longest_stop - 1) : 0;
  if (job.text.ends_with(kReplacementCharacter))
    ready = std::min(ready, job.text.size() - kReplacementCharacter.size());
  ready = character_boundary(job.text, std::max(ready, job.emitted), job.emitted);
  if (ready > job.emitted) {
    {
      std::lock_guard lock(job.state->mutex);
      job.state->pending += job.text.substr(job.emitted, ready - job.emitted);
      job.state->completion_tokens = int64_t(job.generated.size());
    }
    job.emitted = ready;
    job.state->changed.notify_all();
  }
  return false;
}

std::optional<ServiceError> GenerationService::abandoned(const Job& job, bool running) const {
  if (job.state->cancelled) return ServiceError(499, "cancelled", "the client went away");
  if (Clock::now() > job.deadline)
    return ServiceError(504, "timeout",
                        running ? "generation took longer than the timeout"
                                : "the request waited longer than the timeout");
  return std::nullopt;
}

bool GenerationService::admissible(Job& job) {
  if (std::optional<ServiceError> error = abandoned(job, false)) {
    finish(job, "", std::move(error));
    return false;
  }
  const std::string& adapter = job.request.adapter;
  if (!adapter.empty() && !model_->has_adapter(adapter)) {
    finish(job, "", ServiceError(404, "not_found", "adapter '" + adapter + "' was unloaded"));
    return false;
  }
  return true;
}

void GenerationService::admit(std::vector<std::unique_ptr<Job>> jobs) {
  NoGradGuard no_grad;
  CausalLM& causal = model_->causal_base();
  // What each row runs: a cached soft prompt (`past`) to continue, and the embeddings after it.
  struct Prefill {
    std::unique_ptr<Job> job;
    const RowKv* past = nullptr;
    Tensor embeds;  // [T, d]; undefined when the cached prefix is the whole row
  };
  std::vector<Prefill> rows;
  for (auto& job : jobs) {
    if (!admissible(*job)) continue;
    Prefill row;
    try {
      const std::string& adapter = job->request.adapter;
      const int64_t T = int64_t(job->prompt_ids.size());
      if (T > 0)
        row.embeds =
            causal.embed(Tensor::from_ints(job->prompt_ids, {T}, DType::I64, model_->device()));
      if (!adapter.empty() && options_.prefix_cache) {
        row.past = &prefix_for(adapter, job->task);
      } else if (!adapter.empty()) {
        Tensor prompt = prompt_embeddings(adapter, job->task).to(model_->device());
        row.embeds = T > 0 ? concat({prompt.to(row.embeds.dtype()), row.embeds}, 0) : prompt;
      }
    } catch (const std::exception& e) {
      warn("serve: a request's soft prompt failed: ", e.what());
      finish(*job, "", ServiceError(500, "internal_error", e.what()));
      continue;
    }
    row.job = std::move(job);
    rows.push_back(std::move(row));
  }
  // The rows go through the model together, in groups whose padded size stays within the
  // context (a GPT-2 limit on the shared positions) and a bounded activation size. Sorted by
  // length, so that padding (computed like real positions) stays a small part of each group.
  constexpr int64_t kMaxGroupPositions = 16384;
  auto new_length = [](const Prefill& row) {
    return row.embeds.defined() ? row.embeds.size(0) : int64_t(0);
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const Prefill& a, const Prefill& b) {
    return new_length(a) < new_length(b);
  });
  const int64_t vocab = model_->base_info().vocab_size;
  for (size_t start = 0; start < rows.size();) {
    std::vector<Prefill*> group;
    int64_t longest_past = 0, longest_new = 0, real = 0;
    for (size_t i = start; i < rows.size(); ++i) {
      const int64_t past = rows[i].past ? rows[i].past->length() : 0;
      const int64_t added = new_length(rows[i]);
      const int64_t P = std::max(longest_past, past), T = std::max(longest_new, added);
      const int64_t padded = int64_t(group.size() + 1) * T;
      if (!group.empty() &&
          (P + T > context_ || int64_t(group.size() + 1) * (P + T) > kMaxGroupPositions ||
           4 * padded > 5 * (real + added)))  // more than 25% padding
        break;
      group.push_back(&rows[i]);
      longest_past = P;
      longest_new = T;
      real += added;
    }
    start += group.size();
    try {
      std::vector<const RowKv*> pasts;
      std::vector<Tensor> embeds;
      std::vector<Prefill*> computed;
      for (Prefill* row : group)
        if (row->embeds.defined()) {
          pasts.push_back(row->past);
          embeds.push_back(row->embeds);
          computed.push_back(row);
        }
      std::vector<RowKv> kv =
          computed.empty() ? std::vector<RowKv>{} : extend_rows(causal, pasts, embeds);
      std::vector<Tensor> last;
      std::vector<const RowKv*> row_kv;
      for (Prefill* row : group) {
        auto it = std::find(computed.begin(), computed.end(), row);
        row_kv.push_back(it == computed.end() ? row->past : &kv[size_t(it - computed.begin())]);
        last.push_back(row_kv.back()->last_hidden.unsqueeze(0));
      }
      // One LM-head GEMM for the group's first tokens.
      const std::vector<float> logits = model_->logits(concat(last, 0)).to_floats();
      for (size_t i = 0; i < group.size(); ++i) {
        Job& job = *group[i]->job;
        const int64_t token =
            choose_next_token(logits.data() + int64_t(i) * vocab, vocab, job.config, job.rng);
        if (accept_token(job, token)) continue;
        job.row = batch_->add(*row_kv[i]);
        job.next_token = token;
        running_.push_back(std::move(group[i]->job));
      }
    } catch (const std::exception& e) {
      warn("serve: a prefill of ", group.size(), " requests failed: ", e.what());
      for (Prefill* row : group)
        if (row->job) finish(*row->job, "", ServiceError(500, "internal_error", e.what()));
    }
  }
}

void GenerationService::decode_step() {
  NoGradGuard no_grad;
  for (auto& job : running_) {
    std::optional<ServiceError> error = abandoned(*job, true);
    if (!error) continue;
    finish(*job, "", std::move(error));
    batch_->remove(job->row);
    job.reset();
  }
  std::erase(running_, nullptr);
  if (running_.empty()) return;
  std::map<int64_t, Job*> by_row;
  for (auto& job : running_) by_row[job->row] = job.get();
  const std::vector<int64_t> rows = batch_->ids();
  std::vector<int64_t> tokens;
  for (int64_t row : rows) tokens.push_back(by_row.at(row)->next_token);
  Tensor hidden = batch_->step(tokens);
  const int64_t vocab = model_->base_info().vocab_size;
  const std::vector<float> logits = model_->logits(hidden).to_floats();
  for (size_t i = 0; i < rows.size(); ++i) {
    Job& job = *by_row.at(rows[i]);
    const int64_t token =
        choose_next_token(logits.data() + int64_t(i) * vocab, vocab, job.config, job.rng);
    if (accept_token(job, token))
      batch_->remove(job.row);
    else
      job.next_token = token;
  }
  std::erase_if(running_, [](const std::unique_ptr<Job>& job) { return job->state->finished; });
}

void GenerationService::run() {
  for (;;) {
    std::deque<std::shared_ptr<Command>> commands;
    std::vector<std::unique_ptr<Job>> admitted, expired;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !commands_.empty() || !running_.empty() || !queue_.empty();
      });
      if (stopping_) return;
      commands.swap(commands_);
      stats_.pending_commands = 0;
      // Requests still waiting that were cancelled or ran out of time leave the queue now.
      for (auto& job : queue_)
        if (abandoned(*job, false)) expired.push_back(std::move(job));
      std::erase(queue_, nullptr);
      while (!queue_.empty() && int64_t(running_.size() + admitted.size()) < options_.max_batch) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stats_.queued = int64_t(queue_.size());
      // Requests being admitted count as active: wait_idle() must not take them for gone.
      stats_.active = int64_t(running_.size() + admitted.size());
    }
    for (auto& job : expired) finish(*job, "", abandoned(*job, false));
    for (auto& command : commands) {
      try {
        command->action();
        command->done.set_value();
      } catch (...) {
        command->done.set_exception(std::current_exception());
      }
    }
    if (!admitted.empty()) admit(std::move(admitted));
    {
      std::lock_guard lock(mutex_);
      stats_.active = int64_t(running_.size());
    }
    try {
      if (!running_.empty()) {
        decode_step();
        if (options_.after_step) options_.after_step();
      }
    } catch (const std::exception& e) {
      // The batch's state is unknown after a failed step: fail its rows, keep serving.
      warn("serve: a decode step failed; failing its ", running_.size(), " requests: ", e.what());
      fail_running(ServiceError(500, "internal_error", e.what()));
    }
    std::lock_guard lock(mutex_);
    stats_.active = int64_t(running_.size());
    if (queue_.empty() && running_.empty()) idle_.notify_all();
  }
}

}  // namespace sp
