// Llama-family parity with transformers (goldens from scripts/fixtures/llama_fixtures.py): logits,
// loss and input-embedding gradients of Llama (GQA; llama3 RoPE scaling, MQA, biases, tied head),
// Qwen2 and Mistral (sliding window), on the CPU and the emulated GPU; KV-cache greedy generation
// of a left-padded batch; config errors.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "engine/safetensors.h"
#include "models/generate.h"
#include "models/llama.h"
#include "models/lm_loss.h"
#include "models/model_loader.h"
#include "tests/test_util.h"

namespace sp {
namespace {

using testing::expect_all_close;
using testing::unpadded_rows;

const std::string kFixtures = SOFTPROMPT_FIXTURES;

// Tolerances: fp32 GEMMs and softmax summed in other orders than PyTorch's, and RoPE angles
// from std::cos/std::sin instead of torch's: values of magnitude ~5 differ by ~1e-6 relative.
// 2e-4 absolute bounds that with margin; a wrong rotation, mask, head grouping or scale moves
// logits by 1e-2 or more.
constexpr float kAbsTol = 2e-4f;

struct LlamaCase {
  std::string model;
  std::string device;
};

class LlamaParity : public ::testing::TestWithParam<LlamaCase> {
 protected:
  void SetUp() override {
    device_ = Device::parse(GetParam().device);
    model_ = load_causal_lm(kFixtures + "/" + GetParam().model, device_);
    golden_ = SafetensorsFile::open(kFixtures + "/golden/" + GetParam().model + ".safetensors");
  }
  Device device_;
  std::unique_ptr<CausalLM> model_;
  std::shared_ptr<SafetensorsFile> golden_;
};

INSTANTIATE_TEST_SUITE_P(
    Models, LlamaParity,
    ::testing::Values(LlamaCase{"llama_tiny_gqa", "cpu"}, LlamaCase{"llama_tiny_llama3", "cpu"},
                      LlamaCase{"qwen2_tiny", "cpu"}, LlamaCase{"mistral_tiny", "cpu"},
                      LlamaCase{"llama_tiny_gqa", "cuda-emu"},
                      LlamaCase{"llama_tiny_llama3", "cuda-emu"},
                      LlamaCase{"qwen2_tiny", "cuda-emu"}, LlamaCase{"mistral_tiny", "cuda-emu"}),
    [](const ::testing::TestParamInfo<LlamaCase>& info) {
      std::string device = info.param.device == "cpu" ? "cpu" : "cuda_emu";
      return info.param.model + "_" + device;
    });

TEST_P(LlamaParity, LossLogitsAndInputEmbeddingGradient) {
  Tensor ids = golden_->get("input_ids");
  Tensor mask = golden_->get("attention_mask").to(DType::F32).to(device_);
  Tensor embeds = model_->embed(ids).detach().set_requires_grad(true);
  Tensor hidden = model_->hidden_states(embeds, mask, Tensor(), nullptr, {});
  {
    // Compared at real tokens only: a right-padded query whose sliding window holds nothing but
    // padding has no visible key, and transformers' eager path then averages every value (the
    // float32-min mask makes all scores equal) where softprompt returns zeros. Neither reaches a
    // real token, the loss or a gradient.
    NoGradGuard no_grad;
    std::vector<float> want = golden_->get("logits").to_floats();
    std::vector<float> got = model_->logits(hidden).to_floats();
    const std::vector<int64_t> keep = golden_->get("attention_mask").to_ints();
    const size_t V = want.size() / keep.size();
    for (size_t p = 0; p < keep.size(); ++p)
      if (keep[p] == 0)
        for (size_t v = 0; v < V; ++v) want[p * V + v] = got[p * V + v] = 0.0f;
    expect_all_close(want, got, kAbsTol, "logits at real tokens");
  }
  CrossEntropyResult loss = causal_lm_loss(*model_, hidden, golden_->get("labels"));
  const float want = golden_->get("loss").item();
  EXPECT_NEAR(loss.loss.item(), want, 1e-5f * std::abs(want));  // a mean of O(1) terms
  loss.loss.backward();
  expect_all_close(golden_->get("grad_inputs_embeds").to_floats(), embeds.grad().to_floats(),
                   kAbsTol, "grad_inputs_embeds");
  EXPECT_FALSE(model_->word_embeddings().grad().defined()) << "frozen weights get no gradient";
}

// Checkpointed blocks end unfused (a plain residual add, then the next block's input norm); the
// others end in one residual + RMS norm pass. Both give the same gradient to the bit, train mode.
TEST_P(LlamaParity, ActivationCheckpointingGivesIdenticalGradients) {
  Tensor ids = golden_->get("input_ids");
  Tensor mask = golden_->get("attention_mask").to(DType::F32).to(device_);
  std::vector<std::vector<float>> grads;
  for (bool recompute : {false, true}) {
    Tensor embeds = model_->embed(ids).detach().set_requires_grad(true);
    ForwardOptions options;
    options.train = true;
    options.checkpoint_activations = recompute;
    Tensor hidden = model_->hidden_states(embeds, mask, Tensor(), nullptr, options);
    causal_lm_loss(*model_, hidden, golden_->get("labels")).loss.backward();
    grads.push_back(embeds.grad().to_floats());
  }
  EXPECT_EQ(grads[0], grads[1]);
}

// A block's projections are packed: q/k/v is one GEMM and gate/up one, forward and backward (the
// weights are frozen: dX only), so a train step runs 4 GEMMs per block each way plus the head's
// two, rotates q and k in one kernel each way, and neither adds nor copies gradient pieces (the
// packed gradients are written whole).
TEST(LlamaPackedProjections, RunFourGemmsPerBlockEachWay) {
  for (const char* name : {"llama_tiny_gqa", "qwen2_tiny", "mistral_tiny"}) {
    SCOPED_TRACE(name);
    const Device device = Device::cuda_emu();  // the CPU backend does not count kernels
    auto model = load_causal_lm(kFixtures + "/" + name, device);
    auto golden = SafetensorsFile::open(kFixtures + "/golden/" + name + ".safetensors");
    Tensor mask = golden->get("attention_mask").to(DType::F32).to(device);
    Tensor embeds = model->embed(golden->get("input_ids")).detach().set_requires_grad(true);
    Backend& backend = backend_for(device);
    backend.reset_stats();
    Tensor hidden = model->hidden_states(embeds, mask, Tensor(), nullptr, {});
    causal_lm_loss(*model, hidden, golden->get("labels")).loss.backward();
    const BackendStats stats = backend.stats();
    const uint64_t layers = uint64_t(model->info().num_layers);
    EXPECT_EQ(stats.gemm_calls, 8 * layers + 2);
    EXPECT_EQ(stats.launches_of("rotary_embedding_kernel"), 2 * layers);
    // The one add: the leaf embeddings take the first block's norm and residual gradients apart
    // (an op's output would take the norm's into the residual's pending gradient).
    EXPECT_EQ(stats.launches_of("binary_contiguous_kernel"), 1u);
    EXPECT_EQ(stats.launches_of("strided_copy_kernel"), 0u);
  }
}

// --dtype bf16: GEMM weights and the token table in bf16 (on the CPU the activations stay F32; on
// the emulated GPU they are bf16 too), held to the transformers fp32 golden at the real tokens.
// Every GEMM input rounded to 8 significant bits moves logits of magnitude ~4 by a few 1e-2
// (measured worst 0.079 on the CPU, 0.074 on cuda-emu); 0.2 absolute as for GPT-2's bf16 test,
// while a broken bf16 op moves them by O(1). The gradient stays within 10% of the golden's largest
// element (measured 0.016 absolute at most).
TEST_P(LlamaParity, Bf16WeightsStayCloseToTheFp32Golden) {
  auto model = load_causal_lm(kFixtures + "/" + GetParam().model, device_, DType::BF16);
  EXPECT_EQ(model->word_embeddings().dtype(), DType::BF16);
  Tensor ids = golden_->get("input_ids");
  Tensor mask = golden_->get("attention_mask").to(DType::F32).to(device_);
  Tensor embeds = model->embed(ids).detach().set_requires_grad(true);  // activation dtype
  Tensor hidden = model->hidden_states(embeds, mask, Tensor(), nullptr, {});
  {
    NoGradGuard no_grad;
    std::vector<float> want = golden_->get("logits").to_floats();
    std::vector<float> got = model->logits(hidden).to(DType::F32).to_floats();
    const std::vector<int64_t> keep = golden_->get("attention_mask").to_ints();
    const size_t V = want.size() / keep.size();
    for (size_t p = 0; p < keep.size(); ++p)
      if (keep[p] == 0)
        for (size_t v = 0; v < V; ++v) want[p * V + v] = got[p * V + v] = 0.0f;
    expect_all_close(want, got, 0.2f, "bf16 logits at real tokens");
  }
  CrossEntropyResult loss = causal_lm_loss(*model, hidden, golden_->get("labels"));
  const float want = golden_->get("loss").item();
  EXPECT_NEAR(loss.loss.item(), want, 2e-2f * std::abs(want));
  loss.loss.backward();
  std::vector<float> want_grad = golden_->get("grad_inputs_embeds").to_floats();
  float scale = 0;
  for (float v : want_grad) scale = std::max(scale, std::abs(v));
  expect_all_close(want_grad, embeds.grad().to(DType::F32).to_floats(), 0.1f * scale,
                   "bf16 grad_inputs_embeds");
}

TEST_P(LlamaParity, LeftPaddedBatchGeneratesLikeTransformers) {
  auto rows =
      unpadded_rows(golden_->get("gen_lp_input_ids"), golden_->get("gen_lp_attention_mask"));
  Tensor want_tensor = golden_->get("gen_lp_output_ids");
  std::vector<int64_t> want = want_tensor.to_ints();
  const int64_t B = 3, T = 7, W = want_tensor.size(1);
  std::vector<GenerationRequest> requests(B);
  for (int64_t b = 0; b < B; ++b) requests[size_t(b)].prompt_ids = rows[size_t(b)];
  GenerationConfig config;
  config.max_new_tokens = W - T;
  auto out = generate(*model_, requests, config);
  for (int64_t b = 0; b < B; ++b)
    EXPECT_EQ(out[size_t(b)],
              std::vector<int64_t>(want.begin() + b * W + T, want.begin() + (b + 1) * W))
        << "row " << b;
}

// The window bites: the Mistral fixture's 4-token window changes the logits of late positions,
// so the golden comparison above really tests it.
TEST(LlamaConfigTest, MistralWindowAppliesToEveryLayerAndChangesLateLogits) {
  namespace fs = std::filesystem;
  auto windowed = LlamaModel::load(kFixtures + "/mistral_tiny");
  ASSERT_EQ(windowed->config().layer_window, (std::vector<int64_t>{4, 4}));
  // The same weights with the window removed from config.json.
  const fs::path dir = fs::temp_directory_path() / ("sp_mistral_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(kFixtures + "/mistral_tiny", dir, fs::copy_options::recursive);
  nlohmann::json config;
  std::ifstream(dir / "config.json") >> config;
  config["sliding_window"] = nullptr;
  std::ofstream(dir / "config.json") << config.dump();
  auto full = LlamaModel::load(dir.string());
  fs::remove_all(dir);
  NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(kFixtures + "/golden/mistral_tiny.safetensors");
  Tensor embeds = windowed->embed(golden->get("input_ids").slice(0, 0, 1));  // 11 real tokens
  auto logits_at = [&](LlamaModel& m, int64_t t) {
    return m.logits(m.hidden_states(embeds, Tensor(), Tensor(), nullptr, {}))
        .select(1, t)
        .to_floats();
  };
  auto max_diff = [](const std::vector<float>& a, const std::vector<float>& b) {
    float worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    return worst;
  };
  // Position 3 sees 4 keys either way; position 10 sees 4 instead of 11.
  EXPECT_LT(max_diff(logits_at(*windowed, 3), logits_at(*full, 3)), 1e-5f);
  EXPECT_GT(max_diff(logits_at(*windowed, 10), logits_at(*full, 10)), 1e-2f);
}

TEST(LlamaConfigTest, ReadsTransformers4AndTransformers5RopeLayouts) {
  nlohmann::json base = {{"model_type", "llama"},      {"hidden_size", 64},
                         {"intermediate_size", 128},   {"num_hidden_layers", 2},
                         {"num_attention_heads", 4},   {"vocab_size", 100},
                         {"eos_token_id", {128001, 7}}};
  nlohmann::json v4 = base;
  v4["rope_theta"] = 500000.0;
  v4["rope_scaling"] = {{"rope_type", "llama3"},
                        {"factor", 32.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}};
  nlohmann::json v5 = base;
  v5["rope_parameters"] = v4["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  const LlamaConfig a = LlamaConfig::from_hf(HfConfig::from_json(v4, "v4.json"));
  const LlamaConfig b = LlamaConfig::from_hf(HfConfig::from_json(v5, "v5.json"));
  EXPECT_EQ(a.rope_type, "llama3");
  EXPECT_EQ(a.inverse_frequencies(), b.inverse_frequencies());
  EXPECT_EQ(a.num_kv_heads, 4);
  EXPECT_EQ(a.head_dim, 16);
  EXPECT_EQ(a.eos_token_id, 128001) << "the first of a list of end-of-sequence ids";
  // llama3 scaling leaves the highest frequency alone and divides the lowest by the factor.
  base["rope_theta"] = 500000.0;
  const LlamaConfig plain = LlamaConfig::from_hf(HfConfig::from_json(base, "plain.json"));
  EXPECT_EQ(a.inverse_frequencies().front(), plain.inverse_frequencies().front());
  EXPECT_FLOAT_EQ(a.inverse_frequencies().back(), plain.inverse_frequencies().back() / 32.0f);
}

TEST(LlamaConfigTest, UnsupportedAndMalformedFieldsNameTheField) {
  nlohmann::json c = {{"model_type", "llama"},    {"hidden_size", 64},
                      {"intermediate_size", 128}, {"num_hidden_layers", 2},
                      {"num_attention_heads", 4}, {"num_key_value_heads", 3},
                      {"vocab_size", 100}};
  auto message = [](const nlohmann::json& j) {
    try {
      LlamaConfig::from_hf(HfConfig::from_json(j, "config.json"));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message(c).find("num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
            std::string::npos)
      << message(c);
  c["num_key_value_heads"] = 2;
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(message(c).find("rope_type 'yarn' is not supported"), std::string::npos) << message(c);
  c.erase("rope_scaling");
  c["hidden_act"] = "gelu";
  EXPECT_NE(message(c).find("hidden_act 'gelu' is not supported"), std::string::npos) << message(c);
}

}  // namespace
}  // namespace sp
