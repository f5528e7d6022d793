// PEFT parity on a Llama-family model (goldens from scripts/fixtures/llama_fixtures.py): a
// PEFT-saved prompt-tuning adapter on the grouped-query Llama follows PEFT's AdamW trajectory.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/optim/adamw.h"
#include "engine/safetensors.h"
#include "models/model_loader.h"
#include "models/tokenizer.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

namespace sp {
namespace {

const std::string kFixtures = SOFTPROMPT_FIXTURES;

TEST(PeftLlamaParity, SixAdamWStepsFollowPeftsLossTrajectory) {
  const std::string model_dir = kFixtures + "/llama_tiny_gqa";
  const std::string peft_dir = kFixtures + "/peft/llama_tiny_gqa";
  PeftModel model(load_causal_lm(model_dir), load_tokenizer(model_dir));
  PromptAdapter& adapter = model.load_adapter(peft_dir + "/train_pt", "train", /*trainable=*/true);
  auto golden = SafetensorsFile::open(peft_dir + "/train_pt_golden.safetensors");
  testing::expect_all_close(golden->get("initial_prompt_embeddings").to_floats(),
                            adapter.parameters()[0].to_floats(), 0.0f, "initial prompt");
  AdamW optimizer(adapter.parameters(), testing::adamw_options_from(golden->metadata()));
  const std::vector<float> losses = golden->get("losses").to_floats();
  ForwardOptions train;
  train.train = true;  // attention_dropout is 0, as in PEFT's train-mode run
  for (int step = 0; step < 6; ++step) {
    const std::string k = "batch" + std::to_string(step) + "_";
    PeftBatch batch{golden->get(k + "input_ids"),
                    golden->get(k + "attention_mask"),
                    golden->get(k + "labels"),
                    Tensor(),
                    {}};
    PeftOutput out = model.forward(batch, train);
    // Adam steps amplify ulp-level differences a little: 1e-4 relative, as for GPT-2.
    EXPECT_NEAR(out.loss.item(), losses[size_t(step)], 1e-4f * std::abs(losses[size_t(step)]))
        << "step " << step;
    out.loss.backward();
    optimizer.step();
    optimizer.zero_grad();
  }
  testing::expect_all_close(golden->get("final_prompt_embeddings").to_floats(),
                            adapter.parameters()[0].to_floats(), 1e-4f, "final prompt");
}

}  // namespace
}  // namespace sp
