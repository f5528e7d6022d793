// Batched encoder-decoder generation: one encoder pass, a decoder prefill over the (optional)
// decoder prefixes and the start token, then one position per step from the cache.
#include "models/generate_seq2seq.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"

namespace sp {

namespace {

int64_t prefix_rows(const Tensor& prefix, int64_t d, const char* what) {
  if (!prefix.defined()) return 0;
  SP_CHECK(prefix.dim() == 2 && prefix.size(1) == d, "generate_seq2seq: ", what, " must be [N, ", d,
           "], got ", prefix.describe());
  return prefix.size(0);
}

}  // namespace

std::vector<std::vector<int64_t>> generate_seq2seq(
    Seq2SeqLM& model, const std::vector<Seq2SeqGenerationRequest>& requests,
    const GenerationConfig& config) {
  NoGradGuard no_grad;
  SP_CHECK(!requests.empty(), "generate_seq2seq: no inputs given");
  SP_CHECK(config.max_new_tokens >= 0, "generate_seq2seq: max_new_tokens must be >= 0");
  const ModelInfo& info = model.info();
  const int64_t B = int64_t(requests.size()), d = info.token_dim, V = info.vocab_size;
  const Device device = model.device();
  const DType dtype = activation_dtype(device, model.word_embeddings().dtype());
  std::vector<std::vector<int64_t>> outputs(static_cast<size_t>(B));
  if (config.max_new_tokens == 0) return outputs;

  std::vector<int64_t> encoder_lengths, decoder_prefixes;
  for (const Seq2SeqGenerationRequest& r : requests) {
    for (int64_t id : r.input_ids)
      SP_CHECK(id >= 0 && id < V, "generate_seq2seq: token id ", id,
               " is outside the vocabulary [0, ", V, ")");
    encoder_lengths.push_back(prefix_rows(r.encoder_prefix_embeds, d, "encoder prefix") +
                              int64_t(r.input_ids.size()));
    SP_CHECK(encoder_lengths.back() > 0,
             "generate_seq2seq: a row has neither input ids nor an encoder prefix");
    decoder_prefixes.push_back(prefix_rows(r.decoder_prefix_embeds, d, "decoder prefix"));
  }

  // Encoder: [prefix][tokens][pads] per row, pads masked (transformers' right padding).
  const int64_t S = *std::max_element(encoder_lengths.begin(), encoder_lengths.end());
  std::vector<Tensor> encoder_rows;
  std::vector<float> encoder_mask(size_t(B * S), 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const Seq2SeqGenerationRequest& r = requests[size_t(b)];
    std::vector<Tensor> parts;
    if (r.encoder_prefix_embeds.defined())
      parts.push_back(r.encoder_prefix_embeds.to(device).to(dtype));
    if (!r.input_ids.empty())
      parts.push_back(model.embed(
          Tensor::from_ints(r.input_ids, {int64_t(r.input_ids.size())}, DType::I64, device)));
    const int64_t pad = S - encoder_lengths[size_t(b)];
    if (pad > 0) parts.push_back(Tensor::zeros({pad, d}, dtype, device));
    encoder_rows.push_back(concat(parts, 0).unsqueeze(0));
    std::fill_n(encoder_mask.begin() + b * S, encoder_lengths[size_t(b)], 1.0f);
  }
  ForwardOptions eval;
  Tensor encoder_mask_tensor = Tensor::from_floats(encoder_mask, {B, S}, device);
  Tensor encoder_hidden = model.encode(concat(encoder_rows, 0), encoder_mask_tensor, eval);

  // Decoder prefill: [pads][decoder prefix][start token] per row. Left padding keeps every row's
  // last position aligned; masked pads change nothing since T5 only uses relative positions.
  const int64_t M = *std::max_element(decoder_prefixes.begin(), decoder_prefixes.end());
  const int64_t P = M + 1;
  const int64_t capacity = P + config.max_new_tokens;
  Tensor start_embed =
      model.embed(Tensor::from_ints({model.decoder_start_token_id()}, {1}, DType::I64, device));
  std::vector<Tensor> decoder_rows;
  std::vector<float> decoder_mask(size_t(B * capacity), 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const Seq2SeqGenerationRequest& r = requests[size_t(b)];
    const int64_t pad = M - decoder_prefixes[size_t(b)];
    std::vector<Tensor> parts;
    if (pad > 0) parts.push_back(Tensor::zeros({pad, d}, dtype, device));
    if (r.decoder_prefix_embeds.defined())
      parts.push_back(r.decoder_prefix_embeds.to(device).to(dtype));
    parts.push_back(start_embed);
    decoder_rows.push_back(concat(parts, 0).unsqueeze(0));
    std::fill_n(decoder_mask.begin() + b * capacity + pad, P - pad, 1.0f);
  }
  // Without padding the mask is all ones and can be left out (the kernels skip it).
  const bool decoder_padded = M > 0 && std::any_of(decoder_prefixes.begin(), decoder_prefixes.end(),
                                                   [M](int64_t m) { return m != M; });
  auto decoder_mask_prefix = [&](int64_t length) {
    if (!decoder_padded) return Tensor();
    std::vector<float> prefix(static_cast<size_t>(B * length));
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(decoder_mask.begin() + b * capacity, length, prefix.begin() + b * length);
    return Tensor::from_floats(prefix, {B, length}, device);
  };

  Seq2SeqCache cache = model.make_cache(B, capacity, S);
  Tensor hidden = model.decode(concat(decoder_rows, 0), encoder_hidden, encoder_mask_tensor,
                               decoder_mask_prefix(P), &cache, eval);
  Tensor last = hidden.select(1, P - 1);

  Generator rng(config.seed);
  std::vector<bool> finished(size_t(B), false);
  const int64_t pad_id = info.pad_token_id.value_or(0);
  for (int64_t step = 0; step < config.max_new_tokens; ++step) {
    std::vector<float> logits = model.logits(last).to(DType::F32).to_floats();
    std::vector<int64_t> next(static_cast<size_t>(B), pad_id);
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      // Finished rows are fed the pad token, as transformers does; their output is complete.
      if (finished[size_t(b)]) continue;
      const int64_t token = choose_next_token(logits.data() + b * V, V, config, rng);
      outputs[size_t(b)].push_back(token);
      next[size_t(b)] = token;
      if (config.eos_token_id && token == *config.eos_token_id) finished[size_t(b)] = true;
      all_done = all_done && finished[size_t(b)];
    }
    if (all_done || step + 1 == config.max_new_tokens) break;
    const int64_t length = P + step + 1;
    for (int64_t b = 0; b < B; ++b) decoder_mask[size_t(b * capacity + length - 1)] = 1.0f;
    Tensor step_embeds = model.embed(Tensor::from_ints(next, {B, 1}, DType::I64, device));
    last = model
               .decode(step_embeds, Tensor(), encoder_mask_tensor, decoder_mask_prefix(length),
                       &cache, eval)
               .select(1, 0);
  }
  return outputs;
}

}  // namespace sp
