// AdamW and clip_grad_norm against torch (golden/adamw.safetensors from
// scripts/fixtures/gpt2_fixtures.py: torch.optim.AdamW foreach=False, clip_grad_norm_).
#include <gtest/gtest.h>

#include <cmath>

#include "engine/error.h"
#include "engine/optim/adamw.h"
#include "engine/safetensors.h"
#include "tests/test_util.h"

namespace sp {
namespace {

const std::string kGolden = std::string(SOFTPROMPT_FIXTURES) + "/golden/adamw.safetensors";

// Element-wise closeness: torch runs the same fp32 operations, differing at most in the order
// of a multiply-add, so a few ulps (1e-6 relative) suffice after five steps.
void expect_close(const std::vector<float>& want, const std::vector<float>& got, const char* what) {
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-6f + 1e-6f * std::abs(want[i])) << what << "[" << i << "]";
}

TEST(AdamW, MatchesTorchStepByStep) {
  auto golden = SafetensorsFile::open(kGolden);
  const auto& meta = golden->metadata();
  AdamWOptions options = testing::adamw_options_from(meta);
  Tensor param = golden->get("param_init").clone();
  param.set_requires_grad(true);
  AdamW optimizer({param}, options);
  for (int step = 0; step < 5; ++step) {
    std::string k = std::to_string(step);
    param.set_grad(golden->get("grad_step" + k).clone());
    optimizer.step();
    expect_close(golden->get("exp_avg_step" + k).to_floats(), optimizer.exp_avg()[0].to_floats(),
                 "exp_avg");
    expect_close(golden->get("exp_avg_sq_step" + k).to_floats(),
                 optimizer.exp_avg_sq()[0].to_floats(), "exp_avg_sq");
    expect_close(golden->get("param_step" + k).to_floats(), param.to_floats(), "param");
  }
  EXPECT_EQ(optimizer.steps_taken(), 5);
}

TEST(AdamW, RejectsBadHyperParametersAndFrozenParams) {
  Tensor p = Tensor::zeros({2});
  EXPECT_THROW(AdamW({p}, AdamWOptions{}), Error);  // not trainable
  p.set_requires_grad(true);
  AdamWOptions bad;
  bad.beta1 = 1.0f;
  EXPECT_THROW(AdamW({p}, bad), Error);
  bad = AdamWOptions{};
  bad.lr = -1.0f;
  EXPECT_THROW(AdamW({p}, bad), Error);
}

void check_clip(const std::string& prefix) {
  auto golden = SafetensorsFile::open(kGolden);
  Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({5});
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  a.set_grad(golden->get(prefix + "grad0_in").clone());
  b.set_grad(golden->get(prefix + "grad1_in").clone());
  double norm = clip_grad_norm({a, b}, 1.0);
  // torch reduces in fp32; we accumulate in double: agreement to fp32 rounding.
  EXPECT_NEAR(norm, golden->get(prefix + "total_norm").item(), 1e-5 * norm);
  expect_close(golden->get(prefix + "grad0_out").to_floats(), a.grad().to_floats(), "grad0");
  expect_close(golden->get(prefix + "grad1_out").to_floats(), b.grad().to_floats(), "grad1");
}

TEST(ClipGradNorm, MatchesTorchAboveTheLimit) {
  check_clip("clip_");
}
TEST(ClipGradNorm, LeavesGradientsBelowTheLimitUnchanged) {
  check_clip("clip_small_");
}

// The trainer's fused step clips as it reads the gradients: the same parameters as torch's
// clip_grad_norm_ followed by a step on the clipped gradients (torch's own outputs).
void check_clipped_step(const std::string& prefix) {
  auto golden = SafetensorsFile::open(kGolden);
  AdamWOptions options = testing::adamw_options_from(golden->metadata());
  auto make = [] {
    std::vector<Tensor> params = {Tensor::full({3, 4}, 0.5f), Tensor::full({5}, -0.25f)};
    for (Tensor& p : params) p.set_requires_grad(true);
    return params;
  };
  std::vector<Tensor> fused = make(), reference = make();
  AdamW fused_optimizer(fused, options), reference_optimizer(reference, options);
  for (int i = 0; i < 2; ++i) {
    const std::string k = std::to_string(i);
    fused[size_t(i)].set_grad(golden->get(prefix + "grad" + k + "_in").clone());
    reference[size_t(i)].set_grad(golden->get(prefix + "grad" + k + "_out").clone());
  }
  const Tensor norm = fused_optimizer.step_if_finite(Tensor(), 1.0);
  reference_optimizer.step();
  // torch reduces in fp32; we accumulate in double: agreement to fp32 rounding.
  EXPECT_NEAR(norm.item(), golden->get(prefix + "total_norm").item(), 1e-5 * norm.item());
  // torch's clip factor comes from its fp32 norm, ours from the double one: an ulp apart.
  for (size_t i = 0; i < 2; ++i)
    expect_close(reference[i].to_floats(), fused[i].to_floats(), "param");
  EXPECT_EQ(fused_optimizer.steps_taken(), 1);
}

TEST(AdamW, ClippedStepMatchesTorchClipThenStepAboveTheLimit) {
  check_clipped_step("clip_");
}
TEST(AdamW, ClippedStepMatchesTorchClipThenStepBelowTheLimit) {
  check_clipped_step("clip_small_");
}

// A non-finite guard value (the trainer passes the step's losses) or gradient norm skips the
// update: parameters and moments stay as they were, and the caller takes the step count back.
TEST(AdamW, NonFiniteGuardOrNormSkipsTheUpdate) {
  Tensor param = Tensor::full({4}, 1.0f);
  param.set_requires_grad(true);
  AdamW optimizer({param}, AdamWOptions{});
  auto unchanged = [&] {
    return param.to_floats() == std::vector<float>(4, 1.0f) &&
           optimizer.exp_avg()[0].to_floats() == std::vector<float>(4, 0.0f) &&
           optimizer.exp_avg_sq()[0].to_floats() == std::vector<float>(4, 0.0f);
  };
  param.set_grad(Tensor::full({4}, 0.5f));
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    const Tensor guard = Tensor::from_floats(std::vector<float>{2.0f, bad}, {2});
    EXPECT_FLOAT_EQ(optimizer.step_if_finite(guard, 1.0).item(), 1.0f);  // sqrt(4 * 0.25)
    EXPECT_TRUE(unchanged()) << bad;
    optimizer.discard_skipped_step();
    EXPECT_EQ(optimizer.steps_taken(), 0);
  }
  param.set_grad(Tensor::from_floats(std::vector<float>{0.5f, INFINITY, 0.5f, 0.5f}, {4}));
  EXPECT_EQ(optimizer.step_if_finite(Tensor(), 0.0).item(), INFINITY);
  EXPECT_TRUE(unchanged());
  optimizer.discard_skipped_step();
  // Finite guard and gradients: the update applies.
  param.set_grad(Tensor::full({4}, 0.5f));
  optimizer.step_if_finite(Tensor::full({1}, 3.0f), 1.0);
  EXPECT_FALSE(unchanged());
  EXPECT_EQ(optimizer.steps_taken(), 1);
  EXPECT_THROW(AdamW({param}, AdamWOptions{}).discard_skipped_step(), Error);
}

}  // namespace
}  // namespace sp
