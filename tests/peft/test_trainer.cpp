// Data parsing and label masking, and the trainer: loss goes down, resume is bitwise exact,
// NaN stops training keeping the last good checkpoint, SIGINT checkpoints and returns.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "engine/error.h"
#include "engine/log.h"
#include "engine/ops/ops.h"
#include "engine/safetensors.h"
#include "engine/thread_pool.h"
#include "peft/data.h"
#include "peft/trainer.h"
#include "tests/peft/peft_test_util.h"

namespace sp::testing {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sp_train_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    tokenizer_ = load_tokenizer(kTinyA);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    std::ofstream((dir_ / name).string()) << text;
    return (dir_ / name).string();
  }

  // A tiny task: map a word to its "opposite" word.
  std::string task_file() {
    std::string text;
    const char* pairs[][2] = {{"hot", "cold"},  {"up", "down"},   {"big", "small"},
                              {"day", "night"}, {"open", "shut"}, {"left", "right"},
                              {"fast", "slow"}, {"old", "new"}};
    for (int repeat = 0; repeat < 2; ++repeat)
      for (auto& p : pairs)
        text += std::string("{\"input\": \"The opposite of ") + p[0] + " is\", \"output\": \" " +
                p[1] + "\"}\n";
    return write("train.jsonl", text);
  }

  TrainConfig config(const std::string& out) {
    TrainConfig c;
    c.output_dir = (dir_ / out).string();
    c.batch_size = 4;
    c.max_steps = 12;
    c.optim.lr = 0.05f;
    c.schedule = Schedule::kConstant;
    c.metric = Metric::kLoss;
    c.seed = 7;
    return c;
  }

  PromptTuningConfig prompt_config() {
    PromptTuningConfig p;
    p.task_type = TaskType::kCausalLm;
    p.num_virtual_tokens = 4;
    return p;
  }

  fs::path dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TrainerTest, JsonlParsingAndMalformedLines) {
  std::string good = write("good.jsonl",
                           "{\"input\": \"a\", \"output\": \"b\", \"task\": \"x\"}\n\n{\"input\": "
                           "\"c\", \"output\": \"d\", \"task\": 3}\n");
  Dataset data = load_jsonl(good);
  ASSERT_EQ(data.examples.size(), 2u);
  EXPECT_EQ(data.examples[1].line, 3);
  EXPECT_EQ(*data.examples[1].task, "3");
  std::string bad = write("bad.jsonl",
                          "{\"input\": \"a\", \"output\": \"b\"}\n{\"input\": 5, \"output\": "
                          "\"b\"}\nnot json\n{\"output\": \"x\"}\n");
  try {
    load_jsonl(bad);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("bad.jsonl:2: field 'input' must be a string, found number"),
        std::string::npos)
        << e.what();
  }
  std::vector<std::string> warnings;
  set_warning_sink([&](const std::string& m) { warnings.push_back(m); });
  Dataset skipped = load_jsonl(bad, /*skip_bad_lines=*/true);
  set_warning_sink(nullptr);
  EXPECT_EQ(skipped.examples.size(), 1u);
  EXPECT_EQ(skipped.skipped_lines, 3);
  ASSERT_EQ(warnings.size(), 3u);
  EXPECT_NE(warnings[1].find("bad.jsonl:3: not valid JSON"), std::string::npos);
  EXPECT_NE(warnings[2].find("bad.jsonl:4: missing field 'input'"), std::string::npos);
  EXPECT_THROW(load_jsonl((dir_ / "missing.jsonl").string()), Error);
}

TEST_F(TrainerTest, CausalLabelsMaskTheInputAndPadding) {
  Dataset data = load_jsonl(write("d.jsonl",
                                  "{\"input\": \"hello there\", \"output\": \" "
                                  "world\"}\n{\"input\": \"a\", \"output\": \" b\"}\n"));
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  std::vector<int64_t> in = tokenizer_->encode("hello there"), out = tokenizer_->encode(" world");
  const TokenizedExample& e = examples[0];
  ASSERT_EQ(e.input_ids.size(), in.size() + out.size() + 1);
  EXPECT_EQ(e.input_ids.back(), *tokenizer_->eos_id());
  for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(e.labels[i], -100);
  for (size_t i = in.size(); i < e.labels.size(); ++i) EXPECT_EQ(e.labels[i], e.input_ids[i]);
  Batch batch = collate(examples, {0, 1}, 511);
  std::vector<int64_t> labels = batch.labels.to_ints(), mask = batch.attention_mask.to_ints();
  const size_t T = size_t(batch.input_ids.size(1));
  for (size_t t = examples[1].input_ids.size(); t < T; ++t) {
    EXPECT_EQ(labels[T + t], -100);
    EXPECT_EQ(mask[T + t], 0);
  }
  // Truncation drops the start of the input first.
  TokenizeOptions short_options;
  short_options.max_length = int64_t(out.size()) + 3;
  auto cut = tokenize_examples(data, *tokenizer_, nullptr, short_options);
  EXPECT_EQ(int64_t(cut[0].input_ids.size()), short_options.max_length);
  EXPECT_EQ(cut[0].input_ids[0], in[in.size() - 2]);
}

TEST_F(TrainerTest, LossGoesDown) {
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  TrainConfig c = config("run");
  c.max_steps = 30;
  c.eval_every = 0;
  Trainer trainer(*model, *tokenizer_, c, data, examples, &data, examples);
  EvalOptions eval;
  eval.metric = Metric::kLoss;
  const double before = evaluate(*model, *tokenizer_, data, examples, eval).loss;
  TrainResult result = trainer.run();
  ASSERT_TRUE(result.last_eval.has_value());
  EXPECT_LT(result.last_eval->loss, before * 0.8) << "before " << before;
  // The output directory is a PEFT adapter directory plus state and metrics.
  for (const char* f :
       {"adapter_config.json", "adapter_model.safetensors", "metrics.jsonl",
        "training_state/trainer_state.json", "training_state/optimizer.safetensors"})
    EXPECT_TRUE(fs::exists(dir_ / "run" / f)) << f;
}

TEST_F(TrainerTest, ResumeIsBitwiseIdenticalToAnUninterruptedRun) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto train = [&](const std::string& out, int64_t stop_at, bool resume) {
    auto model = tiny_peft_model();
    model->add_adapter("default", prompt_config(), 1);
    TrainConfig c = config(out);
    c.grad_accum = 2;
    c.schedule = Schedule::kCosine;
    c.warmup_steps = 2;
    Trainer trainer(*model, *tokenizer_, c, data, examples);
    trainer.set_event_callback([&](const TrainEvent& e) {
      if (e.kind == TrainEvent::Kind::kStep && e.step == stop_at)
        Trainer::stop_requested().store(true);
    });
    return trainer.run(resume);
  };
  TrainResult full = train("full", -1, false);
  EXPECT_FALSE(full.interrupted);
  TrainResult first = train("split", 5, false);
  EXPECT_TRUE(first.interrupted);
  EXPECT_EQ(first.steps, 5);
  TrainResult second = train("split", -1, true);
  EXPECT_EQ(second.steps, 12);
  auto a = SafetensorsFile::open((dir_ / "full/adapter_model.safetensors").string());
  auto b = SafetensorsFile::open((dir_ / "split/adapter_model.safetensors").string());
  EXPECT_EQ(a->get("prompt_embeddings").to_floats(), b->get("prompt_embeddings").to_floats());
}

TEST_F(TrainerTest, ResumeWithDifferentBatchSizeIsRefused) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.max_steps = 2;
  Trainer(*model, *tokenizer_, c, data, examples).run();
  c.batch_size = 2;
  Trainer again(*model, *tokenizer_, c, data, examples);
  EXPECT_THROW(again.run(/*resume=*/true), Error);
}

TEST_F(TrainerTest, NanLossStopsAndKeepsTheLastGoodCheckpoint) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto model = tiny_peft_model();
  PromptAdapter& adapter = model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.save_every = 2;
  Trainer trainer(*model, *tokenizer_, c, data, examples);
  trainer.set_event_callback([&](const TrainEvent& e) {
    if (e.kind == TrainEvent::Kind::kStep && e.step == 3) {
      Tensor p = adapter.parameters()[0];
      float* values = p.data<float>();
      values[0] = std::nanf("");  // simulate a diverged update
    }
  });
  try {
    trainer.run();
    FAIL() << "expected a numerical error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumerical);
    EXPECT_NE(std::string(e.what()).find("at step 4"), std::string::npos) << e.what();
  }
  nlohmann::json state;
  std::ifstream(dir_ / "run/training_state/trainer_state.json") >> state;
  EXPECT_EQ(state["global_step"], 2);
  auto saved =
      SafetensorsFile::open((dir_ / "run/training_state/adapter_model.safetensors").string());
  for (float v : saved->get("prompt_embeddings").to_floats()) ASSERT_TRUE(std::isfinite(v));
}

// On a GPU the host must not wait for the device inside a step: the update, its clipping and its
// skip on a non-finite loss or norm are queued first, and the micro-batches' losses and the
// gradient norm are then read together, once a step, however many micro-batches it has.
TEST_F(TrainerTest, AStepWaitsForTheDeviceOnceWhateverItsMicroBatches) {
  const Device emu = Device::parse("cuda-emu");
  if (!backend_available(emu)) GTEST_SKIP() << "no cuda-emu in this build";
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  PeftModel model(Gpt2Model::load(kTinyA, emu), load_tokenizer(kTinyA));
  model.add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.batch_size = 2;
  c.grad_accum = 3;
  c.max_steps = 3;
  c.max_grad_norm = 1.0;
  Backend& backend = backend_for(emu);
  std::vector<uint64_t> syncs_after_step;
  Trainer trainer(model, *tokenizer_, c, data, examples);
  trainer.set_event_callback([&](const TrainEvent& e) {
    if (e.kind == TrainEvent::Kind::kStep) syncs_after_step.push_back(backend.stats().host_syncs);
  });
  trainer.run();
  ASSERT_EQ(syncs_after_step.size(), 3u);
  EXPECT_EQ(syncs_after_step[2] - syncs_after_step[1], 1u);
  EXPECT_EQ(syncs_after_step[1] - syncs_after_step[0], 1u);
}

// The step that finds a non-finite loss has already been queued: the device skips its update, so
// the adapter the run leaves in memory is the last good one (with the poisoned value), not one
// every element of which a NaN gradient turned into NaN.
TEST_F(TrainerTest, ANonFiniteStepLeavesTheAdapterAsItWas) {
  for (const char* name : {"cpu", "cuda-emu"}) {
    const Device device = Device::parse(name);
    if (!backend_available(device)) continue;
    Dataset data = load_jsonl(task_file());
    auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
    PeftModel model(Gpt2Model::load(kTinyA, device), load_tokenizer(kTinyA));
    PromptAdapter& adapter = model.add_adapter("default", prompt_config(), 1);
    TrainConfig c = config(std::string("run_") + name);
    c.max_steps = 4;
    std::vector<float> poisoned;
    Trainer trainer(model, *tokenizer_, c, data, examples);
    trainer.set_event_callback([&](const TrainEvent& e) {
      if (e.kind != TrainEvent::Kind::kStep || e.step != 2) return;
      Tensor p = adapter.parameters()[0];
      poisoned = p.to_floats();
      poisoned[0] = std::nanf("");  // simulate a diverged update
      backend_for(device).copy(Tensor::from_floats(poisoned, p.shape()).to(device), p);
    });
    try {
      trainer.run();
      ADD_FAILURE() << name << ": expected a numerical error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kNumerical) << name;
      EXPECT_NE(std::string(e.what()).find("loss is nan at step 3"), std::string::npos) << e.what();
    }
    const std::vector<float> after = adapter.parameters()[0].to_floats();
    ASSERT_EQ(after.size(), poisoned.size());
    EXPECT_TRUE(std::isnan(after[0])) << name;
    for (size_t i = 1; i < after.size(); ++i) ASSERT_EQ(after[i], poisoned[i]) << name << " " << i;
  }
}

TEST_F(TrainerTest, SigintSavesACheckpointAndReturns) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  Trainer::install_signal_handlers();
  Trainer trainer(*model, *tokenizer_, config("run"), data, examples);
  trainer.set_event_callback([&](const TrainEvent& e) {
    if (e.kind == TrainEvent::Kind::kStep && e.step == 3) std::raise(SIGINT);
  });
  TrainResult result = trainer.run();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  EXPECT_TRUE(result.interrupted);
  EXPECT_EQ(result.steps, 3);
  nlohmann::json state;
  std::ifstream(dir_ / "run/training_state/trainer_state.json") >> state;
  EXPECT_EQ(state["global_step"], 3);
  EXPECT_TRUE(fs::exists(dir_ / "run/adapter_model.safetensors"));
}

// Each defect of trainer_state.json is refused with an sp::Error naming the file and field,
// never a crash (batch_in_epoch = -5 overflowed a heap buffer) or an escaped JSON exception.
TEST_F(TrainerTest, ResumeValidatesEveryTrainerStateField) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.max_steps = 3;
  Trainer(*model, *tokenizer_, c, data, examples).run();
  const fs::path state_path = dir_ / "run/training_state/trainer_state.json";
  nlohmann::json good;
  std::ifstream(state_path) >> good;
  struct Case {
    const char* field;
    nlohmann::json value;  // null: remove the field
  };
  const Case cases[] = {{"batch_in_epoch", -5},  {"batch_in_epoch", int64_t(1) << 40},
                        {"global_step", 99},     {"global_step", -1},
                        {"global_step", "3"},    {"epoch", -1},
                        {"optimizer_steps", -1}, {"best_step", -7},
                        {"best_loss", "low"},    {"seed", -3},
                        {"eval_pending", 1},     {"epoch", nullptr},
                        {"version", 99}};
  for (const Case& k : cases) {
    nlohmann::json bad = good;
    if (k.value.is_null())
      bad.erase(k.field);
    else
      bad[k.field] = k.value;
    std::ofstream(state_path, std::ios::trunc) << bad.dump();
    Trainer again(*model, *tokenizer_, c, data, examples);
    try {
      again.run(/*resume=*/true);
      ADD_FAILURE() << k.field << " = " << k.value.dump() << " was accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kFormat) << m;
      EXPECT_NE(m.find("trainer_state.json"), std::string::npos) << m;
      EXPECT_NE(m.find(std::string("'") + k.field + "'"), std::string::npos) << m;
    }
  }
  std::ofstream(state_path, std::ios::trunc) << "[1, 2]";
  try {
    Trainer(*model, *tokenizer_, c, data, examples).run(true);
    ADD_FAILURE() << "a top-level array was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected a JSON object"), std::string::npos) << e.what();
  }
  // The restored state resumes fine (the checks above refuse only what is wrong).
  std::ofstream(state_path, std::ios::trunc) << good.dump();
  EXPECT_EQ(Trainer(*model, *tokenizer_, c, data, examples).run(true).steps, 3);
}

TEST_F(TrainerTest, ResumeValidatesTheOptimizerMoments) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.max_steps = 2;
  Trainer(*model, *tokenizer_, c, data, examples).run();
  const std::string path = (dir_ / "run/training_state/optimizer.safetensors").string();
  auto original = SafetensorsFile::open(path);
  Tensor avg = original->get("exp_avg.prompt_embeddings").clone();
  Tensor sq = original->get("exp_avg_sq.prompt_embeddings").clone();
  original.reset();
  const std::vector<std::vector<std::pair<std::string, Tensor>>> defects = {
      {{"exp_avg.prompt_embeddings", avg}},  // missing
      {{"exp_avg.prompt_embeddings", avg}, {"exp_avg_sq.prompt_embeddings", avg.reshape({-1})}},
      {{"exp_avg.prompt_embeddings", avg}, {"exp_avg_sq.prompt_embeddings", scale(sq, -1.0f)}}};
  for (const auto& tensors : defects) {
    save_safetensors(path, tensors, {});
    try {
      Trainer(*model, *tokenizer_, c, data, examples).run(true);
      ADD_FAILURE() << "bad optimizer state accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("optimizer.safetensors"), std::string::npos) << m;
      EXPECT_NE(m.find("exp_avg_sq.prompt_embeddings"), std::string::npos) << m;
    }
  }
}

// Runs fn in a forked child killed after `seconds`; true when it returned normally in time.
// A child, because a trainer that spins cannot be stopped from the test's own thread.
bool finishes_within(int seconds, const std::function<void()>& fn) {
  const int threads = num_threads();
  set_num_threads(1);  // fork keeps one thread; the pool must not have workers to lose
  pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(unsigned(seconds));
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      ::_exit(1);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  set_num_threads(threads);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST_F(TrainerTest, BatchLargerThanTheDatasetIsOneBatch) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  EXPECT_TRUE(finishes_within(20, [&] {
    auto model = tiny_peft_model();
    model->add_adapter("default", prompt_config(), 1);
    TrainConfig c = config("run");
    c.batch_size = std::numeric_limits<int64_t>::max();  // batches per epoch overflowed to 0
    c.bucket_batches = std::numeric_limits<int64_t>::max();
    c.max_steps = 0;
    c.epochs = 2;
    Trainer trainer(*model, *tokenizer_, c, data, examples);
    if (trainer.total_steps() != 2 || trainer.run().steps != 2) ::_exit(2);
  }));
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.max_steps = 0;
  c.epochs = std::numeric_limits<int64_t>::max();
  EXPECT_THROW(Trainer(*model, *tokenizer_, c, data, examples), Error);  // step count overflows
}

// A stop request is honoured between micro-batches, not only after an optimizer step: one step
// over a whole large epoch would otherwise keep a SIGTERM waiting for minutes.
TEST_F(TrainerTest, StopIsHonouredBetweenMicroBatches) {
  Dataset data = load_jsonl(task_file());
  auto one = tokenize_examples(data, *tokenizer_, nullptr, {});
  std::vector<TokenizedExample> examples;
  for (int i = 0; i < 2000; ++i) examples.push_back(one[size_t(i) % one.size()]);
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.batch_size = 1;
  c.grad_accum = 1 << 20;  // one optimizer step per epoch of 2000 micro-batches
  c.max_steps = 3;
  Trainer trainer(*model, *tokenizer_, c, data, examples);
  std::chrono::steady_clock::time_point stop_at;
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop_at = std::chrono::steady_clock::now();
    Trainer::stop_requested().store(true);
  });
  TrainResult result = trainer.run();
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stop_at).count();
  stopper.join();
  EXPECT_TRUE(result.interrupted);
  EXPECT_EQ(result.steps, 0);
  EXPECT_LT(waited, 1.0);
  nlohmann::json state;
  std::ifstream(dir_ / "run/training_state/trainer_state.json") >> state;
  EXPECT_EQ(state["global_step"], 0);
  EXPECT_EQ(state["batch_in_epoch"], 0) << "the partial step must be redone from its first batch";
}

TEST_F(TrainerTest, MetricsSymlinkIsNotWrittenThrough) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.max_steps = 1;
  fs::create_directories(dir_ / "run");
  const std::string victim = write("victim.txt", "precious\n");
  fs::create_symlink(victim, dir_ / "run/metrics.jsonl");
  try {
    Trainer(*model, *tokenizer_, c, data, examples).run();
    ADD_FAILURE() << "wrote through a symlink";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl: is a symbolic link"), std::string::npos)
        << e.what();
  }
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "precious\n");
}

std::vector<int64_t> train_record_steps(const fs::path& metrics) {
  std::vector<int64_t> steps;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json record = nlohmann::json::parse(line);
    if (record["type"] == "train") steps.push_back(record["step"].get<int64_t>());
  }
  return steps;
}

TEST_F(TrainerTest, ResumeKeepsOneMetricsRecordPerStep) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  auto model = tiny_peft_model();
  PromptAdapter& adapter = model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.max_steps = 8;
  c.save_every = 4;
  {
    // Steps 5 and 6 are logged after the step-4 checkpoint, then the run dies at step 7.
    Trainer trainer(*model, *tokenizer_, c, data, examples);
    trainer.set_event_callback([&](const TrainEvent& e) {
      if (e.kind == TrainEvent::Kind::kStep && e.step == 6)
        adapter.parameters()[0].data<float>()[0] = std::nanf("");
    });
    EXPECT_THROW(trainer.run(), Error);
  }
  EXPECT_EQ(train_record_steps(dir_ / "run/metrics.jsonl"),
            (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  Trainer(*model, *tokenizer_, c, data, examples).run(/*resume=*/true);
  EXPECT_EQ(train_record_steps(dir_ / "run/metrics.jsonl"),
            (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

// A tokenizer whose decode fails: exact-match evaluation throws, training does not.
class FailingDecodeTokenizer : public Tokenizer {
 public:
  explicit FailingDecodeTokenizer(const Tokenizer& inner) : inner_(inner) {}
  std::vector<int64_t> encode(std::string_view text, bool special) const override {
    return inner_.encode(text, special);
  }
  std::string decode(std::span<const int64_t>, bool) const override {
    fail(ErrorKind::kFormat, "decode: simulated evaluation failure");
  }
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  std::optional<int64_t> eos_id() const override { return inner_.eos_id(); }
  std::optional<int64_t> pad_id() const override { return inner_.pad_id(); }
  std::optional<int64_t> bos_id() const override { return inner_.bos_id(); }
  std::optional<int64_t> token_to_id(std::string_view t) const override {
    return inner_.token_to_id(t);
  }
  std::string id_to_token(int64_t id) const override { return inner_.id_to_token(id); }
  std::string kind() const override { return inner_.kind(); }

 private:
  const Tokenizer& inner_;
};

TEST_F(TrainerTest, FailingFinalEvaluationKeepsTheTrainedAdapter) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  FailingDecodeTokenizer failing(*tokenizer_);
  auto model = tiny_peft_model();
  model->add_adapter("default", prompt_config(), 1);
  TrainConfig c = config("run");
  c.max_steps = 4;
  c.metric = Metric::kExactMatch;
  c.max_new_tokens = 2;
  Trainer trainer(*model, failing, c, data, examples, &data, examples);
  EXPECT_THROW(trainer.run(), Error);
  EXPECT_TRUE(fs::exists(dir_ / "run/adapter_model.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "run/adapter_config.json"));
  nlohmann::json state;
  std::ifstream(dir_ / "run/training_state/trainer_state.json") >> state;
  EXPECT_EQ(state["global_step"], 4);
}

// A failed periodic evaluation checkpoints first; resuming runs that evaluation and ends with
// the same adapter and best/ as a run whose evaluations never failed.
TEST_F(TrainerTest, FailingPeriodicEvaluationCheckpointsAndResumesExactly) {
  Dataset data = load_jsonl(task_file());
  auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
  FailingDecodeTokenizer failing(*tokenizer_);
  auto train = [&](const std::string& out, const Tokenizer& tok, bool resume) {
    auto model = tiny_peft_model();
    model->add_adapter("default", prompt_config(), 1);
    TrainConfig c = config(out);
    c.max_steps = 6;
    c.eval_every = 3;
    c.metric = Metric::kExactMatch;
    c.max_new_tokens = 2;
    return Trainer(*model, tok, c, data, examples, &data, examples).run(resume);
  };
  train("full", *tokenizer_, false);
  EXPECT_THROW(train("split", failing, false), Error);
  nlohmann::json state;
  std::ifstream(dir_ / "split/training_state/trainer_state.json") >> state;
  EXPECT_EQ(state["global_step"], 3);
  EXPECT_EQ(state["eval_pending"], true);
  TrainResult resumed = train("split", *tokenizer_, true);
  EXPECT_EQ(resumed.steps, 6);
  EXPECT_EQ(resumed.best_step, 3);
  for (const char* f : {"adapter_model.safetensors", "best/adapter_model.safetensors"}) {
    auto a = SafetensorsFile::open((dir_ / "full" / f).string());
    auto b = SafetensorsFile::open((dir_ / "split" / f).string());
    EXPECT_EQ(a->get("prompt_embeddings").to_floats(), b->get("prompt_embeddings").to_floats())
        << f;
  }
}

TEST(Schedule, WarmupThenDecayLikeTransformers) {
  EXPECT_DOUBLE_EQ(schedule_factor(Schedule::kLinear, 0, 4, 10), 0.0);
  EXPECT_DOUBLE_EQ(schedule_factor(Schedule::kLinear, 2, 4, 10), 0.5);
  EXPECT_DOUBLE_EQ(schedule_factor(Schedule::kLinear, 4, 4, 10), 1.0);
  EXPECT_DOUBLE_EQ(schedule_factor(Schedule::kLinear, 7, 4, 10), 0.5);
  EXPECT_DOUBLE_EQ(schedule_factor(Schedule::kCosine, 7, 4, 10), 0.5);
  EXPECT_NEAR(schedule_factor(Schedule::kCosine, 5, 4, 10), 0.5 * (1 + std::cos(M_PI / 6)), 1e-12);
  EXPECT_DOUBLE_EQ(schedule_factor(Schedule::kConstant, 9, 0, 10), 1.0);
  EXPECT_THROW(parse_schedule("step"), Error);
}

}  // namespace
}  // namespace sp::testing
