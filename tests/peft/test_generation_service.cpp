// GenerationService against PeftModel::generate: concurrent requests over many adapters and
// tasks (with and without the prefix cache), streaming and stop strings, overload, timeouts,
// cancellation, adapter load/unload while serving, bad requests and shutdown.
#include "peft/generation_service.h"

#include <gtest/gtest.h>

#include <future>
#include <latch>
#include <thread>

#include "models/tokenizer.h"
#include "tests/peft/peft_test_util.h"

namespace sp {
namespace {

using namespace std::chrono_literals;
using testing::kPeftA;
using testing::tiny_peft_model;

// Eight prompts for eight (adapter, task) pairs: five prompt-tuning adapters and the three tasks
// of a multitask one, all PEFT-written fixtures.
struct Route {
  std::string adapter;
  std::optional<std::string> task;
};
const std::vector<Route> kRoutes = {{"random", {}},   {"sample_vocab", {}}, {"text_repeat", {}},
                                    {"truncate", {}}, {"trained", {}},      {"multi", "0"},
                                    {"multi", "1"},   {"multi", "2"}};
const std::vector<std::pair<std::string, std::string>> kAdapterDirs = {
    {"random", "pt_random"},           {"sample_vocab", "pt_sample_vocab"},
    {"text_repeat", "pt_text_repeat"}, {"truncate", "pt_text_truncate"},
    {"trained", "train_pt"},           {"multi", "mpt"}};

std::unique_ptr<PeftModel> model_with_adapters() {
  auto model = tiny_peft_model();
  for (const auto& [name, dir] : kAdapterDirs) model->load_adapter(kPeftA + "/" + dir, name);
  return model;
}

std::string prompt_text(int i) {
  static const std::vector<std::string> words = {
      "the cat", "a river", "Once upon", "hello world", "numbers 1 2 3", "é ü ñ", "sky", "why"};
  return words[size_t(i) % words.size()] + " " + std::to_string(i);
}

// The reference: PeftModel::generate for the one request alone, decoded as the service decodes.
std::string reference_text(const PeftModel& model, const Tokenizer& tokenizer,
                           const CompletionRequest& request, std::string* finish_reason = nullptr) {
  GenerationConfig config;
  config.max_new_tokens = request.max_tokens;
  config.do_sample = request.temperature > 0.0f;
  if (config.do_sample) config.temperature = request.temperature;
  config.top_p = request.top_p;
  config.seed = request.seed.value_or(0);
  config.eos_token_id = tokenizer.eos_id();
  std::vector<int64_t> tasks;
  if (request.task) tasks.push_back(std::stoll(*request.task));
  std::vector<int64_t> out =
      model.generate({tokenizer.encode(request.prompt, true)}, config, {request.adapter}, tasks)[0];
  const bool eos = !out.empty() && config.eos_token_id && out.back() == *config.eos_token_id;
  if (eos) out.pop_back();
  if (finish_reason) *finish_reason = eos ? "stop" : "length";
  return tokenizer.decode(out, true);
}

class ServiceParity : public ::testing::TestWithParam<bool> {};

TEST_P(ServiceParity, SixtyFourConcurrentRequestsOverEightAdaptersMatchGenerate) {
  auto reference = model_with_adapters();
  std::shared_ptr<const Tokenizer> tokenizer = load_tokenizer(testing::kTinyA);
  ServiceOptions options;
  options.max_batch = 8;  // fewer rows than requests: rows join and leave throughout
  options.max_queue = 64;
  options.prefix_cache = GetParam();
  GenerationService service(model_with_adapters(), tokenizer, options);

  std::vector<CompletionRequest> requests(64);
  for (int i = 0; i < 64; ++i) {
    CompletionRequest& r = requests[size_t(i)];
    r.adapter = kRoutes[size_t(i) % kRoutes.size()].adapter;
    r.task = kRoutes[size_t(i) % kRoutes.size()].task;
    r.prompt = prompt_text(i);
    r.max_tokens = 3 + i % 11;
    r.temperature = i % 8 == 7 ? 0.8f : 0.0f;  // every eighth samples, seeded
    r.top_p = i % 8 == 7 ? 0.9f : 1.0f;
    r.seed = uint64_t(1000 + i);
  }
  // Eight client threads submit eight requests each and wait for all of them.
  std::vector<CompletionUpdate> results(64);
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c)
    clients.emplace_back([&, c] {
      std::vector<std::unique_ptr<CompletionHandle>> handles;
      for (int i = c; i < 64; i += 8) handles.push_back(service.submit(requests[size_t(i)]));
      for (size_t k = 0; k < handles.size(); ++k) results[size_t(c) + 8 * k] = handles[k]->wait();
    });
  for (auto& client : clients) client.join();

  for (int i = 0; i < 64; ++i) {
    const CompletionRequest& r = requests[size_t(i)];
    ASSERT_FALSE(results[size_t(i)].error)
        << "request " << i << ": " << results[size_t(i)].error->what();
    std::string reason;
    EXPECT_EQ(results[size_t(i)].text, reference_text(*reference, *tokenizer, r, &reason))
        << "request " << i << " (" << r.adapter << ")";
    EXPECT_EQ(results[size_t(i)].finish_reason, reason) << "request " << i;
    EXPECT_EQ(results[size_t(i)].prompt_tokens, int64_t(tokenizer->encode(r.prompt).size()));
  }
  const ServiceStats stats = service.stats();
  EXPECT_EQ(stats.completed, 64);
  EXPECT_EQ(stats.failed, 0);
  if (GetParam()) {
    EXPECT_EQ(stats.prefix_cache_misses, 8);  // one per (adapter, task)
    EXPECT_EQ(stats.prefix_cache_hits, 56);
  } else {
    EXPECT_EQ(stats.prefix_cache_misses + stats.prefix_cache_hits, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(PrefixCache, ServiceParity, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "On" : "Off"; });

// Holds the scheduler after each decode step until the test lets it go.
struct StepGate {
  std::mutex mutex;
  std::condition_variable changed;
  bool open = true;
  int64_t waiting = 0, permits = 0;
  void pass() {
    std::unique_lock lock(mutex);
    ++waiting;
    changed.notify_all();
    changed.wait(lock, [&] { return open || permits > 0; });
    if (!open) --permits;
    --waiting;
  }
  void allow_one() {
    {
      std::lock_guard lock(mutex);
      ++permits;
    }
    changed.notify_all();
  }
  void close() {
    std::lock_guard lock(mutex);
    open = false;
  }
  void release() {
    {
      std::lock_guard lock(mutex);
      open = true;
    }
    changed.notify_all();
  }
  void wait_until_held() {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return waiting > 0; });
  }
};

// A service over model_with_adapters() whose scheduler stops after each decode step until the
// test opens the gate (closed at first).
struct GatedService {
  std::shared_ptr<StepGate> gate = std::make_shared<StepGate>();
  std::unique_ptr<GenerationService> service;
  explicit GatedService(ServiceOptions options) {
    gate->close();
    options.after_step = [gate = gate] { gate->pass(); };
    service = std::make_unique<GenerationService>(model_with_adapters(),
                                                  load_tokenizer(testing::kTinyA), options);
  }
  ~GatedService() {
    gate->release();  // before the service's destructor joins a scheduler held in the gate
    service.reset();
  }
};

TEST(GenerationService, StreamedPiecesStopBeforeAStopStringAndAddUpToTheWhole) {
  auto reference = model_with_adapters();
  std::shared_ptr<const Tokenizer> tokenizer = load_tokenizer(testing::kTinyA);
  // One decode step at a time, so the test sees each piece as it is handed out.
  GatedService gated({});
  std::shared_ptr<StepGate>& gate = gated.gate;
  GenerationService& service = *gated.service;
  CompletionRequest request;
  request.adapter = "trained";
  request.prompt = "the cat sat";
  request.max_tokens = 24;
  request.temperature = 0.0f;
  const std::string whole = reference_text(*reference, *tokenizer, request);
  ASSERT_GE(whole.size(), 8u) << "the fixture should generate some text";
  // A stop string from the second half of the reference output: three ASCII bytes that occur
  // there first.
  std::string stop;
  for (size_t at = whole.size() / 2; at + 3 <= whole.size() && stop.empty(); ++at) {
    const std::string piece = whole.substr(at, 3);
    if (whole.find(piece) == at &&
        std::all_of(piece.begin(), piece.end(), [](char c) { return (c & 0x80) == 0; }))
      stop = piece;
  }
  ASSERT_FALSE(stop.empty()) << whole;
  request.stop = {"never appears \x01", stop};
  const size_t cut = whole.find(request.stop[1]);
  auto handle = service.submit(request);
  std::string streamed;
  int pieces = 0;
  CompletionUpdate update;
  do {
    gate->allow_one();
    update = handle->next(std::chrono::steady_clock::now() + 50ms);
    streamed += update.text;
    pieces += update.text.empty() ? 0 : 1;
    // No piece may hold any part of the stop string.
    EXPECT_EQ(streamed.find(request.stop[1]), std::string::npos);
  } while (!update.finished);
  EXPECT_EQ(streamed, whole.substr(0, cut));
  EXPECT_EQ(update.finish_reason, "stop");
  EXPECT_GE(pieces, 2) << "whole: [" << whole << "] cut at " << cut;
}

CompletionRequest simple(const std::string& adapter, int64_t max_tokens = 30) {
  CompletionRequest r;
  r.adapter = adapter;
  r.prompt = "a river";
  r.max_tokens = max_tokens;
  r.temperature = 0.0f;
  return r;
}

int status_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const ServiceError& e) {
    return e.status();
  }
  return 0;
}

TEST(GenerationService, OverloadIsRefusedAtOnceAndServedOnceThereIsRoom) {
  ServiceOptions options;
  options.max_batch = 1;
  options.max_queue = 1;
  GatedService gated(options);
  std::shared_ptr<StepGate>& gate = gated.gate;
  GenerationService& service = *gated.service;
  auto running = service.submit(simple("random"));
  gate->wait_until_held();  // the first request holds the only row
  auto queued = service.submit(simple("trained"));
  EXPECT_EQ(status_of([&] { service.submit(simple("random")); }), 429);
  EXPECT_EQ(service.stats().queued, 1);
  gate->release();
  EXPECT_FALSE(running->wait().error);
  EXPECT_FALSE(queued->wait().error);
  EXPECT_FALSE(service.submit(simple("random"))->wait().error);  // room again
}

TEST(GenerationService, TimeoutsCancellationAndUnloadFailOnlyTheirRequests) {
  ServiceOptions options;
  options.max_batch = 2;
  options.request_timeout = 1s;  // ample for the first step even under sanitizers
  GatedService gated(options);
  std::shared_ptr<StepGate>& gate = gated.gate;
  GenerationService& service = *gated.service;
  auto slow = service.submit(simple("random", 60));
  auto dropped = service.submit(simple("trained", 60));
  gate->wait_until_held();
  auto waiting = service.submit(simple("text_repeat"));  // no free row: waits in the queue
  dropped.reset();                                       // the client goes away
  std::this_thread::sleep_for(1200ms);                   // past the timeout while held
  gate->release();
  CompletionUpdate slow_result = slow->wait(), waiting_result = waiting->wait();
  ASSERT_TRUE(slow_result.error);
  EXPECT_EQ(slow_result.error->status(), 504);
  ASSERT_TRUE(waiting_result.error);
  EXPECT_EQ(waiting_result.error->status(), 504);
  ASSERT_TRUE(service.wait_idle(std::chrono::steady_clock::now() + 10s));
  EXPECT_EQ(service.stats().failed, 3);  // the cancelled one counts as failed too (499)
  // The service goes on serving.
  EXPECT_FALSE(service.submit(simple("truncate", 4))->wait().error);
}

TEST(GenerationService, AdaptersLoadAndUnloadWhileServing) {
  ServiceOptions options;
  options.max_batch = 1;
  GatedService gated(options);
  std::shared_ptr<StepGate>& gate = gated.gate;
  GenerationService& service = *gated.service;
  auto running = service.submit(simple("random", 20));
  gate->wait_until_held();
  auto queued = service.submit(simple("trained", 20));
  // The unload runs on the scheduler between steps, before the queued request is admitted.
  auto unloading = std::async(std::launch::async, [&] { service.unload_adapter("trained"); });
  while (service.stats().pending_commands == 0) std::this_thread::sleep_for(1ms);
  gate->release();
  unloading.get();
  EXPECT_FALSE(running->wait().error);
  CompletionUpdate orphan = queued->wait();
  ASSERT_TRUE(orphan.error);
  EXPECT_EQ(orphan.error->status(), 404);
  EXPECT_FALSE(service.has_adapter("trained"));
  EXPECT_EQ(status_of([&] { service.submit(simple("trained")); }), 404);
  EXPECT_EQ(status_of([&] { service.unload_adapter("trained"); }), 404);

  // Loaded at run time, served with the same output as a model that had it from the start.
  service.load_adapter("trained_again", kPeftA + "/train_pt");
  auto reference = model_with_adapters();
  std::shared_ptr<const Tokenizer> tokenizer = load_tokenizer(testing::kTinyA);
  CompletionRequest request = simple("trained_again", 12);
  CompletionUpdate result = service.submit(request)->wait();
  request.adapter = "trained";
  EXPECT_EQ(result.text, reference_text(*reference, *tokenizer, request));
  EXPECT_EQ(status_of([&] { service.load_adapter("trained_again", kPeftA + "/train_pt"); }), 409);
  EXPECT_EQ(status_of([&] { service.load_adapter("broken", kPeftA + "/no_such_dir"); }), 400);
}

TEST(GenerationService, BadRequestsAreRefusedWithTheFieldNamed) {
  GenerationService service(model_with_adapters(), load_tokenizer(testing::kTinyA), {});
  auto refused = [&](CompletionRequest r, int status, const std::string& words) {
    try {
      service.submit(std::move(r));
      ADD_FAILURE() << "accepted a request that should fail with " << status;
    } catch (const ServiceError& e) {
      EXPECT_EQ(e.status(), status) << e.what();
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  CompletionRequest r = simple("random");
  r.max_tokens = 0;
  refused(r, 400, "'max_tokens' must be in [1, 1024]");
  r = simple("random", 1000);  // 128 positions in the tiny GPT-2
  refused(r, 400, "context is 128 positions");
  r = simple("nope");
  refused(r, 404, "model 'nope' is not loaded");
  r = simple("random");
  r.temperature = -1.0f;
  refused(r, 400, "'temperature'");
  r = simple("random");
  r.top_p = 0.0f;
  refused(r, 400, "'top_p'");
  r = simple("random");
  r.stop = {"a", "b", "c", "d", "e"};
  refused(r, 400, "at most 4");
  r = simple("random");
  r.stop = {""};
  refused(r, 400, "must not be empty");
  r = simple("multi");
  refused(r, 400, "is multitask: give 'task'");
  r.task = "7";
  refused(r, 400, "unknown task '7'");
  r = simple("");
  r.prompt = "";
  refused(r, 400, "'prompt' is empty");
  r = simple("random");
  r.prompt_ids = std::vector<int64_t>{1, 999999};
  refused(r, 400, "token id 999999");
  r = simple("");
  r.task = "0";
  refused(r, 400, "'task' needs an adapter");
  // The service still serves after all of that.
  EXPECT_FALSE(service.submit(simple("random", 4))->wait().error);
}

TEST(GenerationService, ShutdownRefusesNewRequestsAndFailsWhatIsLeft) {
  ServiceOptions options;
  options.max_batch = 1;
  GatedService gated(options);
  std::shared_ptr<StepGate>& gate = gated.gate;
  GenerationService& service = *gated.service;
  auto running = service.submit(simple("random", 50));
  gate->wait_until_held();
  auto queued = service.submit(simple("trained"));
  service.begin_shutdown();
  EXPECT_EQ(status_of([&] { service.submit(simple("random")); }), 503);
  EXPECT_FALSE(service.wait_idle(std::chrono::steady_clock::now() + 50ms));
  // The stop is requested while the scheduler is held, so the running row cannot finish first.
  service.request_stop();
  gate->release();
  service.stop();
  for (auto* handle : {running.get(), queued.get()}) {
    CompletionUpdate result = handle->wait();
    ASSERT_TRUE(result.error);
    EXPECT_EQ(result.error->status(), 503);
  }
}

}  // namespace
}  // namespace sp
