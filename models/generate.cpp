// Batched generation: one prefill over left-padded rows, then one position per step from the
// KV cache.
#include "models/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"

namespace sp {

int64_t choose_next_token(const float* logits, int64_t vocab, const GenerationConfig& config,
                          Generator& rng) {
  if (!config.do_sample) return int64_t(std::max_element(logits, logits + vocab) - logits);
  SP_CHECK(config.temperature > 0.0f, "generation: temperature must be > 0 when sampling, got ",
           config.temperature);
  // Candidates sorted by logit, then truncated by top-k and top-p (transformers' order).
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  size_t keep = order.size();
  if (config.top_k > 0) keep = std::min<size_t>(keep, size_t(config.top_k));
  const float max_logit = logits[order[0]] / config.temperature;
  std::vector<double> probs(keep);
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    probs[i] = std::exp(double(logits[order[i]] / config.temperature - max_logit));
    total += probs[i];
  }
  if (config.top_p < 1.0f) {
    double cumulative = 0.0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= config.top_p) {
        cut = i + 1;  // keep the token that crosses top_p, and always at least one
        break;
      }
    }
    keep = cut;
    total = std::accumulate(probs.begin(), probs.begin() + long(keep), 0.0);
  }
  double target = double(rng.uniform()) * total;
  for (size_t i = 0; i < keep; ++i) {
    target -= probs[i];
    if (target < 0.0) return order[i];
  }
  return order[keep - 1];
}

std::vector<std::vector<int64_t>> generate(CausalLM& model,
                                           const std::vector<GenerationRequest>& requests,
                                           const GenerationConfig& config) {
  NoGradGuard no_grad;
  SP_CHECK(!requests.empty(), "generate: no prompts given");
  SP_CHECK(config.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0");
  const ModelInfo& info = model.info();
  const int64_t B = int64_t(requests.size()), d = info.token_dim;
  const Device device = model.device();
  std::vector<int64_t> lengths;
  for (const GenerationRequest& r : requests) {
    int64_t prefix = 0;
    if (r.prefix_embeds.defined()) {
      SP_CHECK(r.prefix_embeds.dim() == 2 && r.prefix_embeds.size(1) == d,
               "generate: prefix embeddings must be [N, ", d, "], got ",
               r.prefix_embeds.describe());
      prefix = r.prefix_embeds.size(0);
    }
    for (int64_t id : r.prompt_ids)
      SP_CHECK(id >= 0 && id < info.vocab_size, "generate: token id ", id,
               " is outside the vocabulary [0, ", info.vocab_size, ")");
    lengths.push_back(prefix + int64_t(r.prompt_ids.size()));
    SP_CHECK(lengths.back() > 0, "generate: a row has neither prompt ids nor a prefix");
  }
  const int64_t T0 = *std::max_element(lengths.begin(), lengths.end());
  const int64_t capacity = T0 + config.max_new_tokens;
  SP_CHECK(info.max_positions == 0 || capacity <= info.max_positions, "generate: ", T0,
           " prompt positions + ", config.max_new_tokens, " new tokens exceed the model's ",
           info.max_positions, " positions");

  // Left-padded prefill inputs: [pads][prefix][prompt tokens] per row, in the activation dtype.
  const DType dtype = activation_dtype(device, model.word_embeddings().dtype());
  std::vector<Tensor> rows;
  std::vector<float> mask(size_t(B * capacity), 0.0f);
  std::vector<int64_t> positions(size_t(B * T0), 0);
  for (int64_t b = 0; b < B; ++b) {
    const GenerationRequest& r = requests[size_t(b)];
    const int64_t pad = T0 - lengths[size_t(b)];
    std::vector<Tensor> parts;
    if (pad > 0) parts.push_back(Tensor::zeros({pad, d}, dtype, device));
    if (r.prefix_embeds.defined()) parts.push_back(r.prefix_embeds.to(device).to(dtype));
    if (!r.prompt_ids.empty())
      parts.push_back(model.embed(
          Tensor::from_ints(r.prompt_ids, {int64_t(r.prompt_ids.size())}, DType::I64, device)));
    rows.push_back(concat(parts, 0).unsqueeze(0));
    for (int64_t t = pad; t < T0; ++t) {
      mask[size_t(b * capacity + t)] = 1.0f;
      positions[size_t(b * T0 + t)] = t - pad;
    }
  }
  Tensor embeds = concat(rows, 0);
  KvCache cache = model.make_cache(B, capacity);
  Generator rng(config.seed);
  std::vector<std::vector<int64_t>> outputs(static_cast<size_t>(B));
  std::vector<bool> finished(size_t(B), false);
  ForwardOptions eval;

  auto mask_prefix = [&](int64_t length) {
    std::vector<float> prefix(static_cast<size_t>(B * length));
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(mask.begin() + b * capacity, length, prefix.begin() + b * length);
    return Tensor::from_floats(prefix, {B, length}, device);
  };

  Tensor hidden =
      model.hidden_states(embeds, mask_prefix(T0),
                          Tensor::from_ints(positions, {B, T0}, DType::I64, device), &cache, eval);
  Tensor last = hidden.select(1, T0 - 1);
  std::vector<int64_t> next_positions(lengths.begin(), lengths.end());
  for (int64_t step = 0; step < config.max_new_tokens; ++step) {
    std::vector<float> logits = model.logits(last).to_floats();
    std::vector<int64_t> next(static_cast<size_t>(B));
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      int64_t token =
          choose_next_token(logits.data() + b * info.vocab_size, info.vocab_size, config, rng);
      if (finished[size_t(b)]) {
        // Keep feeding something valid; the row's output is already complete.
        token = outputs[size_t(b)].empty() ? 0 : outputs[size_t(b)].back();
      } else {
        outputs[size_t(b)].push_back(token);
        if (config.eos_token_id && token == *config.eos_token_id) finished[size_t(b)] = true;
      }
      all_done = all_done && finished[size_t(b)];
      next[size_t(b)] = token;
    }
    if (all_done || step + 1 == config.max_new_tokens) break;
    const int64_t length = T0 + step + 1;
    for (int64_t b = 0; b < B; ++b) mask[size_t(b * capacity + length - 1)] = 1.0f;
    Tensor step_embeds = model.embed(Tensor::from_ints(next, {B, 1}, DType::I64, device));
    Tensor step_positions = Tensor::from_ints(next_positions, {B, 1}, DType::I64, device);
    for (int64_t& p : next_positions) ++p;
    last = model.hidden_states(step_embeds, mask_prefix(length), step_positions, &cache, eval)
               .select(1, 0);
  }
  return outputs;
}

}  // namespace sp
