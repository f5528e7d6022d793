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

namespace sp::testing {

inline const std::string kFixtures = SOFTPROMPT_FIXTURES;
inline const std::string kTinyA = kFixtures + "/gpt2_tiny_a";
inline const std::string kPeftA = kFixtures + "/peft/gpt2_tiny_a";

inline std::unique_ptr<PeftModel> tiny_peft_model() {
  std::shared_ptr<CausalLM> base = Gpt2Model::load(kTinyA);
  std::shared_ptr<const Tokenizer> tokenizer = load_tokenizer(kTinyA);
  return std::make_unique<PeftModel>(base, tokenizer);
}

inline void expect_close(const std::vector<float>& want, const std::vector<float>& got,
                         float atol, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  float worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (std::abs(want[i] - got[i]) > worst) worst = std::abs(want[i] - got[i]), at = i;
  EXPECT_LE(worst, atol) << what << ": worst |diff| at " << at << ": want " << want[at] << " got "
                         << got[at];
}

}  // namespace sp::testing
