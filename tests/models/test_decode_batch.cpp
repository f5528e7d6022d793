// DecodeBatch (continuous batching) against the cache-free forward: rows that join at different
// steps, after a cached soft prompt or not, leave at different times and get shifted inside the
// shared cache must see exactly the hidden states of their own sequence run alone.
#include <gtest/gtest.h>

#include <algorithm>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "engine/ops/random.h"
#include "models/decode_batch.h"
#include "models/generate.h"
#include "models/model_loader.h"
#include "tests/test_util.h"

namespace sp {
namespace {

const std::string kFixtures = SOFTPROMPT_FIXTURES;

// fp32 throughout; the batched step and the reference run the same math with GEMMs of other
// shapes (1 row vs T rows) and attention over masked padding, so sums differ in order only:
// ~1e-6 on hidden states of magnitude ~1-5. 1e-4 leaves margin; a wrong position, mask or a
// row whose keys were moved to the wrong place changes them by 1e-2 or more.
constexpr float kTol = 1e-4f;

struct RowPlan {
  int64_t join_step;   // the batch step before which the row joins
  int64_t prefix;      // soft-prompt rows (0: none)
  bool cached_prefix;  // the prefix's RowKv is computed first and then extended
  std::vector<int64_t> prompt;
  int64_t new_tokens;
};

class DecodeBatchTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeBatchTest, StaggeredRowsMatchTheirSequenceRunAlone) {
  NoGradGuard no_grad;
  std::shared_ptr<CausalLM> model = load_causal_lm(kFixtures + "/" + GetParam());
  const int64_t d = model->info().token_dim;
  // The row joining at step 3 is longer than the shared length and shifts the others right; when
  // it leaves, the gap it leaves is small, so the rows move left only once the shared length
  // reaches the capacity of 24; later departures leave large gaps and move them at once.
  const int64_t capacity = 24;
  const std::vector<RowPlan> plans = {
      {0, 4, true, {5, 9, 13}, 16}, {0, 0, false, {7, 3, 11, 2, 6}, 6},
      {2, 6, false, {1, 2}, 8},     {3, 5, true, {8, 8, 4, 9, 10, 12, 3, 5}, 4},
      {5, 3, true, {}, 7},          {9, 0, false, {14}, 12},
  };
  std::vector<Tensor> prefixes;
  for (size_t i = 0; i < plans.size(); ++i)
    prefixes.push_back(plans[i].prefix > 0 ? randn({plans[i].prefix, d}, 100 + i, 0, 0.0f, 0.5f)
                                           : Tensor());

  // The whole input of row i: prefix embeddings, prompt embeddings, then its generated tokens.
  auto embeds_of = [&](size_t i, const std::vector<int64_t>& tokens) {
    std::vector<Tensor> parts;
    if (prefixes[i].defined()) parts.push_back(prefixes[i]);
    if (!tokens.empty())
      parts.push_back(model->embed(Tensor::from_ints(tokens, {int64_t(tokens.size())})));
    return concat(parts, 0);
  };

  DecodeBatch batch(*model, 4, capacity);
  std::vector<int64_t> row_ids(plans.size(), -1);
  std::vector<std::vector<int64_t>> generated(plans.size());
  std::vector<std::vector<std::vector<float>>> hiddens(plans.size());
  std::vector<bool> done(plans.size(), false);
  auto greedy = [&](const Tensor& hidden) {
    std::vector<float> logits = model->logits(hidden.unsqueeze(0)).to_floats();
    return int64_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  };
  bool shifted_left_in_step = false, shifted_left_on_remove = false, shifted_right = false;
  for (int64_t step = 0; step < 40; ++step) {
    for (size_t i = 0; i < plans.size(); ++i) {
      if (plans[i].join_step != step || batch.full()) continue;
      RowKv row;
      if (plans[i].cached_prefix) {
        RowKv prefix = extend_row(*model, nullptr, prefixes[i]);
        const std::vector<int64_t>& ids = plans[i].prompt;
        row = ids.empty() ? prefix
                          : extend_row(*model, &prefix,
                                       model->embed(Tensor::from_ints(ids, {int64_t(ids.size())})));
      } else {
        row = extend_row(*model, nullptr, embeds_of(i, plans[i].prompt));
      }
      const int64_t before = batch.shared_length();
      hiddens[i].push_back(row.last_hidden.to_floats());
      generated[i].push_back(greedy(row.last_hidden));
      row_ids[i] = batch.add(row);
      if (batch.rows() > 1 && batch.shared_length() > before) shifted_right = true;
    }
    if (batch.rows() == 0) {
      if (std::all_of(plans.begin(), plans.end(),
                      [&](const RowPlan& p) { return p.join_step < step; }))
        break;
      continue;
    }
    std::vector<int64_t> tokens;
    std::vector<size_t> order;
    for (int64_t id : batch.ids()) {
      const size_t i = size_t(std::find(row_ids.begin(), row_ids.end(), id) - row_ids.begin());
      order.push_back(i);
      tokens.push_back(generated[i].back());
    }
    const int64_t before = batch.shared_length();
    Tensor hidden = batch.step(tokens);
    if (batch.shared_length() < before + 1) shifted_left_in_step = true;
    for (size_t k = 0; k < order.size(); ++k) {
      const size_t i = order[k];
      hiddens[i].push_back(hidden.select(0, int64_t(k)).to_floats());
      generated[i].push_back(greedy(hidden.select(0, int64_t(k))));
      if (int64_t(generated[i].size()) == plans[i].new_tokens) {
        const int64_t length_before = batch.shared_length();
        batch.remove(row_ids[i]);
        if (batch.rows() > 0 && batch.shared_length() < length_before)
          shifted_left_on_remove = true;
        done[i] = true;
      }
    }
  }
  EXPECT_TRUE(shifted_left_in_step) << "the test should fill the capacity";
  EXPECT_TRUE(shifted_left_on_remove) << "the test should leave a large gap";
  EXPECT_TRUE(shifted_right) << "the test should make rows move right";
  for (size_t i = 0; i < plans.size(); ++i) {
    ASSERT_TRUE(done[i]) << "row " << i << " never finished";
    // The reference: one cache-free forward over the row's whole sequence.
    std::vector<int64_t> tokens = plans[i].prompt;
    tokens.insert(tokens.end(), generated[i].begin(), generated[i].end() - 1);
    Tensor all = embeds_of(i, tokens);
    Tensor hidden = model->hidden_states(all.unsqueeze(0), Tensor(), Tensor(), nullptr, {});
    const int64_t first = plans[i].prefix + int64_t(plans[i].prompt.size()) - 1;
    for (size_t k = 0; k < hiddens[i].size(); ++k)
      testing::expect_all_close(hidden.select(0, 0).select(0, first + int64_t(k)).to_floats(),
                                hiddens[i][k], kTol,
                                "row " + std::to_string(i) + " token " + std::to_string(k));
    // And the plain generator agrees on the tokens.
    GenerationRequest request;
    request.prompt_ids = plans[i].prompt;
    request.prefix_embeds = prefixes[i];
    GenerationConfig config;
    config.max_new_tokens = plans[i].new_tokens;
    EXPECT_EQ(generate(*model, {request}, config)[0], generated[i]) << "row " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeBatchTest,
                         ::testing::Values("gpt2_tiny_a", "llama_tiny_gqa", "mistral_tiny"));

TEST_P(DecodeBatchTest, RowsPrefilledTogetherEqualEachRowPrefilledAlone) {
  NoGradGuard no_grad;
  std::shared_ptr<CausalLM> model = load_causal_lm(kFixtures + "/" + GetParam());
  const int64_t d = model->info().token_dim;
  RowKv short_past = extend_row(*model, nullptr, randn({2, d}, 7, 0, 0.0f, 0.5f));
  RowKv long_past = extend_row(*model, nullptr, randn({6, d}, 8, 0, 0.0f, 0.5f));
  const std::vector<const RowKv*> pasts = {&long_past, nullptr, &short_past, &long_past};
  std::vector<Tensor> embeds;
  for (int64_t length : {3, 9, 1, 5}) embeds.push_back(randn({length, d}, 20 + uint64_t(length)));
  std::vector<RowKv> together = extend_rows(*model, pasts, embeds);
  ASSERT_EQ(together.size(), 4u);
  for (size_t r = 0; r < 4; ++r) {
    RowKv alone = extend_row(*model, pasts[r], embeds[r]);
    ASSERT_EQ(together[r].length(), alone.length()) << "row " << r;
    testing::expect_all_close(alone.last_hidden.to_floats(), together[r].last_hidden.to_floats(),
                              kTol, "last hidden of row " + std::to_string(r));
    for (size_t layer = 0; layer < alone.cache.keys.size(); ++layer) {
      testing::expect_all_close(alone.cache.keys[layer].to_floats(),
                                together[r].cache.keys[layer].to_floats(), kTol,
                                "keys of row " + std::to_string(r));
      testing::expect_all_close(alone.cache.values[layer].to_floats(),
                                together[r].cache.values[layer].to_floats(), kTol,
                                "values of row " + std::to_string(r));
    }
  }
}

TEST(DecodeBatch, BuffersGrowOnlyInTheDimensionThatRanOut) {
  std::shared_ptr<CausalLM> model = load_causal_lm(kFixtures + "/gpt2_tiny_a");
  DecodeBatch batch(*model, 16, 128);
  RowKv row = extend_row(*model, nullptr, randn({5, model->info().token_dim}, 3));
  for (int i = 0; i < 16; ++i) batch.add(row);
  EXPECT_EQ(batch.allocated_rows(), 16);
  EXPECT_EQ(batch.allocated_positions(), 64);  // short rows: the first allocation suffices
  for (int step = 0; step < 60; ++step) batch.step(std::vector<int64_t>(16, 7));
  EXPECT_EQ(batch.allocated_positions(), 128);  // 65 positions: doubled, up to the capacity
  EXPECT_EQ(batch.allocated_rows(), 16);
}

TEST(DecodeBatch, RefusesRowsThatCannotGrowAndUnknownIds) {
  std::shared_ptr<CausalLM> model = load_causal_lm(kFixtures + "/gpt2_tiny_a");
  DecodeBatch batch(*model, 1, 8);
  RowKv long_row = extend_row(*model, nullptr, randn({8, model->info().token_dim}, 1));
  EXPECT_THROW(batch.add(long_row), Error);
  RowKv row = extend_row(*model, nullptr, randn({3, model->info().token_dim}, 2));
  batch.add(row);
  EXPECT_THROW(batch.add(row), Error);  // full
  EXPECT_THROW(batch.remove(12345), Error);
  EXPECT_THROW(DecodeBatch(*model, 1, 1000), Error);  // beyond n_positions = 128
}

}  // namespace
}  // namespace sp
