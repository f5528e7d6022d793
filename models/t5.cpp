// T5: config parsing, weight loading, the frozen encoder/decoder forwards and the LM head.
#include "models/t5.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/checkpoint.h"
#include "engine/ops/ops.h"
#include "engine/safetensors.h"
#include "models/weight_loader.h"

namespace sp {

namespace {

// Activation names transformers' ACT2FN maps to a function our kernels implement.
constexpr const char* kSupportedActivations = "relu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast";

bool is_supported_activation(const std::string& name) {
  return name == "relu" || name == "gelu" || name == "gelu_new" || name == "gelu_pytorch_tanh" ||
         name == "gelu_fast";
}

}  // namespace

T5Config T5Config::from_hf(const HfConfig& hf) {
  std::string model_type = hf.get_string("model_type", "t5");
  if (model_type != "t5")
    fail(ErrorKind::kUnsupported, hf.source(), ": model_type '", model_type,
         "' is not a T5 model (expected \"t5\")");
  T5Config c;
  // Sizes are required: a checkpoint whose config lacks them is broken, and transformers'
  // defaults (t5-small) would only turn that into confusing shape errors.
  c.d_model = hf.get_positive_int("d_model");
  c.d_kv = hf.get_positive_int("d_kv");
  c.d_ff = hf.get_positive_int("d_ff");
  c.num_heads = hf.get_positive_int("num_heads");
  c.num_layers = hf.get_positive_int("num_layers");
  c.num_decoder_layers = hf.get_positive_int("num_decoder_layers", c.num_layers);
  c.vocab_size = hf.get_positive_int("vocab_size");
  c.relative_attention_num_buckets = hf.get_positive_int("relative_attention_num_buckets", 32);
  c.relative_attention_max_distance = hf.get_positive_int("relative_attention_max_distance", 128);
  if (c.relative_attention_num_buckets < 2)
    fail(ErrorKind::kFormat, hf.source(),
         ": field 'relative_attention_num_buckets' must be at least 2, found ",
         c.relative_attention_num_buckets);
  c.layer_norm_epsilon = hf.get_double("layer_norm_epsilon", 1e-6);
  if (!(c.layer_norm_epsilon >= 0.0))
    fail(ErrorKind::kFormat, hf.source(), ": field 'layer_norm_epsilon' must be >= 0, found ",
         c.layer_norm_epsilon);

  // transformers: feed_forward_proj is "ACT" or "gated-ACT"; "gated-gelu" means gelu_new for
  // backward compatibility. dense_act_fn / is_gated_act, when config.json has them, override
  // what feed_forward_proj implies (they are applied after the derivation).
  c.feed_forward_proj = hf.get_string("feed_forward_proj", "relu");
  const std::string& proj = c.feed_forward_proj;
  const size_t dash = proj.find('-');
  std::string act = proj;
  if (dash != std::string::npos) {
    if (proj.substr(0, dash) != "gated" || proj.find('-', dash + 1) != std::string::npos)
      fail(ErrorKind::kFormat, hf.source(), ": field 'feed_forward_proj' is '", proj,
           "', expected 'ACT' or 'gated-ACT' (e.g. relu, gated-gelu)");
    c.is_gated_act = true;
    act = proj.substr(dash + 1);
  }
  if (proj == "gated-gelu") act = "gelu_new";
  const char* act_field = "feed_forward_proj";
  if (hf.has("dense_act_fn")) {
    act = hf.get_string("dense_act_fn");
    act_field = "dense_act_fn";
  }
  c.is_gated_act = hf.get_bool("is_gated_act", c.is_gated_act);
  if (!is_supported_activation(act)) {
    if (std::string(act_field) == "feed_forward_proj")
      fail(ErrorKind::kUnsupported, hf.source(), ": field 'feed_forward_proj' is '", proj,
           "': activation '", act,
           "' is not supported; supported feed_forward_proj values: ", kSupportedActivations,
           ", each optionally prefixed with 'gated-' (e.g. gated-gelu)");
    fail(ErrorKind::kUnsupported, hf.source(), ": field 'dense_act_fn' is '", act,
         "', which is not supported; supported: ", kSupportedActivations);
  }
  c.dense_activation = parse_activation(act, act_field);

  // transformers 5 forces tie_word_embeddings to true and keeps what the file said as
  // scale_decoder_outputs; files written by it carry scale_decoder_outputs explicitly.
  c.tie_word_embeddings = hf.get_bool("tie_word_embeddings", true);
  c.scale_decoder_outputs = hf.get_bool("scale_decoder_outputs", c.tie_word_embeddings);
  c.dropout_rate = float(hf.get_double("dropout_rate", 0.1));
  if (c.dropout_rate < 0.0f || c.dropout_rate >= 1.0f)
    fail(ErrorKind::kFormat, hf.source(), ": field 'dropout_rate' must be in [0, 1), found ",
         c.dropout_rate);
  c.pad_token_id = hf.get_int("pad_token_id", 0);
  // An explicit null means "no EOS" (transformers keeps None); an absent field means T5's 1.
  c.eos_token_id = hf.json().contains("eos_token_id") ? hf.get_optional_int("eos_token_id")
                                                      : std::optional<int64_t>(1);
  c.decoder_start_token_id = hf.get_int("decoder_start_token_id", 0);
  for (auto [name, id] : {std::pair{"pad_token_id", c.pad_token_id},
                          {"decoder_start_token_id", c.decoder_start_token_id},
                          {"eos_token_id", c.eos_token_id.value_or(0)}})
    if (id < 0 || id >= c.vocab_size)
      fail(ErrorKind::kFormat, hf.source(), ": field '", name, "' is ", id,
           ", outside the vocabulary [0, ", c.vocab_size, ")");
  return c;
}

namespace {

// Byte-identical stored tensors (same dtype and shape): how transformers decides that a
// checkpoint's lm_head.weight is just another copy of the tied embedding.
bool same_stored_tensor(const Checkpoint& checkpoint, const std::string& a, const std::string& b) {
  const SafetensorsEntry& ea = checkpoint.entry(a);
  const SafetensorsEntry& eb = checkpoint.entry(b);
  if (ea.dtype != eb.dtype || ea.shape != eb.shape) return false;
  Tensor ta = checkpoint.get(a).contiguous(), tb = checkpoint.get(b).contiguous();
  return std::memcmp(ta.raw_data(), tb.raw_data(), ta.nbytes()) == 0;
}

}  // namespace

std::unique_ptr<T5Model> T5Model::load(const std::string& model_dir, Device device, DType dtype) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir))
    fail(ErrorKind::kIo, model_dir, ": not a directory (expected a Hugging Face model directory)");
  T5Config config =
      T5Config::from_hf(HfConfig::load((fs::path(model_dir) / "config.json").string()));
  std::unique_ptr<T5Model> model(new T5Model());
  model->config_ = config;
  model->device_ = device;
  WeightLoader w(model_dir, {}, dtype, device);
  const int64_t d = config.d_model, inner = config.inner_dim(), ff = config.d_ff;
  const Shape bias_table_shape{config.relative_attention_num_buckets, config.num_heads};

  // Tied checkpoints store the table once; which name survives depends on how it was saved.
  model->shared_ = w.get_any_matrix(
      {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"},
      {config.vocab_size, d});

  auto load_attention = [&](const std::string& p, bool cross) {
    T5Attention a;
    Tensor q = w.get_matrix(p + "q.weight", {inner, d});
    Tensor k = w.get_matrix(p + "k.weight", {inner, d});
    Tensor v = w.get_matrix(p + "v.weight", {inner, d});
    a.o = w.get_matrix(p + "o.weight", {d, inner});
    if (cross) {
      a.q = q;
      a.packed = concat({k, v}, 0);
    } else {
      a.packed = concat({q, k, v}, 0);
    }
    return a;
  };
  auto load_feed_forward = [&](const std::string& p) {
    T5FeedForward f;
    f.norm = w.get(p + "layer_norm.weight", {d});
    const std::string dense = p + "DenseReluDense.";
    if (config.is_gated_act) {
      f.wi = concat({w.get_matrix(dense + "wi_0.weight", {ff, d}),
                     w.get_matrix(dense + "wi_1.weight", {ff, d})},
                    0);
    } else {
      f.wi = w.get_matrix(dense + "wi.weight", {ff, d});
    }
    f.wo = w.get_matrix(dense + "wo.weight", {d, ff});
    return f;
  };

  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = "encoder.block." + std::to_string(i) + ".";
    T5Block b;
    b.self_attention = load_attention(p + "layer.0.SelfAttention.", false);
    b.self_attention.norm = w.get(p + "layer.0.layer_norm.weight", {d});
    b.feed_forward = load_feed_forward(p + "layer.1.");
    model->encoder_.push_back(std::move(b));
  }
  for (int64_t i = 0; i < config.num_decoder_layers; ++i) {
    const std::string p = "decoder.block." + std::to_string(i) + ".";
    T5Block b;
    b.self_attention = load_attention(p + "layer.0.SelfAttention.", false);
    b.self_attention.norm = w.get(p + "layer.0.layer_norm.weight", {d});
    b.cross_attention = load_attention(p + "layer.1.EncDecAttention.", true);
    b.cross_attention.norm = w.get(p + "layer.1.layer_norm.weight", {d});
    b.feed_forward = load_feed_forward(p + "layer.2.");
    model->decoder_.push_back(std::move(b));
  }
  // Only block 0 of each stack owns a bias table; every later block reuses block 0's bias.
  model->encoder_bias_table_ = w.get(
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", bias_table_shape);
  model->decoder_bias_table_ = w.get(
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", bias_table_shape);
  model->encoder_final_norm_ = w.get("encoder.final_layer_norm.weight", {d});
  model->decoder_final_norm_ = w.get("decoder.final_layer_norm.weight", {d});

  // transformers 5 always declares the head tied; from_pretrained keeps a stored lm_head.weight
  // only when its values differ from the embedding. Without one the head is the embedding.
  if (w.contains("lm_head.weight")) {
    Tensor head = w.get_matrix("lm_head.weight", {config.vocab_size, d});
    if (!same_stored_tensor(Checkpoint::open(model_dir), "lm_head.weight", model->shared_.name()))
      model->lm_head_ = head;
  }
  model->finish_init();
  return model;
}

void T5Model::finish_init() {
  info_.model_type = "t5";
  info_.token_dim = config_.d_model;
  info_.num_layers = config_.num_layers;
  info_.num_heads = config_.num_heads;
  info_.vocab_size = config_.vocab_size;
  info_.max_positions = 0;  // relative positions: no limit
  info_.eos_token_id = config_.eos_token_id;
  info_.pad_token_id = config_.pad_token_id;
  info_.bos_token_id = std::nullopt;
  // PEFT counts model.named_parameters(), where tied tensors appear once.
  // Every weight is frozen from here on, so GEMMs may keep packed forms of them.
  int64_t count = 0;
  auto account = [&](const Tensor& t) {
    count += t.defined() ? t.numel() : 0;
    freeze_storage(t);
  };
  for (const Tensor* t : {&shared_, &encoder_bias_table_, &decoder_bias_table_,
                          &encoder_final_norm_, &decoder_final_norm_, &lm_head_})
    account(*t);
  for (const auto* stack : {&encoder_, &decoder_})
    for (const T5Block& b : *stack)
      for (const Tensor* t : {&b.self_attention.norm, &b.self_attention.q, &b.self_attention.packed,
                              &b.self_attention.o, &b.cross_attention.norm, &b.cross_attention.q,
                              &b.cross_attention.packed, &b.cross_attention.o, &b.feed_forward.norm,
                              &b.feed_forward.wi, &b.feed_forward.wo})
        account(*t);
  info_.parameter_count = count;
}

Seq2SeqCache T5Model::make_cache(int64_t batch, int64_t capacity, int64_t encoder_length) const {
  Seq2SeqCache cache;
  cache.self_attention =
      KvCache::allocate(config_.num_decoder_layers, batch, capacity, config_.num_heads,
                        config_.d_kv, activation_dtype(device_, shared_.dtype()), device_);
  cache.cross_attention =
      KvCache::allocate(config_.num_decoder_layers, batch, encoder_length, config_.num_heads,
                        config_.d_kv, activation_dtype(device_, shared_.dtype()), device_);
  return cache;
}

namespace {

enum Stack : uint64_t { kEncoder = 0, kDecoder = 1 };
enum Site : uint64_t {
  kSelfProbs = 0,
  kSelfResidual = 1,
  kCrossProbs = 2,
  kCrossResidual = 3,
  kFeedForwardInner = 4,
  kFeedForwardResidual = 5,
};

// Dropout sites get disjoint Philox counter ranges: 2^52 per stack, 2^40 per block, 2^36 per
// site. Block -1 holds the embedding dropout and block num_layers the final one.
uint64_t dropout_offset(Stack stack, int64_t layer, uint64_t site) {
  return (uint64_t(stack) << 52) + (uint64_t(layer + 1) << 40) + (site << 36);
}

// F32 contiguous [B, T] mask in the attention kernels' layout (callers may pass I64 masks).
Tensor padding_mask(const Tensor& mask, const Shape& expected, const char* what) {
  SP_CHECK(mask.shape() == expected, "t5: ", what, " must be ", shape_str(expected), ", got ",
           mask.describe());
  return mask.to(DType::F32).contiguous();
}

Tensor f32_bias(Tensor bias) {
  return bias.dtype() == DType::F32 ? bias.contiguous() : bias.to(DType::F32).contiguous();
}

}  // namespace

ResidualAndNorm T5Model::feed_forward(const T5FeedForward& ff, const Tensor& h,
                                      const Tensor& normed, uint64_t dropout_base,
                                      const ForwardOptions& options,
                                      const Tensor& next_norm) const {
  const float p = options.train ? config_.dropout_rate : 0.0f;
  const Tensor x =
      normed.defined() ? normed : rms_norm(h, ff.norm, float(config_.layer_norm_epsilon));
  Tensor out;
  if (!config_.is_gated_act && p == 0.0f) {
    // No dropout between the activation and wo: one op, the activation in the GEMM's epilogue
    // where the backend can (CUDA: cuBLASLt's RELU in inference, its GELU always).
    out = sp::feed_forward(x, ff.wi.transpose(0, 1), Tensor(), config_.dense_activation,
                           ff.wo.transpose(0, 1));
  } else {
    Tensor inner;
    if (config_.is_gated_act) {
      // wi_0 x | wi_1 x from one GEMM; the backward fills one gradient for it.
      inner = gated_activation_packed(linear(x, ff.wi, Tensor(), WeightLayout::kOutIn),
                                      config_.dense_activation);
    } else {
      inner =
          activation(linear(x, ff.wi, Tensor(), WeightLayout::kOutIn), config_.dense_activation);
    }
    inner = dropout(inner, p, options.dropout_seed, dropout_base + (kFeedForwardInner << 36));
    out = linear(inner, ff.wo, Tensor(), WeightLayout::kOutIn);
  }
  const uint64_t offset = dropout_base + (kFeedForwardResidual << 36);
  if (!next_norm.defined())
    return {residual_dropout_add(h, out, Tensor(), p, options.dropout_seed, offset), Tensor()};
  return residual_dropout_add_rms_norm(h, out, Tensor(), p, options.dropout_seed, offset, next_norm,
                                       float(config_.layer_norm_epsilon));
}

ResidualAndNorm T5Model::encoder_block(int64_t layer, const Tensor& h, const Tensor& normed,
                                       const AttentionMask& mask, const ForwardOptions& options,
                                       const Tensor& next_norm) const {
  const T5Block& b = encoder_[size_t(layer)];
  const int64_t B = h.size(0), T = h.size(1), H = config_.num_heads;
  const int64_t inner = config_.inner_dim();
  const float p = options.train ? config_.dropout_rate : 0.0f;
  const uint64_t base = dropout_offset(kEncoder, layer, 0);

  const Tensor x = normed.defined()
                       ? normed
                       : rms_norm(h, b.self_attention.norm, float(config_.layer_norm_epsilon));
  // q|k|v from one GEMM, attended in place; the backward fills one gradient for the GEMM.
  const Tensor qkv = linear(x, b.self_attention.packed, Tensor(), WeightLayout::kOutIn);
  Tensor o = attention_packed(qkv, H, mask, {p, options.dropout_seed, base + (kSelfProbs << 36)});
  o = linear(o.view({B, T, inner}), b.self_attention.o, Tensor(), WeightLayout::kOutIn);
  // The residual add and the feed-forward's RMS norm in one pass.
  auto [h1, x1] = residual_dropout_add_rms_norm(h, o, Tensor(), p, options.dropout_seed,
                                                base + (kSelfResidual << 36), b.feed_forward.norm,
                                                float(config_.layer_norm_epsilon));
  return feed_forward(b.feed_forward, h1, x1, base, options, next_norm);
}

ResidualAndNorm T5Model::decoder_block(int64_t layer, const Tensor& h, const Tensor& normed,
                                       const AttentionMask& self_mask, const Tensor& encoder_hidden,
                                       const AttentionMask& cross_mask, Seq2SeqCache* cache,
                                       const ForwardOptions& options,
                                       const Tensor& next_norm) const {
  const T5Block& b = decoder_[size_t(layer)];
  const int64_t B = h.size(0), T = h.size(1), H = config_.num_heads, D = config_.d_kv;
  const int64_t inner = config_.inner_dim();
  const float p = options.train ? config_.dropout_rate : 0.0f;
  const float eps = float(config_.layer_norm_epsilon);
  const uint64_t base = dropout_offset(kDecoder, layer, 0);

  // Causal self-attention with the decoder's relative bias (keys from the cache when given).
  Tensor x = normed.defined() ? normed : rms_norm(h, b.self_attention.norm, eps);
  const Tensor qkv = linear(x, b.self_attention.packed, Tensor(), WeightLayout::kOutIn);
  const AttentionDropout self_dropout{p, options.dropout_seed, base + (kSelfProbs << 36)};
  Tensor o;
  if (!cache) {
    o = attention_packed(qkv, H, self_mask, self_dropout);
  } else {
    auto [k, v] = cache->self_attention.append(layer, packed_heads(qkv, H, H, D),
                                               packed_heads(qkv, 2 * H, H, D));
    o = attention(packed_heads(qkv, 0, H, D), k, v, self_mask, self_dropout);
  }
  o = linear(o.view({B, T, inner}), b.self_attention.o, Tensor(), WeightLayout::kOutIn);
  // Each residual add runs in one pass with the RMS norm of the sublayer after it.
  const ResidualAndNorm self_end =
      residual_dropout_add_rms_norm(h, o, Tensor(), p, options.dropout_seed,
                                    base + (kSelfResidual << 36), b.cross_attention.norm, eps);
  const Tensor& h1 = self_end.sum;
  x = self_end.normed;

  // Cross-attention over the encoder output: no position bias, encoder padding masked. Its
  // keys/values depend only on the encoder output, so a cache computes them once.
  Tensor cq = linear(x, b.cross_attention.q, Tensor(), WeightLayout::kOutIn).view({B, T, H, D});
  const AttentionDropout cross_dropout{p, options.dropout_seed, base + (kCrossProbs << 36)};
  if (!cache) {
    // k|v from one GEMM, attended in place; the backward fills one gradient for the GEMM.
    o = attention_kv_packed(
        cq, linear(encoder_hidden, b.cross_attention.packed, Tensor(), WeightLayout::kOutIn),
        cross_mask, cross_dropout);
  } else {
    Tensor ck, cv;
    if (cache->cross_filled) {
      const int64_t S = cache->cross_attention.length;
      ck = cache->cross_attention.keys[size_t(layer)].slice(1, 0, S);
      cv = cache->cross_attention.values[size_t(layer)].slice(1, 0, S);
    } else {
      Tensor kv = linear(encoder_hidden, b.cross_attention.packed, Tensor(), WeightLayout::kOutIn);
      std::tie(ck, cv) = cache->cross_attention.append(layer, packed_heads(kv, 0, H, D),
                                                       packed_heads(kv, H, H, D));
    }
    o = attention(cq, ck, cv, cross_mask, cross_dropout);
  }
  o = linear(o.view({B, T, inner}), b.cross_attention.o, Tensor(), WeightLayout::kOutIn);
  auto [h2, x2] =
      residual_dropout_add_rms_norm(h1, o, Tensor(), p, options.dropout_seed,
                                    base + (kCrossResidual << 36), b.feed_forward.norm, eps);
  return feed_forward(b.feed_forward, h2, x2, base, options, next_norm);
}

Tensor T5Model::encode(const Tensor& inputs_embeds, const Tensor& attention_mask,
                       const ForwardOptions& options) {
  SP_CHECK(inputs_embeds.dim() == 3 && inputs_embeds.size(2) == config_.d_model,
           "t5 encode: inputs_embeds must be [B, S, ", config_.d_model, "], got ",
           inputs_embeds.describe());
  const int64_t B = inputs_embeds.size(0), S = inputs_embeds.size(1);
  const float p = options.train ? config_.dropout_rate : 0.0f;
  AttentionMask mask;  // scale 1: T5 does not divide scores by sqrt(d_kv)
  mask.bias = f32_bias(relative_position_bias(encoder_bias_table_, S, S, 0, /*bidirectional=*/true,
                                              config_.relative_attention_max_distance));
  if (attention_mask.defined())
    mask.key_padding = padding_mask(attention_mask, {B, S}, "encoder attention_mask");

  // Each block ends with the RMS norm that reads its output (the next block's first norm, or the
  // final norm) in the pass of its last residual add; a checkpointed block returns the stream.
  ResidualAndNorm stream{
      dropout(inputs_embeds, p, options.dropout_seed, dropout_offset(kEncoder, -1, 0)), Tensor()};
  for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
    const Tensor& next_norm = layer + 1 < config_.num_layers
                                  ? encoder_[size_t(layer + 1)].self_attention.norm
                                  : encoder_final_norm_;
    if (options.checkpoint_activations && grad_mode_enabled() && stream.sum.requires_grad()) {
      stream.sum = checkpoint(
          [this, layer, mask, options](const std::vector<Tensor>& in) {
            return encoder_block(layer, in[0], Tensor(), mask, options, Tensor()).sum;
          },
          {stream.sum});
      stream.normed = Tensor();
    } else {
      stream = encoder_block(layer, stream.sum, stream.normed, mask, options, next_norm);
    }
  }
  Tensor h = stream.normed.defined()
                 ? stream.normed
                 : rms_norm(stream.sum, encoder_final_norm_, float(config_.layer_norm_epsilon));
  return dropout(h, p, options.dropout_seed, dropout_offset(kEncoder, config_.num_layers, 0));
}

Tensor T5Model::decode(const Tensor& decoder_inputs_embeds, const Tensor& encoder_hidden,
                       const Tensor& encoder_mask, const Tensor& decoder_attention_mask,
                       Seq2SeqCache* cache, const ForwardOptions& options) {
  SP_CHECK(decoder_inputs_embeds.dim() == 3 && decoder_inputs_embeds.size(2) == config_.d_model,
           "t5 decode: decoder_inputs_embeds must be [B, T, ", config_.d_model, "], got ",
           decoder_inputs_embeds.describe());
  const int64_t B = decoder_inputs_embeds.size(0), T = decoder_inputs_embeds.size(1);
  const bool cross_cached = cache && cache->cross_filled;
  int64_t S = 0;
  if (cross_cached) {
    S = cache->cross_attention.length;
  } else {
    SP_CHECK(encoder_hidden.defined() && encoder_hidden.dim() == 3 && encoder_hidden.size(0) == B &&
                 encoder_hidden.size(2) == config_.d_model,
             "t5 decode: encoder_hidden must be [", B, ", S, ", config_.d_model, "], got ",
             encoder_hidden.defined() ? encoder_hidden.describe() : std::string("nothing"));
    S = encoder_hidden.size(1);
  }
  if (cache) {
    SP_CHECK(cache->self_attention.keys.size() == decoder_.size() &&
                 cache->self_attention.keys[0].size(0) == B,
             "t5 decode: the cache was made for another model or batch size");
    SP_CHECK(cross_cached || cache->cross_attention.capacity == S,
             "t5 decode: the cache holds cross-attention for ", cache->cross_attention.capacity,
             " encoder positions but the encoder output has ", S);
    // The cache is written in place, outside autograd: it serves inference only.
    SP_CHECK(
        !grad_mode_enabled() || !(decoder_inputs_embeds.requires_grad() ||
                                  (encoder_hidden.defined() && encoder_hidden.requires_grad())),
        "t5 decode: a KV cache cannot be used while gradients are recorded");
  }
  const int64_t past = cache ? cache->length() : 0;
  const float p = options.train ? config_.dropout_rate : 0.0f;

  AttentionMask self_mask;  // scale 1, causal over absolute positions [0, past + T)
  self_mask.causal = true;
  self_mask.query_offset = past;
  self_mask.bias = f32_bias(relative_position_bias(decoder_bias_table_, T, past + T, past,
                                                   /*bidirectional=*/false,
                                                   config_.relative_attention_max_distance));
  if (decoder_attention_mask.defined())
    self_mask.key_padding =
        padding_mask(decoder_attention_mask, {B, past + T}, "decoder_attention_mask");
  AttentionMask cross_mask;  // no position bias in cross-attention
  if (encoder_mask.defined())
    cross_mask.key_padding = padding_mask(encoder_mask, {B, S}, "encoder_mask");

  ResidualAndNorm stream{
      dropout(decoder_inputs_embeds, p, options.dropout_seed, dropout_offset(kDecoder, -1, 0)),
      Tensor()};
  for (int64_t layer = 0; layer < config_.num_decoder_layers; ++layer) {
    const Tensor& next_norm = layer + 1 < config_.num_decoder_layers
                                  ? decoder_[size_t(layer + 1)].self_attention.norm
                                  : decoder_final_norm_;
    const bool needs_grad =
        stream.sum.requires_grad() || (encoder_hidden.defined() && encoder_hidden.requires_grad());
    if (options.checkpoint_activations && !cache && grad_mode_enabled() && needs_grad) {
      stream.sum = checkpoint(
          [this, layer, self_mask, cross_mask, options](const std::vector<Tensor>& in) {
            return decoder_block(layer, in[0], Tensor(), self_mask, in[1], cross_mask, nullptr,
                                 options, Tensor())
                .sum;
          },
          {stream.sum, encoder_hidden});
      stream.normed = Tensor();
    } else {
      stream = decoder_block(layer, stream.sum, stream.normed, self_mask, encoder_hidden,
                             cross_mask, cache, options, next_norm);
    }
  }
  if (cache) {
    cache->self_attention.length += T;
    if (!cross_cached) {
      cache->cross_attention.length = S;
      cache->cross_filled = true;
    }
  }
  const Tensor h = stream.normed.defined() ? stream.normed
                                           : rms_norm(stream.sum, decoder_final_norm_,
                                                      float(config_.layer_norm_epsilon));
  return dropout(h, p, options.dropout_seed,
                 dropout_offset(kDecoder, config_.num_decoder_layers, 0));
}

float T5Model::output_scale() const {
  // transformers multiplies by model_dim ** -0.5: a Python double applied to an fp32 tensor.
  return config_.scale_decoder_outputs ? float(std::pow(double(config_.d_model), -0.5)) : 1.0f;
}

Tensor T5Model::logits(const Tensor& decoder_hidden) const {
  SP_CHECK(decoder_hidden.defined() && decoder_hidden.dim() >= 1 &&
               decoder_hidden.size(-1) == config_.d_model,
           "t5 logits: decoder states must be [..., ", config_.d_model, "], got ",
           decoder_hidden.defined() ? decoder_hidden.describe() : std::string("nothing"));
  Tensor x = config_.scale_decoder_outputs ? scale(decoder_hidden, output_scale()) : decoder_hidden;
  return matmul(x, output_embeddings().transpose(0, 1));
}

}  // namespace sp
