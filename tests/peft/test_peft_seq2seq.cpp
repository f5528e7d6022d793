// Seq2seq prompt tuning against PEFT (goldens from scripts/fixtures/t5_fixtures.py): encoder
// prompts for prompt tuning, decoder prompts for two-submodule multitask adapters, logits, loss,
// prompt gradients, greedy generation, and the 10-step training trajectory on T5.
#include <gtest/gtest.h>

#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "engine/optim/adamw.h"
#include "engine/safetensors.h"
#include "models/t5.h"
#include "tests/peft/peft_test_util.h"

namespace sp::testing {
namespace {

// As for GPT-2: fp32 summation-order noise is ~1e-6 of O(10) values; 1e-4 absolute catches any
// semantic slip (a prompt on the wrong stack, a missing -100 prefix, the head scale).
constexpr float kAbsTol = 1e-4f;

std::unique_ptr<PeftModel> t5_peft_model(const std::string& model) {
  std::shared_ptr<Seq2SeqLM> base = T5Model::load(kFixtures + "/" + model);
  std::shared_ptr<const Tokenizer> tokenizer = load_tokenizer(kFixtures + "/" + model);
  return std::make_unique<PeftModel>(base, tokenizer);
}

struct Case {
  std::string model, adapter;
};

class Seq2SeqParity : public ::testing::TestWithParam<Case> {};

TEST_P(Seq2SeqParity, LogitsLossGradientsAndGeneration) {
  const Case c = GetParam();
  const std::string dir = kFixtures + "/peft/" + c.model + "/" + c.adapter;
  auto model = t5_peft_model(c.model);
  PromptAdapter& adapter = model->load_adapter(dir, c.adapter, /*trainable=*/true);
  auto golden = SafetensorsFile::open(dir + "_golden.safetensors");
  PeftBatch batch;
  batch.input_ids = golden->get("input_ids");
  batch.attention_mask = golden->get("attention_mask");
  batch.labels = golden->get("labels");
  if (golden->contains("task_ids")) batch.task_ids = golden->get("task_ids");
  PeftOutput out = model->forward(batch, {}, /*return_logits=*/true);
  expect_close(golden->get("logits").to_floats(), out.logits.to_floats(), kAbsTol,
               c.adapter + " logits");
  const float want = golden->get("loss").item();
  EXPECT_NEAR(out.loss.item(), want, 1e-5f * std::abs(want));
  out.loss.backward();
  for (auto& [key, param] : adapter.named_parameters())
    expect_close(golden->get("grad_" + key).to_floats(), param.grad().to_floats(), kAbsTol,
                 c.adapter + " grad " + key);

  // PEFT's generate: encoder prompt only, greedy, 6 new tokens after the decoder start.
  std::vector<std::vector<int64_t>> prompts =
      unpadded_rows(golden->get("gen_input_ids"), golden->get("gen_attention_mask"));
  std::vector<int64_t> expected = golden->get("gen_output_ids").to_ints();
  const int64_t W = golden->get("gen_output_ids").size(1);
  std::vector<int64_t> tasks;
  if (golden->contains("gen_task_ids")) tasks = golden->get("gen_task_ids").to_ints();
  GenerationConfig config;
  config.max_new_tokens = W - 1;
  auto generated = model->generate(prompts, config, {}, tasks);
  for (int64_t b = 0; b < 2; ++b)
    EXPECT_EQ(generated[size_t(b)],
              std::vector<int64_t>(expected.begin() + b * W + 1, expected.begin() + (b + 1) * W))
        << c.adapter << " row " << b;
}

INSTANTIATE_TEST_SUITE_P(PeftSaved, Seq2SeqParity,
                         ::testing::Values(Case{"t5_tiny_v10", "pt_text"},
                                           Case{"t5_tiny_v10", "pt_random"},
                                           Case{"t5_tiny_v10", "mpt_s1"},
                                           Case{"t5_tiny_v10", "mpt_s2"},
                                           Case{"t5_tiny_v11", "pt_random"}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.model + "_" + info.param.adapter;
                         });

TEST(Seq2SeqPeft, TenAdamWStepsFollowPeftsLossTrajectory) {
  auto model = t5_peft_model("t5_tiny_v10");
  const std::string dir = kFixtures + "/peft/t5_tiny_v10/train_pt";
  PromptAdapter& adapter = model->load_adapter(dir, "train", /*trainable=*/true);
  auto golden = SafetensorsFile::open(dir + "_golden.safetensors");
  const auto& meta = golden->metadata();
  AdamWOptions options = testing::adamw_options_from(meta);
  AdamW optimizer(adapter.parameters(), options);
  std::vector<float> losses = golden->get("losses").to_floats();
  ForwardOptions train;
  train.train = true;
  for (int step = 0; step < 10; ++step) {
    const std::string k = "batch" + std::to_string(step) + "_";
    PeftBatch batch{golden->get(k + "input_ids"),
                    golden->get(k + "attention_mask"),
                    golden->get(k + "labels"),
                    Tensor(),
                    {}};
    PeftOutput out = model->forward(batch, train);
    // 1e-4 relative over ten Adam steps, as the issue asks.
    EXPECT_NEAR(out.loss.item(), losses[size_t(step)], 1e-4f * std::abs(losses[size_t(step)]))
        << "step " << step;
    out.loss.backward();
    if (step == 0)
      expect_close(golden->get("grad_step0").to_floats(),
                   adapter.parameters()[0].grad().to_floats(), kAbsTol, "grad step 0");
    optimizer.step();
    optimizer.zero_grad();
  }
  // Adam moves every coordinate by about lr per step whatever its gradient's size, so coordinates
  // with gradients ~1e-3 of the largest carry fp32 cancellation noise (~1e-3 relative, measured)
  // into their direction; on this tiny random T5 the prompts drift apart by up to 2e-3 (measured)
  // while the losses agree to 1e-5. 1e-2 is 3% of the 0.3 a coordinate can move in ten steps.
  expect_close(golden->get("final_prompt_embeddings").to_floats(),
               adapter.parameters()[0].to_floats(), 1e-2f, "final prompt");
}

TEST(Seq2SeqPeft, MixedAdapterBatchEqualsEachRowAlone) {
  auto model = t5_peft_model("t5_tiny_v10");
  const std::string dir = kFixtures + "/peft/t5_tiny_v10/";
  model->load_adapter(dir + "pt_text", "text");  // 6 encoder tokens
  model->load_adapter(dir + "mpt_s2", "mpt2");   // 4 encoder + 4 decoder tokens
  model->load_adapter(dir + "pt_random", "random");
  auto golden = SafetensorsFile::open(dir + "mpt_s2_golden.safetensors");
  PeftBatch batch;
  batch.input_ids = golden->get("input_ids");
  batch.attention_mask = golden->get("attention_mask");
  batch.labels = golden->get("labels");
  batch.task_ids = golden->get("task_ids");
  batch.row_adapters = {"mpt2", "text", "random"};
  NoGradGuard no_grad;
  PeftOutput mixed = model->forward(batch);
  double weighted = 0;
  int64_t count = 0;
  for (int64_t b = 0; b < 3; ++b) {
    PeftBatch alone{batch.input_ids.slice(0, b, b + 1).contiguous(),
                    batch.attention_mask.slice(0, b, b + 1).contiguous(),
                    batch.labels.slice(0, b, b + 1).contiguous(),
                    batch.task_ids.slice(0, b, b + 1).contiguous(),
                    {}};
    model->set_adapter(batch.row_adapters[size_t(b)]);
    PeftOutput single = model->forward(alone);
    weighted += double(single.loss.item()) * double(single.counted_targets);
    count += single.counted_targets;
  }
  EXPECT_EQ(mixed.counted_targets, count);
  EXPECT_NEAR(mixed.loss.item(), weighted / double(count), 1e-5);
}

// The seq2seq mixed-adapter path joins the encoder's mask on the host and pads the decoder's
// prompts on the left; on the emulated device the loss and the gradients of all three adapters
// are the CPU's (1e-5: as for the causal mixed batch; measured: up to 5e-7).
TEST(Seq2SeqPeft, MixedAdapterBatchOnTheDeviceIsTheCpusBatch) {
  const std::string dir = kFixtures + "/peft/t5_tiny_v10/";
  auto run = [&](Device device) {
    PeftModel model(T5Model::load(kFixtures + "/t5_tiny_v10", device),
                    load_tokenizer(kFixtures + "/t5_tiny_v10"));
    model.load_adapter(dir + "pt_text", "text");  // 6 encoder tokens
    model.load_adapter(dir + "mpt_s2", "mpt2");   // 4 encoder + 4 decoder tokens
    auto golden = SafetensorsFile::open(dir + "mpt_s2_golden.safetensors");
    PeftBatch batch{golden->get("input_ids"),
                    golden->get("attention_mask"),
                    golden->get("labels"),
                    golden->get("task_ids"),
                    {"mpt2", "text", "mpt2"}};
    PeftOutput out = model.forward(batch);
    out.loss.backward();
    std::vector<std::vector<float>> values{{out.loss.item()}};
    for (const char* name : {"text", "mpt2"})
      for (const Tensor& p : model.adapter(name).parameters())
        values.push_back(p.grad().to_floats());
    return values;
  };
  const auto on_cpu = run(Device::cpu()), on_device = run(Device::cuda_emu());
  ASSERT_EQ(on_cpu.size(), on_device.size());
  for (size_t i = 0; i < on_cpu.size(); ++i)
    expect_close(on_cpu[i], on_device[i], 1e-5f, i == 0 ? "loss" : "gradient " + std::to_string(i));
}

TEST(Seq2SeqPeft, DecoderPromptAtGenerationIsOptIn) {
  auto model = t5_peft_model("t5_tiny_v10");
  const std::string dir = kFixtures + "/peft/t5_tiny_v10/";
  model->load_adapter(dir + "mpt_s2", "mpt2");
  std::vector<std::vector<int64_t>> prompts{{5, 17, 33, 1}};
  GenerationConfig config;
  config.max_new_tokens = 6;
  auto peft_style = model->generate(prompts, config, {}, {1});
  model->set_decoder_prompt_in_generate(true);
  auto trained_style = model->generate(prompts, config, {}, {1});
  EXPECT_NE(peft_style, trained_style);
  // The opt-in path decodes exactly as the training forward sees the decoder: greedy tokens
  // fed back through forward() reproduce it.
  std::vector<int64_t> labels = trained_style[0];
  PeftBatch batch{Tensor::from_ints(prompts[0], {1, 4}),
                  Tensor(),
                  Tensor::from_ints(labels, {1, int64_t(labels.size())}),
                  Tensor::from_ints({1}, {1}),
                  {}};
  NoGradGuard no_grad;
  PeftOutput out = model->forward(batch, {}, true);
  std::vector<float> logits = out.logits.to_floats();
  const int64_t V = 420, N = 4;
  for (size_t t = 0; t < labels.size(); ++t) {
    const float* row = logits.data() + (N + t) * V;
    EXPECT_EQ(std::max_element(row, row + V) - row, labels[t]) << "position " << t;
  }
}

}  // namespace
}  // namespace sp::testing
