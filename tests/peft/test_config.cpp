// PromptTuningConfig / MultitaskPromptTuningConfig: PEFT's validation messages, defaults filled
// from the model, unknown keys, and adapter_config.json text identical to PEFT's file.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/error.h"
#include "engine/log.h"
#include "peft/config.h"
#include "tests/peft/peft_test_util.h"

namespace sp::testing {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void expect_invalid(const nlohmann::json& j, const std::string& fragment) {
  try {
    PromptTuningConfig::from_json(j, "cfg.json");
    FAIL() << "expected an error containing: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << "names the file";
  }
}

nlohmann::json base_config() {
  return {{"task_type", "CAUSAL_LM"}, {"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 8}};
}

class PeftConfigFiles : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftConfigFiles, RoundTripIsByteIdenticalToPeftsFile) {
  std::string path = kFixtures + "/peft/" + GetParam() + "/adapter_config.json";
  PromptTuningConfig config = PromptTuningConfig::load(path);
  EXPECT_EQ(config.to_adapter_config_text(), read_text(path));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PeftConfigFiles,
                         ::testing::Values("gpt2_tiny_a/pt_random", "gpt2_tiny_a/pt_text_truncate",
                                           "gpt2_tiny_a/pt_sample_vocab", "gpt2_tiny_a/mpt",
                                           "t5_tiny_v10/pt_text", "t5_tiny_v10/mpt_s2"));

TEST(PeftConfig, DefaultsMatchPeft) {
  PromptTuningConfig c = PromptTuningConfig::from_json(base_config(), "cfg.json");
  EXPECT_EQ(c.prompt_tuning_init, PromptInit::kRandom);
  EXPECT_FALSE(c.token_dim.has_value());
  EXPECT_FALSE(c.inference_mode);
  MultitaskPromptTuningConfig m;
  EXPECT_TRUE(m.is_multitask());
  EXPECT_EQ(m.num_tasks, 1);
  EXPECT_EQ(m.num_ranks, 1);
  EXPECT_EQ(m.prompt_tuning_init_task, 0);
}

TEST(PeftConfig, TextInitNeedsTokenizerAndText) {
  auto j = base_config();
  j["prompt_tuning_init"] = "TEXT";
  j["prompt_tuning_init_text"] = "hello";
  expect_invalid(j, "When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be None.");
  j["tokenizer_name_or_path"] = "gpt2";
  j.erase("prompt_tuning_init_text");
  expect_invalid(j, "When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None.");
}

TEST(PeftConfig, TokenizerKwargsOnlyWithText) {
  auto j = base_config();
  j["tokenizer_kwargs"] = {{"trust_remote_code", true}};
  expect_invalid(j, "tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'.");
}

TEST(PeftConfig, TaskTypes) {
  auto j = base_config();
  j["task_type"] = "NOPE";
  expect_invalid(j, "Invalid task type: 'NOPE'");
  j["task_type"] = "SEQ_CLS";
  expect_invalid(j, "PEFT task type that softprompt does not support");
}

TEST(PeftConfig, NumVirtualTokensMustBePositiveInteger) {
  auto j = base_config();
  j["num_virtual_tokens"] = 0;
  expect_invalid(j, "num_virtual_tokens must be a positive integer, got 0");
  j["num_virtual_tokens"] = "8";
  expect_invalid(j, "field 'num_virtual_tokens' must be an integer or null, found string");
  j.erase("num_virtual_tokens");
  expect_invalid(j, "num_virtual_tokens is required");
}

TEST(PeftConfig, MultitaskSourceInitsNeedAStateDictPath) {
  auto j = base_config();
  j["peft_type"] = "MULTITASK_PROMPT_TUNING";
  j["prompt_tuning_init"] = "EXACT_SOURCE_TASK";
  expect_invalid(j,
                 "prompt_tuning_init_state_dict_path needs to be specified with EXACT_SOURCE_TASK");
  j["prompt_tuning_init"] = "SAMPLE_VOCAB";
  expect_invalid(j, "prompt_tuning_init 'SAMPLE_VOCAB' is not valid for MULTITASK_PROMPT_TUNING");
}

TEST(PeftConfig, UnknownKeysAreWarnedAboutAndIgnored) {
  std::vector<std::string> warnings;
  set_warning_sink([&](const std::string& m) { warnings.push_back(m); });
  auto j = base_config();
  j["lora_alpha"] = 16;
  PromptTuningConfig c = PromptTuningConfig::from_json(j, "cfg.json");
  set_warning_sink(nullptr);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("unknown field 'lora_alpha' ignored"), std::string::npos);
  EXPECT_EQ(c.to_json().count("lora_alpha"), 0u);
}

TEST(PeftConfig, FillFromModelAndMismatch) {
  ModelInfo info;
  info.token_dim = 64;
  info.num_layers = 2;
  info.num_heads = 4;
  PromptTuningConfig c = PromptTuningConfig::from_json(base_config(), "cfg.json");
  c.fill_from_model(info);
  EXPECT_EQ(c.token_dim, 64);
  EXPECT_EQ(c.num_transformer_submodules, 1);
  PromptTuningConfig other = PromptTuningConfig::from_json(base_config(), "cfg.json");
  other.token_dim = 768;
  EXPECT_THROW(other.fill_from_model(info), Error);
}

TEST(PeftConfig, AbsurdSizesAreRefusedBeforeAnythingIsAllocated) {
  // Before: sizes near 2^62 overflowed int64 shape products (UBSan) or asked for terabytes.
  auto j = base_config();
  j["num_virtual_tokens"] = int64_t(1) << 62;
  expect_invalid(j, "num_virtual_tokens = 4611686018427387904 is absurdly large");
  j["num_virtual_tokens"] = 18446744073709551615ull;
  expect_invalid(j,
                 "field 'num_virtual_tokens' = 18446744073709551615 does not fit a 64-bit integer");
  j = base_config();
  j["peft_type"] = "MULTITASK_PROMPT_TUNING";
  j["num_tasks"] = int64_t(1) << 40;
  expect_invalid(j, "num_tasks = 1099511627776 is absurdly large");
  j["num_tasks"] = 2;
  j["num_ranks"] = int64_t(1) << 62;
  expect_invalid(j, "num_ranks = 4611686018427387904 is absurdly large");
}

TEST(PeftConfig, FillFromModelRefusesPromptsThatDoNotFitOrAreHuge) {
  ModelInfo info;
  info.token_dim = 64;
  info.num_layers = 2;
  info.num_heads = 4;
  info.max_positions = 128;
  auto j = base_config();
  j["num_virtual_tokens"] = 128;
  PromptTuningConfig c = PromptTuningConfig::from_json(j, "cfg.json");
  try {
    c.fill_from_model(info);
    FAIL() << "a prompt as long as the context must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_virtual_tokens = 128 leaves no room for text in the "
                                         "model's context of 128 positions"),
              std::string::npos)
        << e.what();
  }
  j["num_virtual_tokens"] = 127;
  EXPECT_NO_THROW(PromptTuningConfig::from_json(j, "cfg.json").fill_from_model(info));
  // Each factor within its bound, the product still terabytes: 65536 tasks x 4096 ranks.
  j["peft_type"] = "MULTITASK_PROMPT_TUNING";
  j["num_virtual_tokens"] = 8;
  j["num_tasks"] = kMaxTasks;
  j["num_ranks"] = kMaxRanks;
  PromptTuningConfig mpt = PromptTuningConfig::from_json(j, "cfg.json");
  try {
    mpt.fill_from_model(info);
    FAIL() << "a 19-billion-parameter adapter must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the adapter would have 19327353344 trainable parameters"),
              std::string::npos)
        << e.what();
  }
}

TEST(PeftConfig, NonAsciiInitTextIsEscapedLikePython) {
  PromptTuningConfig c = PromptTuningConfig::from_json(base_config(), "cfg.json");
  c.prompt_tuning_init_text = "caf\xc3\xa9 \xf0\x9f\x98\x80";  // "café 😀"
  std::string text = c.to_adapter_config_text();
  EXPECT_NE(text.find("\"caf\\u00e9 \\ud83d\\ude00\""), std::string::npos) << text;
}

}  // namespace
}  // namespace sp::testing
