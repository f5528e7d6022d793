// PeftModel behaviour: prompt inits against PEFT's, adapters (add/switch/delete/save/load),
// mixed-adapter batches, multitask errors, and PEFT's trainable-parameter summary.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "engine/safetensors.h"
#include "models/lm_loss.h"
#include "peft/adapter_io.h"
#include "peft/multitask_prompt_embedding.h"
#include "peft/prompt_embedding.h"
#include "tests/peft/peft_test_util.h"

namespace sp::testing {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("sp_peft_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str(const std::string& child = "") const { return (path_ / child).string(); }

 private:
  fs::path path_;
};

PromptTuningConfig causal_config(int64_t tokens, PromptInit init = PromptInit::kRandom) {
  PromptTuningConfig c;
  c.task_type = TaskType::kCausalLm;
  c.num_virtual_tokens = tokens;
  c.prompt_tuning_init = init;
  return c;
}

PeftBatch golden_batch(const std::string& adapter) {
  auto golden = SafetensorsFile::open(kPeftA + "/" + adapter + "_golden.safetensors");
  PeftBatch batch;
  batch.input_ids = golden->get("input_ids");
  batch.attention_mask = golden->get("attention_mask");
  batch.labels = golden->get("labels");
  return batch;
}

TEST(PromptInit, TextTruncatesAndRepeatsLikePeft) {
  for (std::string name : {"pt_text_truncate", "pt_text_repeat"}) {
    auto model = tiny_peft_model();
    PromptTuningConfig config =
        PromptTuningConfig::load(kPeftA + "/" + name + "/adapter_config.json");
    config.inference_mode = false;
    config.tokenizer_name_or_path = kTinyA;
    PromptAdapter& ours = model->add_adapter("ours", config);
    auto saved = SafetensorsFile::open(kPeftA + "/" + name + "/adapter_model.safetensors");
    // The init copies word-embedding rows: bit-identical to PEFT's.
    EXPECT_EQ(ours.parameters()[0].to_floats(), saved->get("prompt_embeddings").to_floats())
        << name;
    auto golden = SafetensorsFile::open(kPeftA + "/" + name + "_golden.safetensors");
    std::vector<int64_t> text_ids = golden->get("init_text_ids").to_ints();
    std::vector<int64_t> ids =
        text_init_ids(config, *model->tokenizer(), *config.num_virtual_tokens);
    for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], text_ids[i % text_ids.size()]);
  }
}

TEST(PromptInit, SampleVocabCopiesWordEmbeddingRowsWithASeed) {
  auto model = tiny_peft_model();
  PromptAdapter& a = model->add_adapter("a", causal_config(6, PromptInit::kSampleVocab), 11);
  PromptAdapter& b = model->add_adapter("b", causal_config(6, PromptInit::kSampleVocab), 11);
  PromptAdapter& c = model->add_adapter("c", causal_config(6, PromptInit::kSampleVocab), 12);
  std::vector<float> rows = a.parameters()[0].to_floats();
  EXPECT_EQ(rows, b.parameters()[0].to_floats());
  EXPECT_NE(rows, c.parameters()[0].to_floats());
  std::vector<float> wte = model->word_embeddings().to_floats();
  const size_t d = 64;
  for (size_t r = 0; r < 6; ++r) {
    bool found = false;
    for (size_t v = 0; v < wte.size() / d && !found; ++v)
      found = std::equal(rows.begin() + long(r * d), rows.begin() + long((r + 1) * d),
                         wte.begin() + long(v * d));
    EXPECT_TRUE(found) << "row " << r << " is not a word-embedding row";
  }
}

TEST(PromptInit, RandomIsStandardNormalAndSeeded) {
  auto model = tiny_peft_model();
  PromptAdapter& a = model->add_adapter("a", causal_config(100), 5);
  std::vector<float> v = a.parameters()[0].to_floats();
  double mean = 0, var = 0;
  for (float x : v) mean += x;
  mean /= double(v.size());
  for (float x : v) var += (x - mean) * (x - mean);
  var /= double(v.size());
  // 6400 N(0,1) draws: mean within 5 standard errors (0.0125 each), variance within 0.1.
  EXPECT_NEAR(mean, 0.0, 0.0625);
  EXPECT_NEAR(var, 1.0, 0.1);
  EXPECT_TRUE(a.parameters()[0].requires_grad());
}

TEST(PeftModelAdapters, SaveLoadGivesIdenticalLogitsAndPeftFiles) {
  TempDir dir;
  auto model = tiny_peft_model();
  model->add_adapter("a", causal_config(5), 3);
  model->save_pretrained(dir.str("a"));
  EXPECT_TRUE(fs::exists(dir.str("a/adapter_config.json")));
  auto weights = SafetensorsFile::open(dir.str("a/adapter_model.safetensors"));
  EXPECT_EQ(weights->metadata().at("format"), "pt");
  EXPECT_EQ(weights->names(), std::vector<std::string>({"prompt_embeddings"}));
  EXPECT_EQ(weights->entry("prompt_embeddings").dtype, "F32");
  model->load_adapter(dir.str("a"), "reloaded");
  PeftBatch batch = golden_batch("pt_random");
  NoGradGuard no_grad;
  std::vector<float> first = model->forward(batch, {}, true).logits.to_floats();
  model->set_adapter("reloaded");
  EXPECT_EQ(model->forward(batch, {}, true).logits.to_floats(), first);
  // The saved config is PEFT's: inference_mode true, filled fields, nulls kept.
  PromptTuningConfig saved = PromptTuningConfig::load(dir.str("a/adapter_config.json"));
  EXPECT_TRUE(saved.inference_mode);
  EXPECT_EQ(saved.token_dim, 64);
  EXPECT_EQ(saved.num_layers, 2);
}

TEST(PeftModelAdapters, SwitchingListingAndDeleting) {
  auto model = tiny_peft_model();
  model->add_adapter("first", causal_config(3), 1);
  model->add_adapter("second", causal_config(7), 2);
  EXPECT_EQ(model->active_adapter(), "first");
  EXPECT_EQ(model->list_adapters(), std::vector<std::string>({"first", "second"}));
  PeftBatch batch = golden_batch("pt_random");
  NoGradGuard no_grad;
  EXPECT_EQ(model->forward(batch, {}, true).logits.size(1), 3 + 10);
  model->set_adapter("second");
  EXPECT_EQ(model->forward(batch, {}, true).logits.size(1), 7 + 10);
  model->delete_adapter("second");
  EXPECT_EQ(model->active_adapter(), "first");
  EXPECT_THROW(model->set_adapter("second"), Error);
  EXPECT_THROW(model->add_adapter("first", causal_config(3)), Error);
}

TEST(PeftModelAdapters, MixedAdapterBatchEqualsEachRowAlone) {
  auto model = tiny_peft_model();
  model->load_adapter(kPeftA + "/pt_random", "random5");      // 5 virtual tokens
  model->load_adapter(kPeftA + "/pt_text_repeat", "text11");  // 11 virtual tokens
  model->load_adapter(kPeftA + "/mpt", "mpt");                // multitask, 5 tokens
  PeftBatch batch = golden_batch("pt_random");
  batch.row_adapters = {"text11", "mpt", "random5"};
  batch.task_ids = Tensor::from_ints({0, 2, 0}, {3});
  NoGradGuard no_grad;
  PeftOutput mixed = model->forward(batch, {}, true);
  const int64_t V = 512, W = mixed.logits.size(1);
  std::vector<float> mixed_logits = mixed.logits.to_floats();
  float loss_sum = 0;
  int64_t count_sum = 0;
  for (int64_t b = 0; b < 3; ++b) {
    PeftBatch alone;
    alone.input_ids = batch.input_ids.slice(0, b, b + 1).contiguous();
    alone.attention_mask = batch.attention_mask.slice(0, b, b + 1).contiguous();
    alone.labels = batch.labels.slice(0, b, b + 1).contiguous();
    alone.task_ids = batch.task_ids.slice(0, b, b + 1).contiguous();
    model->set_adapter(batch.row_adapters[size_t(b)]);
    PeftOutput single = model->forward(alone, {}, true);
    std::vector<float> logits = single.logits.to_floats();
    const int64_t L = single.logits.size(1);
    // Real positions only (the mixed row is padded at its end to the widest prompt).
    std::vector<int64_t> mask = alone.attention_mask.to_ints();
    const int64_t N = L - 10;
    for (int64_t t = 0; t < N + 10; ++t) {
      if (t >= N && mask[size_t(t - N)] == 0) continue;
      for (int64_t v = 0; v < V; ++v)
        ASSERT_NEAR(mixed_logits[size_t((b * W + t) * V + v)], logits[size_t(t * V + v)], 2e-5f)
            << "row " << b << " position " << t;
    }
    loss_sum += single.loss.item() * float(single.counted_targets);
    count_sum += single.counted_targets;
  }
  EXPECT_EQ(mixed.counted_targets, count_sum);
  EXPECT_NEAR(mixed.loss.item(), loss_sum / float(count_sum), 1e-5f);
}

// A mixed-adapter batch pads each row's prompt to the widest one; its mask and labels are joined
// on the host and uploaded once. On the emulated device the loss and both adapters' gradients
// are the CPU's: 1e-5 is ~100 fp32 roundings of these O(1) values, which is what the two
// backends' different summation orders give (measured: up to 5e-7).
TEST(PeftModelAdapters, MixedAdapterBatchOnTheDeviceIsTheCpusBatch) {
  auto run = [](Device device) {
    PeftModel model(Gpt2Model::load(kTinyA, device), load_tokenizer(kTinyA));
    model.load_adapter(kPeftA + "/pt_random", "random5");      // 5 virtual tokens
    model.load_adapter(kPeftA + "/pt_text_repeat", "text11");  // 11 virtual tokens
    PeftBatch batch = golden_batch("pt_random");
    batch.row_adapters = {"text11", "random5", "text11"};
    PeftOutput out = model.forward(batch);
    out.loss.backward();
    return std::vector<std::vector<float>>{
        {out.loss.item()},
        model.adapter("random5").parameters()[0].grad().to_floats(),
        model.adapter("text11").parameters()[0].grad().to_floats()};
  };
  const auto on_cpu = run(Device::cpu()), on_device = run(Device::cuda_emu());
  expect_close(on_cpu[0], on_device[0], 1e-5f, "loss");
  expect_close(on_cpu[1], on_device[1], 1e-5f, "5-token prompt gradient");
  expect_close(on_cpu[2], on_device[2], 1e-5f, "11-token prompt gradient");
}

TEST(PeftModelAdapters, MixedBatchTrainsEachAdapterWithItsOwnRows) {
  auto model = tiny_peft_model();
  PromptAdapter& a = model->add_adapter("a", causal_config(4), 1);
  PromptAdapter& b = model->add_adapter("b", causal_config(6), 2);
  PeftBatch batch = golden_batch("pt_random");
  batch.row_adapters = {"a", "b", "b"};
  model->forward(batch).loss.backward();
  EXPECT_TRUE(a.parameters()[0].grad().defined());
  EXPECT_TRUE(b.parameters()[0].grad().defined());
}

TEST(Multitask, MissingTaskIdsIsPeftsError) {
  auto model = tiny_peft_model();
  model->load_adapter(kPeftA + "/mpt", "mpt");
  try {
    model->forward(golden_batch("mpt"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("task_ids cannot be None"), std::string::npos);
  }
  PeftBatch batch = golden_batch("mpt");
  batch.task_ids = Tensor::from_ints({0, 1, 3}, {3});
  EXPECT_THROW(model->forward(batch), Error);  // task 3 of 3
}

TEST(Multitask, MissingFactorKeysAndShapeMismatchAreErrors) {
  TempDir dir;
  fs::copy(kPeftA + "/mpt", dir.str("mpt"));
  auto saved = SafetensorsFile::open(kPeftA + "/mpt/adapter_model.safetensors");
  save_safetensors(dir.str("mpt/adapter_model.safetensors"),
                   {{"prompt_embeddings", saved->get("prompt_embeddings")},
                    {"prefix_task_rows", saved->get("prefix_task_rows")}});
  auto model = tiny_peft_model();
  try {
    model->load_adapter(dir.str("mpt"), "broken");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'prefix_task_cols'"), std::string::npos)
        << e.what();
  }
  save_safetensors(dir.str("mpt/adapter_model.safetensors"),
                   {{"prompt_embeddings", saved->get("prompt_embeddings")},
                    {"prefix_task_cols", Tensor::zeros({3, 5, 3})},
                    {"prefix_task_rows", saved->get("prefix_task_rows")}});
  try {
    model->load_adapter(dir.str("mpt"), "broken");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("has shape [3, 5, 3] but the adapter config needs [3, 5, 2]"),
        std::string::npos)
        << e.what();
  }
}

TEST(Multitask, SourceInitsFromAnAdapterFile) {
  std::string source = kPeftA + "/mpt/adapter_model.safetensors";
  auto src = SafetensorsFile::open(source);
  auto model = tiny_peft_model();
  MultitaskPromptTuningConfig exact;
  exact.task_type = TaskType::kCausalLm;
  exact.num_virtual_tokens = 5;
  exact.num_ranks = 2;
  exact.num_tasks = 1;
  exact.prompt_tuning_init = PromptInit::kExactSourceTask;
  exact.prompt_tuning_init_state_dict_path = source;
  exact.prompt_tuning_init_task = 2;
  auto& e = dynamic_cast<MultitaskPromptEmbedding&>(model->add_adapter("exact", exact));
  EXPECT_EQ(e.shared().to_floats(), src->get("prompt_embeddings").to_floats());
  EXPECT_EQ(e.task_cols().to_floats(),
            src->get("prefix_task_cols").select(0, 2).contiguous().to_floats());

  MultitaskPromptTuningConfig average = exact;
  average.prompt_tuning_init = PromptInit::kAverageSourceTasks;
  auto& a = dynamic_cast<MultitaskPromptEmbedding&>(model->add_adapter("average", average));
  std::vector<float> want = mean(src->get("prefix_task_rows"), {0}).to_floats();
  expect_close(want, a.task_rows().to_floats(), 1e-7f, "average rows");

  MultitaskPromptTuningConfig shared_only = exact;
  shared_only.prompt_tuning_init = PromptInit::kOnlySourceShared;
  auto& s = dynamic_cast<MultitaskPromptEmbedding&>(model->add_adapter("shared", shared_only));
  EXPECT_EQ(s.shared().to_floats(), src->get("prompt_embeddings").to_floats());

  exact.prompt_tuning_init_task = 7;
  EXPECT_THROW(model->add_adapter("bad", exact), Error);
}

TEST(PeftModelAdapters, AdapterForAnotherModelIsAClearError) {
  TempDir dir;
  fs::copy(kPeftA + "/pt_random", dir.str("other"));
  nlohmann::json config;
  std::ifstream(dir.str("other/adapter_config.json")) >> config;
  config["token_dim"] = 768;
  std::ofstream(dir.str("other/adapter_config.json")) << config.dump(2);
  auto model = tiny_peft_model();
  try {
    model->load_adapter(dir.str("other"), "other");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("token_dim = 768 does not match the model's hidden size = 64"),
        std::string::npos)
        << e.what();
  }
}

TEST(PeftModelAdapters, PickleOnlyAdapterIsRefusedWithAHint) {
  TempDir dir;
  fs::create_directories(dir.str("pickle"));
  fs::copy_file(kPeftA + "/pt_random/adapter_config.json", dir.str("pickle/adapter_config.json"));
  std::ofstream(dir.str("pickle/adapter_model.bin")) << "not really";
  auto model = tiny_peft_model();
  EXPECT_THROW(model->load_adapter(dir.str("pickle"), "p"), Error);
}

TEST(PeftModelAdapters, TrainableParameterSummaryMatchesPeft) {
  auto model = tiny_peft_model();
  model->add_adapter("pt", causal_config(5));
  // Printed by PEFT 0.21.2 for the same model and config (see tests/fixtures/README_gpt2.md).
  EXPECT_EQ(model->trainable_parameters_summary(),
            "trainable params: 320 || all params: 141,376 || trainable%: 0.2263");
  auto mpt_model = tiny_peft_model();
  MultitaskPromptTuningConfig m;
  m.task_type = TaskType::kCausalLm;
  m.num_virtual_tokens = 5;
  m.num_tasks = 3;
  m.num_ranks = 2;
  mpt_model->add_adapter("mpt", m);
  EXPECT_EQ(mpt_model->trainable_parameters_summary(),
            "trainable params: 734 || all params: 141,790 || trainable%: 0.5177");
}

// ---- prompt tuning a bf16 model (PEFT casts the fp32 prompt to the model's dtype) ----

// The prompt stays F32 and trainable; it is cast to the activation dtype where it is injected
// (bf16 on cuda-emu, F32 on the CPU, whose bf16 model keeps F32 activations) and its gradient
// comes back F32. Both bf16 runs must stay near the fp32 CPU run: loss within 2% (measured 0.04%
// on the CPU and 0.07% on cuda-emu, whose activations are rounded at every op) and the prompt
// gradient within 10% of its largest element (measured 1.4% and 2.6%), where a prompt that
// failed to reach the model, or a gradient not cast back, would be off by 100%.
TEST(PeftBf16, PromptTuningABf16ModelKeepsAnF32PromptAndGradient) {
  auto run = [](Device device, DType dtype, float& loss, DType& grad_dtype) {
    std::shared_ptr<CausalLM> base = Gpt2Model::load(kTinyA, device, dtype);
    PeftModel model(base, load_tokenizer(kTinyA));
    PromptAdapter& adapter = model.add_adapter("a", causal_config(4, PromptInit::kRandom), 3);
    Tensor prompt = adapter.parameters()[0];
    EXPECT_EQ(prompt.dtype(), DType::F32);
    PeftOutput out = model.forward(golden_batch("pt_random"));
    loss = out.loss.item();
    out.loss.backward();
    grad_dtype = prompt.grad().dtype();
    return prompt.grad().to_floats();
  };
  float want_loss = 0;
  DType grad_dtype{};
  std::vector<float> want = run(Device::cpu(), DType::F32, want_loss, grad_dtype);
  float scale = 0;
  for (float v : want) scale = std::max(scale, std::abs(v));
  std::printf("[ measured ] largest fp32 prompt-gradient element %.3g\n", double(scale));
  std::vector<Device> devices{Device::cpu()};
  if (backend_available(Device::parse("cuda-emu"))) devices.push_back(Device::parse("cuda-emu"));
  for (Device device : devices) {
    float got_loss = 0;
    std::vector<float> got = run(device, DType::BF16, got_loss, grad_dtype);
    EXPECT_EQ(grad_dtype, DType::F32) << device.str();
    EXPECT_NEAR(got_loss, want_loss, 0.02f * want_loss) << device.str();
    std::printf("[ measured ] %s loss %.5f vs fp32 %.5f\n", device.str().c_str(), double(got_loss),
                double(want_loss));
    expect_close(want, got, 0.1f * scale, device.str() + " bf16 prompt gradient");
  }
}

// ForwardOptions::shared_prefix: a batch-wide soft prompt is run once (row 0) and every row
// attends to its keys and values. The result must be the unshared forward's: the same sums in
// different GEMM blockings, so 1e-5 on values of order 1 (a missing prompt key, a wrong causal
// offset or a lost gradient row moves them by 1e-2 or more); the prompt's gradient is the sum
// over rows either way. It must also do less work: fewer GEMM FLOPs.
TEST(PeftSharedPrefix, ABatchWidePromptRunsOnceWithTheUnsharedLossAndGradients) {
  std::vector<Device> devices{Device::cpu()};
  if (backend_available(Device::parse("cuda-emu"))) devices.push_back(Device::parse("cuda-emu"));
  for (Device device : devices) {
    auto model = Gpt2Model::load(kTinyA, device);
    PeftBatch batch = golden_batch("pt_random");
    const int64_t B = batch.input_ids.size(0), N = 4, d = model->info().token_dim;
    ASSERT_GT(B, 1);
    const Tensor body_mask = batch.attention_mask.to(DType::F32);
    Tensor mask = concat({Tensor::full({B, N}, 1.0f), body_mask}, 1).to(device);
    Tensor labels = concat({Tensor::full({B, N}, -100.0f).to(DType::I64), batch.labels}, 1);
    struct Run {
      std::vector<float> hidden, prompt_grad, text_grad;
      float loss = 0;
      double gemm_flops = 0;
    };
    auto run = [&](int64_t shared) {
      Tensor prompt = randn({1, N, d}, 11).to(device).set_requires_grad(true);
      Tensor text = model->embed(batch.input_ids.to(device)).detach().set_requires_grad(true);
      Tensor embeds = concat({concat(std::vector<Tensor>(size_t(B), prompt), 0), text}, 1);
      ForwardOptions options;
      options.shared_prefix = shared;
      backend_for(device).reset_stats();
      Tensor hidden = model->hidden_states(embeds, mask, Tensor(), nullptr, options);
      Tensor loss = causal_lm_loss(*model, hidden, labels.to(device)).loss;
      loss.backward();
      return Run{hidden.to_floats(), prompt.grad().to_floats(), text.grad().to_floats(),
                 loss.item(), backend_for(device).stats().gemm_flops};
    };
    const Run unshared = run(0), shared = run(N);
    expect_close(unshared.hidden, shared.hidden, 1e-5f, device.str() + " hidden states");
    EXPECT_NEAR(shared.loss, unshared.loss, 1e-5f) << device.str();
    expect_close(unshared.prompt_grad, shared.prompt_grad, 1e-5f, device.str() + " prompt grad");
    expect_close(unshared.text_grad, shared.text_grad, 1e-5f, device.str() + " text grad");
    EXPECT_LT(shared.gemm_flops, unshared.gemm_flops) << device.str();
  }
}

// PeftModel promises shared_prefix only where the prompt rows are equal: one adapter (a
// mixed batch of two identical adapters gives the same outputs with more GEMM work).
TEST(PeftSharedPrefix, PeftModelSharesOnlyOneAdaptersPrompt) {
  auto model = tiny_peft_model();
  model->add_adapter("a", causal_config(4, PromptInit::kRandom), 3);
  model->add_adapter("b", causal_config(4, PromptInit::kRandom), 3);  // the same seed: equal
  PeftBatch batch = golden_batch("pt_random");
  const int64_t B = batch.input_ids.size(0);
  NoGradGuard no_grad;
  std::vector<std::string> one(size_t(B), "a"), two = one;
  two.back() = "b";
  double flops[2] = {0, 0};
  std::vector<float> hidden[2];
  for (int i = 0; i < 2; ++i) {
    batch.row_adapters = i == 0 ? one : two;
    backend_for(Device::cpu()).reset_stats();
    hidden[i] = model->forward(batch).hidden.to_floats();
    flops[i] = backend_for(Device::cpu()).stats().gemm_flops;
  }
  expect_close(hidden[1], hidden[0], 1e-5f, "one adapter vs two equal ones");
  EXPECT_LT(flops[0], flops[1]);
}

}  // namespace
}  // namespace sp::testing
