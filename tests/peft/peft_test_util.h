// Shared helpers for the PEFT tests: fixture paths, the tiny GPT-2 with its tokenizer, and
// closeness checks with the reported worst element.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "models/gpt2.h"
#include "models/tokenizer.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

namespace sp::testing {

inline const std::string kFixtures = SOFTPROMPT_FIXTURES;
inline const std::string kTinyA = kFixtures + "/gpt2_tiny_a";
inline const std::string kPeftA = kFixtures + "/peft/gpt2_tiny_a";

inline void expect_close(const std::vector<float>& want, const std::vector<float>& got, float atol,
                         const std::string& what) {
  expect_all_close(want, got, atol, what);
}

inline std::unique_ptr<PeftModel> tiny_peft_model() {
  std::shared_ptr<CausalLM> base = Gpt2Model::load(kTinyA);
  std::shared_ptr<const Tokenizer> tokenizer = load_tokenizer(kTinyA);
  return std::make_unique<PeftModel>(base, tokenizer);
}

}  // namespace sp::testing
