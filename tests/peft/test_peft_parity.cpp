// Parity with PEFT (goldens from scripts/fixtures/gpt2_fixtures.py): PEFT-saved adapters give
// PEFT's logits, loss and prompt gradients; PEFT's 10-step training trajectory; generation.
#include <gtest/gtest.h>

#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "engine/optim/adamw.h"
#include "engine/safetensors.h"
#include "peft/multitask_prompt_embedding.h"
#include "tests/peft/peft_test_util.h"

namespace sp::testing {
namespace {

// Same reasoning as the GPT-2 parity tests: summation-order differences of fp32 kernels are
// ~1e-6 of O(10) values; 1e-4 absolute leaves margin and still catches any semantic error.
constexpr float kAbsTol = 1e-4f;

class PeftAdapterParity : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftAdapterParity, LogitsLossAndPromptGradients) {
  const std::string name = GetParam();
  auto model = tiny_peft_model();
  PromptAdapter& adapter = model->load_adapter(kPeftA + "/" + name, name, /*trainable=*/true);
  auto golden = SafetensorsFile::open(kPeftA + "/" + name + "_golden.safetensors");
  PeftBatch batch;
  batch.input_ids = golden->get("input_ids");
  batch.attention_mask = golden->get("attention_mask");
  batch.labels = golden->get("labels");
  if (golden->contains("task_ids")) batch.task_ids = golden->get("task_ids");
  PeftOutput out = model->forward(batch, {}, /*return_logits=*/true);
  expect_close(golden->get("logits").to_floats(), out.logits.to_floats(), kAbsTol,
               name + " logits");
  float want_loss = golden->get("loss").item();
  EXPECT_NEAR(out.loss.item(), want_loss, 1e-5f * std::abs(want_loss)) << name;
  out.loss.backward();
  for (auto& [key, param] : adapter.named_parameters())
    expect_close(golden->get("grad_" + key).to_floats(), param.grad().to_floats(), kAbsTol,
                 name + " grad " + key);
  EXPECT_FALSE(model->word_embeddings().grad().defined());
}

INSTANTIATE_TEST_SUITE_P(PeftSaved, PeftAdapterParity,
                         ::testing::Values("pt_random", "pt_sample_vocab", "pt_text_truncate",
                                           "pt_text_repeat", "mpt"));

TEST(PeftParity, TenAdamWStepsFollowPeftsLossTrajectory) {
  auto model = tiny_peft_model();
  PromptAdapter& adapter = model->load_adapter(kPeftA + "/train_pt", "train", /*trainable=*/true);
  auto golden = SafetensorsFile::open(kPeftA + "/train_pt_golden.safetensors");
  const auto& meta = golden->metadata();
  expect_close(golden->get("initial_prompt_embeddings").to_floats(),
               adapter.parameters()[0].to_floats(), 0.0f, "initial prompt");
  AdamWOptions options = testing::adamw_options_from(meta);
  AdamW optimizer(adapter.parameters(), options);
  std::vector<float> losses = golden->get("losses").to_floats();
  ForwardOptions train;
  train.train = true;  // the fixture's dropout is 0, as in PEFT's train-mode run
  for (int step = 0; step < 10; ++step) {
    std::string k = "batch" + std::to_string(step) + "_";
    PeftBatch batch{golden->get(k + "input_ids"),
                    golden->get(k + "attention_mask"),
                    golden->get(k + "labels"),
                    Tensor(),
                    {}};
    PeftOutput out = model->forward(batch, train);
    // Ten Adam steps amplify ulp-level differences a little; 1e-4 relative is the bound.
    EXPECT_NEAR(out.loss.item(), losses[size_t(step)], 1e-4f * std::abs(losses[size_t(step)]))
        << "step " << step;
    out.loss.backward();
    optimizer.step();
    optimizer.zero_grad();
  }
  expect_close(golden->get("final_prompt_embeddings").to_floats(),
               adapter.parameters()[0].to_floats(), 1e-4f, "final prompt");
}

class PeftGeneration : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftGeneration, GreedyIdsMatchPeftGenerate) {
  const std::string name = GetParam();
  auto model = tiny_peft_model();
  model->load_adapter(kPeftA + "/" + name, name);
  auto golden = SafetensorsFile::open(kPeftA + "/" + name + "_golden.safetensors");
  Tensor inputs = golden->get("gen_input_ids");
  std::vector<int64_t> flat = inputs.to_ints(), want = golden->get("gen_output_ids").to_ints();
  const int64_t B = inputs.size(0), T = inputs.size(1);
  const int64_t W = int64_t(want.size()) / B;
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t b = 0; b < B; ++b)
    prompts.emplace_back(flat.begin() + b * T, flat.begin() + (b + 1) * T);
  std::vector<int64_t> task_ids;
  if (golden->contains("gen_task_ids")) task_ids = golden->get("gen_task_ids").to_ints();
  GenerationConfig config;
  config.max_new_tokens = W - T;
  auto out = model->generate(prompts, config, {}, task_ids);
  for (int64_t b = 0; b < B; ++b)
    EXPECT_EQ(out[size_t(b)],
              std::vector<int64_t>(want.begin() + b * W + T, want.begin() + (b + 1) * W))
        << name << " row " << b;
}

INSTANTIATE_TEST_SUITE_P(PeftSaved, PeftGeneration, ::testing::Values("pt_random", "mpt"));

}  // namespace
}  // namespace sp::testing
