// GenerationService: one frozen causal LM and its prompt adapters serving completions to many
// threads at once (bounded queue, continuous batching, a soft-prompt prefix cache per adapter).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "models/decode_batch.h"
#include "peft/peft_model.h"

namespace sp {

class Tokenizer;

/// A request the service refuses or fails, with the HTTP status that describes it: 400 bad
/// request, 404 unknown adapter, 409 adapter name taken, 429 queue full, 499 cancelled by the
/// client, 503 shutting down, 504 timed out, 500 internal.
class ServiceError : public std::runtime_error {
 public:
  ServiceError(int status, std::string type, const std::string& message)
      : std::runtime_error(message), status_(status), type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }  ///< OpenAI's error "type"

 private:
  int status_;
  std::string type_;
};

/// Limits and switches of a GenerationService.
struct ServiceOptions {
  int64_t max_batch = 16;   ///< rows decoded together
  int64_t max_queue = 64;   ///< requests waiting for a row; beyond this submit() answers 429
  int64_t max_context = 0;  ///< positions per row (prompt + tokens); 0: the model's limit
  int64_t max_tokens_limit = 1024;  ///< the largest max_tokens a request may ask for
  bool prefix_cache = true;         ///< reuse each adapter's soft-prompt keys/values
  std::chrono::milliseconds request_timeout{std::chrono::minutes(10)};
  /// Called on the scheduler thread after every decode step (metrics, tests that need the batch
  /// held in place).
  std::function<void()> after_step;
};

/// One completion, as OpenAI's /v1/completions takes it. temperature 0 is greedy decoding.
struct CompletionRequest {
  std::string adapter;              ///< "" runs the base model alone
  std::optional<std::string> task;  ///< multitask adapters: a task name or id
  std::string prompt;
  std::optional<std::vector<int64_t>> prompt_ids;  ///< instead of `prompt`: token ids
  int64_t max_tokens = 16;
  float temperature = 1.0f;
  float top_p = 1.0f;
  std::optional<uint64_t> seed;   ///< sampling seed; by default each request gets its own
  std::vector<std::string> stop;  ///< generation ends before the first of these strings
};

/// What a completion produced since the previous CompletionHandle::next() call.
struct CompletionUpdate {
  std::string text;  ///< new text (UTF-8 complete, never part of a stop string)
  bool finished = false;
  std::string finish_reason;          ///< "stop" (EOS or a stop string) or "length"
  std::optional<ServiceError> error;  ///< set when the request failed (then finished)
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

struct CompletionState;

/// The caller's side of a submitted request. Dropping it cancels the request.
class CompletionHandle {
 public:
  explicit CompletionHandle(std::shared_ptr<CompletionState> state) : state_(std::move(state)) {}
  ~CompletionHandle();
  CompletionHandle(const CompletionHandle&) = delete;
  CompletionHandle& operator=(const CompletionHandle&) = delete;
  /// Waits for new text or the end until `until`; returns what arrived (possibly nothing).
  CompletionUpdate next(std::chrono::steady_clock::time_point until);
  /// Waits for the end and returns the whole completion.
  CompletionUpdate wait();
  void cancel();

 private:
  std::shared_ptr<CompletionState> state_;
};

/// Counters for /health and the logs.
struct ServiceStats {
  int64_t queued = 0, active = 0, completed = 0, failed = 0, generated_tokens = 0;
  int64_t prefix_cache_hits = 0, prefix_cache_misses = 0;
  int64_t pending_commands = 0;  ///< adapter loads/unloads waiting for the scheduler
};

/// Serves completions for a PeftModel over a causal LM. submit() may be called from any thread;
/// one scheduler thread owns the model: between decode steps it admits queued requests (each
/// prefilled as one row, after its adapter's cached soft-prompt keys/values) and drops finished,
/// cancelled or expired ones, so requests for different adapters and tasks share every step.
class GenerationService {
 public:
  GenerationService(std::unique_ptr<PeftModel> model, std::shared_ptr<const Tokenizer> tokenizer,
                    ServiceOptions options);
  ~GenerationService();  ///< cancels whatever is left and joins the scheduler

  /// Queues a request; throws ServiceError (400, 404, 429, 503) when it is refused.
  std::unique_ptr<CompletionHandle> submit(CompletionRequest request);

  /// Loads (or replaces) an adapter between decode steps; `task_names` name a multitask
  /// adapter's task ids. Throws ServiceError 400 when the directory is not a usable adapter.
  void load_adapter(const std::string& name, const std::string& dir,
                    std::vector<std::string> task_names = {});
  /// Unloads an adapter; rows already decoding keep going, queued ones fail with 404.
  void unload_adapter(const std::string& name);
  std::vector<std::string> adapters() const;
  bool has_adapter(const std::string& name) const;

  /// Refuses new requests (503) from now on; queued and running ones go on.
  void begin_shutdown();
  /// Waits until no request is queued or running, or `until` passes; true when idle.
  bool wait_idle(std::chrono::steady_clock::time_point until);
  /// Tells the scheduler to stop after its current step, without waiting for it.
  void request_stop();
  /// request_stop(), then waits for the scheduler and fails every queued and running request
  /// with 503.
  void stop();

  ServiceStats stats() const;
  const ServiceOptions& options() const { return options_; }
  int64_t context_length() const { return context_; }

 private:
  struct Job;
  struct Command;
  void run();
  /// Runs `action` on the scheduler thread between steps; rethrows what it throws.
  void run_on_scheduler(std::function<void()> action);
  /// The error a job gets when its client went away (499) or its time ran out (504).
  std::optional<ServiceError> abandoned(const Job& job, bool running) const;
  /// False (and the job finished) when it was abandoned or lost its adapter.
  bool admissible(Job& job);
  /// Prefills the jobs together, picks their first tokens and adds them to the decode batch.
  void admit(std::vector<std::unique_ptr<Job>> jobs);
  void decode_step();
  /// Emits `token` for `job`; returns true when the job is finished.
  bool accept_token(Job& job, int64_t token);
  void finish(Job& job, std::string reason, std::optional<ServiceError> error = std::nullopt);
  void fail_all(const ServiceError& error);
  /// Fails the running jobs and starts an empty decode batch.
  void fail_running(const ServiceError& error);
  const RowKv& prefix_for(const std::string& adapter, int64_t task);
  Tensor prompt_embeddings(const std::string& adapter, int64_t task) const;
  int64_t resolve_task(const std::string& adapter, const std::optional<std::string>& task) const;

  std::unique_ptr<PeftModel> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  ServiceOptions options_;
  int64_t context_ = 0;
  std::unique_ptr<DecodeBatch> batch_;

  mutable std::mutex mutex_;  // guards everything below until the thread
  std::condition_variable wake_, idle_;
  std::deque<std::unique_ptr<Job>> queue_;
  std::deque<std::shared_ptr<Command>> commands_;
  struct AdapterInfo {
    std::vector<std::string> task_names;
    int64_t virtual_tokens = 0;
    int64_t num_tasks = 0;  // 0: not a multitask adapter
    static AdapterInfo of(const PromptTuningConfig& config, std::vector<std::string> task_names);
  };
  std::map<std::string, AdapterInfo> adapters_;  // a copy submit() may read under the mutex
  bool refusing_ = false, stopping_ = false;
  ServiceStats stats_;
  uint64_t next_seed_ = 1;

  // Scheduler thread only.
  std::vector<std::unique_ptr<Job>> running_;
  std::map<std::pair<std::string, int64_t>, RowKv> prefix_cache_;  // (adapter, task)
  std::thread thread_;
};

}  // namespace sp
