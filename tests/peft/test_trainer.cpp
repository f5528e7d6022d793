// Data parsing and label masking, and the trainer: loss goes down, resume is bitwise exact,
// NaN stops training keeping the last good checkpoint, SIGINT checkpoints and returns.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "engine/log.h"
#include "engine/safetensors.h"
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
