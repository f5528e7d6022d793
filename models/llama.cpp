// Llama-family decoders: config parsing (transformers 4 and 5 layouts), weight loading, RoPE
// tables, the frozen forward and the LM head.
#include "models/llama.h"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/ops/checkpoint.h"
#include "engine/ops/ops.h"
#include "models/weight_loader.h"

namespace sp {

namespace {

using json = nlohmann::json;

// A token id field that Llama 3 configs may give as a list ("eos_token_id": [128001, 128009]):
// the first id is the one a single-id consumer (padding, the PEFT layer) uses.
std::optional<int64_t> first_token_id(const HfConfig& hf, const char* key) {
  const json& j = hf.json();
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (it->is_array()) {
    if (it->empty()) return std::nullopt;
    if (!(*it)[0].is_number_integer())
      fail(ErrorKind::kFormat, hf.source(), ": field '", key, "' must hold integer ids, found ",
           (*it)[0].type_name());
    return (*it)[0].get<int64_t>();
  }
  return hf.get_optional_int(key);
}

double rope_number(const json& rope, const HfConfig& hf, const char* key, double fallback) {
  auto it = rope.find(key);
  if (it == rope.end() || it->is_null()) return fallback;
  if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() <= 0)
    fail(ErrorKind::kFormat, hf.source(), ": rope field '", key,
         "' must be a positive number, found ", it->dump());
  return it->get<double>();
}

}  // namespace

LlamaConfig LlamaConfig::from_hf(const HfConfig& hf) {
  LlamaConfig c;
  c.model_type = hf.get_string("model_type", "llama");
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
    fail(ErrorKind::kUnsupported, hf.source(), ": model_type '", c.model_type,
         "' is not a Llama-family model (expected llama, mistral or qwen2)");
  c.hidden_size = hf.get_positive_int("hidden_size");
  c.intermediate_size = hf.get_positive_int("intermediate_size");
  c.num_layers = hf.get_positive_int("num_hidden_layers");
  c.num_heads = hf.get_positive_int("num_attention_heads");
  c.num_kv_heads = hf.get_positive_int("num_key_value_heads", c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    fail(ErrorKind::kFormat, hf.source(), ": num_attention_heads ", c.num_heads,
         " is not a multiple of num_key_value_heads ", c.num_kv_heads);
  if (!hf.has("head_dim") && c.hidden_size % c.num_heads != 0)
    fail(ErrorKind::kFormat, hf.source(), ": hidden_size ", c.hidden_size,
         " is not divisible by num_attention_heads ", c.num_heads, " and no head_dim is given");
  c.head_dim = hf.get_positive_int("head_dim", c.hidden_size / c.num_heads);
  if (c.head_dim % 2 != 0)
    fail(ErrorKind::kFormat, hf.source(), ": head_dim ", c.head_dim,
         " must be even (RoPE rotates pairs)");
  c.vocab_size = hf.get_positive_int("vocab_size");
  c.max_positions = hf.get_positive_int("max_position_embeddings", 2048);
  c.rms_norm_eps = hf.get_double("rms_norm_eps", 1e-6);
  const std::string act = hf.get_string("hidden_act", "silu");
  if (act != "silu" && act != "swish")
    fail(ErrorKind::kUnsupported, hf.source(), ": hidden_act '", act, "' is not supported for ",
         c.model_type, " (expected silu)");
  c.hidden_act = Activation::kSilu;
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2Attention: q/k/v projections with bias, o_proj without
  } else {
    c.qkv_bias = c.o_bias = hf.get_bool("attention_bias", false);
  }
  c.mlp_bias = hf.get_bool("mlp_bias", false);
  c.tie_word_embeddings = hf.get_bool("tie_word_embeddings", c.model_type == "qwen2");
  c.attention_dropout = float(hf.get_double("attention_dropout", 0.0));
  if (c.attention_dropout < 0.0f || c.attention_dropout >= 1.0f)
    fail(ErrorKind::kFormat, hf.source(), ": attention_dropout must be in [0, 1), found ",
         c.attention_dropout);
  if (hf.get_int("pretraining_tp", 1) != 1)
    warn(hf.source(), ": pretraining_tp > 1 only changes how transformers splits its GEMMs; ",
         "the forward is the same");

  // RoPE: transformers 5 writes rope_parameters {rope_type, rope_theta, ...}; 4 wrote rope_theta
  // beside an optional rope_scaling {type or rope_type, factor, ...}.
  const json& j = hf.json();
  json rope = json::object();
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null()) {
      if (!it->is_object())
        fail(ErrorKind::kFormat, hf.source(), ": field '", key, "' must be an object, found ",
             it->type_name());
      rope = *it;
      break;
    }
  }
  c.rope_theta = rope_number(rope, hf, "rope_theta", hf.get_double("rope_theta", 10000.0));
  if (rope.contains("rope_type") && rope["rope_type"].is_string())
    c.rope_type = rope["rope_type"].get<std::string>();
  else if (rope.contains("type") && rope["type"].is_string())
    c.rope_type = rope["type"].get<std::string>();
  if (c.rope_type != "default" && c.rope_type != "linear" && c.rope_type != "llama3")
    fail(ErrorKind::kUnsupported, hf.source(), ": rope_type '", c.rope_type,
         "' is not supported (supported: default, linear, llama3)");
  if (c.rope_type != "default") c.rope_factor = rope_number(rope, hf, "factor", 1.0);
  if (c.rope_type == "llama3") {
    c.low_freq_factor = rope_number(rope, hf, "low_freq_factor", 1.0);
    c.high_freq_factor = rope_number(rope, hf, "high_freq_factor", 4.0);
    c.original_max_positions =
        int64_t(rope_number(rope, hf, "original_max_position_embeddings", 8192));
    if (c.high_freq_factor <= c.low_freq_factor)
      fail(ErrorKind::kFormat, hf.source(), ": llama3 rope scaling needs high_freq_factor > ",
           "low_freq_factor, found ", c.high_freq_factor, " and ", c.low_freq_factor);
  }

  // Sliding windows: Mistral applies sliding_window to every layer; Qwen2 (and transformers 5
  // configs generally) name each layer's kind in layer_types.
  std::optional<int64_t> window = hf.get_optional_int("sliding_window");
  if (window && *window <= 0)
    fail(ErrorKind::kFormat, hf.source(), ": sliding_window must be positive, found ", *window);
  c.layer_window.assign(size_t(c.num_layers), 0);
  auto types = j.find("layer_types");
  if (types != j.end() && !types->is_null()) {
    if (!types->is_array() || int64_t(types->size()) != c.num_layers)
      fail(ErrorKind::kFormat, hf.source(), ": layer_types must list ", c.num_layers,
           " layer kinds, found ", types->dump().substr(0, 60));
    for (size_t i = 0; i < types->size(); ++i) {
      const json& t = (*types)[i];
      if (t == "full_attention") continue;
      if (t != "sliding_attention")
        fail(ErrorKind::kUnsupported, hf.source(), ": layer_types[", i, "] = ", t.dump(),
             " is not supported (full_attention or sliding_attention)");
      if (!window)
        fail(ErrorKind::kFormat, hf.source(), ": layer_types[", i,
             "] is sliding_attention but sliding_window is null");
      c.layer_window[i] = *window;
    }
  } else if (c.model_type == "mistral" && window) {
    c.layer_window.assign(size_t(c.num_layers), *window);
  } else if (c.model_type == "qwen2" && hf.get_bool("use_sliding_window", false)) {
    fail(ErrorKind::kUnsupported, hf.source(),
         ": use_sliding_window without layer_types is not supported");
  }
  c.bos_token_id = first_token_id(hf, "bos_token_id");
  c.eos_token_id = first_token_id(hf, "eos_token_id");
  c.pad_token_id = first_token_id(hf, "pad_token_id");
  return c;
}

std::vector<float> LlamaConfig::inverse_frequencies() const {
  // transformers: 1 / theta^(arange(0, dim, 2) / dim) in float32.
  const int64_t half = head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv[size_t(i)] = 1.0f / std::pow(float(rope_theta), float(2 * i) / float(head_dim));
  if (rope_type == "linear") {
    for (float& f : inv) f /= float(rope_factor);
  } else if (rope_type == "llama3") {
    // Long wavelengths are stretched by `factor`, short ones kept, the band between blended.
    const float factor = float(rope_factor), low = float(low_freq_factor),
                high = float(high_freq_factor), context = float(original_max_positions);
    const float low_wavelen = context / low, high_wavelen = context / high;
    constexpr float kTwoPi = 6.283185307179586f;
    for (float& f : inv) {
      const float wavelen = kTwoPi / f;
      const float scaled = wavelen > low_wavelen ? f / factor : f;
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      if (medium) {
        const float smooth = (context / wavelen - low) / (high - low);
        f = (1.0f - smooth) * scaled / factor + smooth * scaled;
      } else {
        f = scaled;
      }
    }
  }
  return inv;
}

namespace {

// Projections reading the same input, stacked on their output axis: one GEMM computes them all.
// All undefined (absent biases) stays undefined.
Tensor stack_rows(const std::vector<Tensor>& parts) {
  if (!parts.front().defined()) return Tensor();
  return concat(parts, 0);
}

}  // namespace

std::unique_ptr<LlamaModel> LlamaModel::load(const std::string& model_dir, Device device,
                                             DType dtype) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir))
    fail(ErrorKind::kIo, model_dir, ": not a directory (expected a Hugging Face model directory)");
  const LlamaConfig c =
      LlamaConfig::from_hf(HfConfig::load((fs::path(model_dir) / "config.json").string()));
  std::unique_ptr<LlamaModel> model(new LlamaModel());
  model->config_ = c;
  model->device_ = device;
  WeightLoader w(model_dir, {"model."}, dtype, device);
  const int64_t d = c.hidden_size, hd = c.head_dim, inner = c.intermediate_size;
  const int64_t q_out = c.num_heads * hd, kv_out = c.num_kv_heads * hd;
  model->embed_tokens_ = w.get_matrix("embed_tokens.weight", {c.vocab_size, d});
  auto maybe_bias = [&](bool present, const std::string& name, int64_t n) {
    return present ? w.get(name, {n}) : Tensor();
  };
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    LlamaBlock b;
    b.input_norm = w.get(p + "input_layernorm.weight", {d});
    b.post_attention_norm = w.get(p + "post_attention_layernorm.weight", {d});
    b.qkv_weight = stack_rows({w.get_matrix(p + "self_attn.q_proj.weight", {q_out, d}),
                               w.get_matrix(p + "self_attn.k_proj.weight", {kv_out, d}),
                               w.get_matrix(p + "self_attn.v_proj.weight", {kv_out, d})});
    b.o_weight = w.get_matrix(p + "self_attn.o_proj.weight", {d, q_out});
    b.qkv_bias = stack_rows({maybe_bias(c.qkv_bias, p + "self_attn.q_proj.bias", q_out),
                             maybe_bias(c.qkv_bias, p + "self_attn.k_proj.bias", kv_out),
                             maybe_bias(c.qkv_bias, p + "self_attn.v_proj.bias", kv_out)});
    b.o_bias = maybe_bias(c.o_bias, p + "self_attn.o_proj.bias", d);
    b.gate_up_weight = stack_rows({w.get_matrix(p + "mlp.gate_proj.weight", {inner, d}),
                                   w.get_matrix(p + "mlp.up_proj.weight", {inner, d})});
    b.down_weight = w.get_matrix(p + "mlp.down_proj.weight", {d, inner});
    b.gate_up_bias = stack_rows({maybe_bias(c.mlp_bias, p + "mlp.gate_proj.bias", inner),
                                 maybe_bias(c.mlp_bias, p + "mlp.up_proj.bias", inner)});
    b.down_bias = maybe_bias(c.mlp_bias, p + "mlp.down_proj.bias", d);
    model->blocks_.push_back(std::move(b));
  }
  model->final_norm_ = w.get("norm.weight", {d});
  if (!c.tie_word_embeddings) {
    WeightLoader head(model_dir, {}, dtype, device);  // lm_head sits outside "model."
    if (!head.contains("lm_head.weight"))
      fail(ErrorKind::kFormat, model_dir,
           ": tie_word_embeddings is false but the checkpoint has no 'lm_head.weight'");
    model->lm_head_ = head.get_matrix("lm_head.weight", {c.vocab_size, d});
  }
  model->finish_init();
  return model;
}

std::unique_ptr<LlamaModel> LlamaModel::random(const LlamaConfig& c, uint64_t seed, Device device,
                                               DType dtype) {
  std::unique_ptr<LlamaModel> model(new LlamaModel());
  model->config_ = c;
  if (model->config_.layer_window.empty())
    model->config_.layer_window.assign(size_t(c.num_layers), 0);
  model->device_ = device;
  const int64_t d = c.hidden_size, hd = c.head_dim, inner = c.intermediate_size;
  const int64_t q_out = c.num_heads * hd, kv_out = c.num_kv_heads * hd;
  uint64_t stream = 0;
  const DType vectors = activation_dtype(device, dtype);
  auto normal = [&](const Shape& shape) {
    return randn(shape, seed, (stream++) << 40, 0.0f, 0.02f, device).to(dtype);
  };
  auto ones = [&](int64_t n) { return Tensor::full({n}, 1.0f, vectors, device); };
  auto zeros = [&](bool present, int64_t n) {
    return present ? Tensor::zeros({n}, vectors, device) : Tensor();
  };
  model->embed_tokens_ = normal({c.vocab_size, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    LlamaBlock b;
    b.input_norm = ones(d);
    b.post_attention_norm = ones(d);
    // Drawn projection by projection (the streams of separate q/k/v and gate/up weights).
    b.qkv_weight = stack_rows({normal({q_out, d}), normal({kv_out, d}), normal({kv_out, d})});
    b.o_weight = normal({d, q_out});
    b.qkv_bias = zeros(c.qkv_bias, q_out + 2 * kv_out);
    b.o_bias = zeros(c.o_bias, d);
    b.gate_up_weight = stack_rows({normal({inner, d}), normal({inner, d})});
    b.down_weight = normal({d, inner});
    b.gate_up_bias = zeros(c.mlp_bias, 2 * inner);
    b.down_bias = zeros(c.mlp_bias, d);
    model->blocks_.push_back(std::move(b));
  }
  model->final_norm_ = ones(d);
  if (!c.tie_word_embeddings) model->lm_head_ = normal({c.vocab_size, d});
  model->finish_init();
  return model;
}

void LlamaModel::finish_init() {
  info_.model_type = config_.model_type;
  info_.token_dim = config_.hidden_size;
  info_.num_layers = config_.num_layers;
  info_.num_heads = config_.num_heads;
  info_.vocab_size = config_.vocab_size;
  info_.max_positions = config_.max_positions;
  for (int64_t window : config_.layer_window)
    info_.sliding_window = std::max(info_.sliding_window, window);
  info_.eos_token_id = config_.eos_token_id;
  info_.bos_token_id = config_.bos_token_id;
  info_.pad_token_id = config_.pad_token_id;
  inv_freq_ = config_.inverse_frequencies();
  int64_t count = 0;
  auto account = [&](const Tensor& t) {
    count += t.defined() ? t.numel() : 0;
    freeze_storage(t);
  };
  for (const Tensor* t : {&embed_tokens_, &final_norm_, &lm_head_}) account(*t);
  for (const LlamaBlock& b : blocks_)
    for (const Tensor* t :
         {&b.input_norm, &b.post_attention_norm, &b.qkv_weight, &b.qkv_bias, &b.o_weight, &b.o_bias,
          &b.gate_up_weight, &b.gate_up_bias, &b.down_weight, &b.down_bias})
      account(*t);
  info_.parameter_count = count;
}

KvCache LlamaModel::make_cache(int64_t batch, int64_t capacity) const {
  return KvCache::allocate(config_.num_layers, batch, capacity, config_.num_kv_heads,
                           config_.head_dim, activation_dtype(device_, embed_tokens_.dtype()),
                           device_);
}

ResidualAndNorm LlamaModel::block_forward(int64_t layer, const Tensor& h, const Tensor& normed_in,
                                          const Tensor& cos, const Tensor& sin,
                                          const AttentionMask& base_mask, KvCache* cache,
                                          const ForwardOptions& options,
                                          bool fuse_next_norm) const {
  const LlamaBlock& b = blocks_[size_t(layer)];
  const int64_t B = h.size(0), T = h.size(1), hd = config_.head_dim;
  const float eps = float(config_.rms_norm_eps);
  const Tensor a = normed_in.defined() ? normed_in : rms_norm(h, b.input_norm, eps);
  const int64_t H = config_.num_heads, Hkv = config_.num_kv_heads;
  const Tensor qkv = linear(a, b.qkv_weight, b.qkv_bias, WeightLayout::kOutIn);
  AttentionMask mask = base_mask;
  mask.scale = 1.0f / std::sqrt(float(hd));
  mask.sliding_window = config_.layer_window[size_t(layer)];
  const float attn_p = options.train ? config_.attention_dropout : 0.0f;
  // Dropout sites get disjoint Philox counter ranges: 2^36 per layer.
  const AttentionDropout dropout{attn_p, options.dropout_seed, uint64_t(layer + 1) << 36};
  Tensor o;
  if (!cache) {
    o = rotary_attention_packed(qkv, H, Hkv, cos, sin, mask, dropout);
  } else {
    auto [k, v] = cache->append(layer, rotary_embedding(packed_heads(qkv, H, Hkv, hd), cos, sin),
                                packed_heads(qkv, H + Hkv, Hkv, hd));
    o = attention(rotary_embedding(packed_heads(qkv, 0, H, hd), cos, sin), k, v, mask, dropout);
  }
  // Each residual add takes its projection's bias and runs in one pass with the RMS norm that reads
  // the sum next (post_attention_norm; then the next input norm, or the final norm).
  o = linear(o.view({B, T, -1}), b.o_weight, Tensor(), WeightLayout::kOutIn);
  auto [h1, m] =
      residual_dropout_add_rms_norm(h, o, b.o_bias, 0.0f, 0, 0, b.post_attention_norm, eps);
  m = linear(
      gated_activation_packed(linear(m, b.gate_up_weight, b.gate_up_bias, WeightLayout::kOutIn),
                              config_.hidden_act),
      b.down_weight, Tensor(), WeightLayout::kOutIn);
  if (!fuse_next_norm) return {residual_dropout_add(h1, m, b.down_bias, 0.0f, 0, 0), Tensor()};
  const bool last = layer + 1 == config_.num_layers;
  return residual_dropout_add_rms_norm(h1, m, b.down_bias, 0.0f, 0, 0,
                                       last ? final_norm_ : blocks_[size_t(layer + 1)].input_norm,
                                       eps);
}

Tensor LlamaModel::hidden_states(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                 const Tensor& position_ids, KvCache* cache,
                                 const ForwardOptions& options) {
  const std::string& name = config_.model_type;
  SP_CHECK(inputs_embeds.dim() == 3 && inputs_embeds.size(2) == config_.hidden_size, name,
           ": inputs_embeds must be [B, T, ", config_.hidden_size, "], got ",
           inputs_embeds.describe());
  const int64_t B = inputs_embeds.size(0), T = inputs_embeds.size(1);
  const int64_t past = cache ? cache->length : 0;
  // Positions as transformers takes them: position_ids when given, else past .. past + T - 1.
  std::vector<int64_t> positions;
  int64_t position_rows = 1;
  if (position_ids.defined()) {
    SP_CHECK(position_ids.dim() == 2 && position_ids.size(-1) == T &&
                 (position_ids.size(0) == 1 || position_ids.size(0) == B),
             name, ": position_ids must be [B, T] or [1, T] with T = ", T, ", got ",
             position_ids.describe());
    positions = position_ids.to_ints();
    position_rows = position_ids.size(0);
    for (int64_t p : positions)
      SP_CHECK(p >= 0, name, ": position_ids must not be negative, found ", p);
  } else {
    for (int64_t t = 0; t < T; ++t) positions.push_back(past + t);
  }
  // RoPE tables [B, T, head_dim / 2]: angle = position * inverse frequency, in float32.
  const int64_t half = config_.head_dim / 2;
  std::vector<float> cos_table(size_t(B * T * half)), sin_table(cos_table.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float pos = float(positions[size_t((position_rows == 1 ? 0 : b) * T + t)]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq_[size_t(i)];
        cos_table[size_t((b * T + t) * half + i)] = std::cos(angle);
        sin_table[size_t((b * T + t) * half + i)] = std::sin(angle);
      }
    }
  const Tensor cos = Tensor::from_floats(cos_table, {B, T, half}).to(device_);
  const Tensor sin = Tensor::from_floats(sin_table, {B, T, half}).to(device_);

  AttentionMask mask;
  mask.causal = true;
  mask.query_offset = past;
  if (attention_mask.defined()) {
    SP_CHECK(attention_mask.shape() == Shape({B, past + T}), name, ": attention_mask must be [", B,
             ", ", past + T, "] (past + current positions), got ", attention_mask.describe());
    mask.key_padding = attention_mask.dtype() == DType::F32 ? attention_mask.contiguous()
                                                            : attention_mask.to(DType::F32);
  }
  // Each block ends with the RMS norm that reads its output (the next input norm, or the final
  // norm) in the pass of its last residual add; a checkpointed block returns only the stream.
  ResidualAndNorm stream{inputs_embeds, Tensor()};
  for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
    if (options.checkpoint_activations && !cache && grad_mode_enabled() &&
        stream.sum.requires_grad()) {
      stream.sum = checkpoint(
          [this, layer, cos, sin, mask, options](const std::vector<Tensor>& in) {
            return block_forward(layer, in[0], Tensor(), cos, sin, mask, nullptr, options, false)
                .sum;
          },
          {stream.sum});
      stream.normed = Tensor();
    } else {
      stream =
          block_forward(layer, stream.sum, stream.normed, cos, sin, mask, cache, options, true);
    }
  }
  if (cache) cache->length += T;
  if (stream.normed.defined()) return stream.normed;
  return rms_norm(stream.sum, final_norm_, float(config_.rms_norm_eps));
}

Tensor LlamaModel::logits(const Tensor& hidden) const {
  return matmul(hidden, output_embeddings().transpose(0, 1));
}

}  // namespace sp
