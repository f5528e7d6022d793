// GPT-2: config parsing, weight loading, the frozen forward and the LM head.
#include "models/gpt2.h"

#include <cmath>
#include <filesystem>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/checkpoint.h"
#include "engine/ops/ops.h"
#include "models/weight_loader.h"

namespace sp {

Gpt2Config Gpt2Config::from_hf(const HfConfig& hf) {
  std::string model_type = hf.get_string("model_type", "gpt2");
  if (model_type != "gpt2")
    fail(ErrorKind::kUnsupported, hf.source(), ": model_type '", model_type,
         "' is not a GPT-2 model (expected \"gpt2\")");
  Gpt2Config c;
  c.n_embd = hf.get_positive_int("n_embd");
  c.n_head = hf.get_positive_int("n_head");
  c.n_layer = hf.get_positive_int("n_layer");
  c.n_positions = hf.get_positive_int("n_positions");
  c.vocab_size = hf.get_positive_int("vocab_size");
  c.n_inner = hf.get_positive_int("n_inner", 4 * c.n_embd);
  c.layer_norm_epsilon = hf.get_double("layer_norm_epsilon", 1e-5);
  std::string act = hf.get_string("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu" && act != "relu" && act != "gelu_pytorch_tanh")
    fail(ErrorKind::kUnsupported, hf.source(), ": activation_function '", act,
         "' is not supported; expected one of gelu_new, gelu_pytorch_tanh, gelu, relu");
  c.activation = parse_activation(act, "activation_function");
  c.scale_attn_weights = hf.get_bool("scale_attn_weights", true);
  c.scale_attn_by_inverse_layer_idx = hf.get_bool("scale_attn_by_inverse_layer_idx", false);
  c.tie_word_embeddings = hf.get_bool("tie_word_embeddings", true);
  if (hf.get_bool("add_cross_attention", false))
    fail(ErrorKind::kUnsupported, hf.source(),
         ": add_cross_attention=true (GPT-2 as an encoder-decoder) is not supported");
  c.embd_pdrop = float(hf.get_double("embd_pdrop", 0.1));
  c.attn_pdrop = float(hf.get_double("attn_pdrop", 0.1));
  c.resid_pdrop = float(hf.get_double("resid_pdrop", 0.1));
  for (auto [name, value] : {std::pair{"embd_pdrop", c.embd_pdrop},
                             {"attn_pdrop", c.attn_pdrop},
                             {"resid_pdrop", c.resid_pdrop}})
    if (value < 0.0f || value >= 1.0f)
      fail(ErrorKind::kFormat, hf.source(), ": field '", name, "' must be in [0, 1), found ",
           value);
  if (c.n_embd % c.n_head != 0)
    fail(ErrorKind::kFormat, hf.source(), ": n_embd ", c.n_embd, " is not divisible by n_head ",
         c.n_head);
  c.bos_token_id = hf.get_optional_int("bos_token_id");
  c.eos_token_id = hf.get_optional_int("eos_token_id");
  c.pad_token_id = hf.get_optional_int("pad_token_id");
  return c;
}

std::unique_ptr<Gpt2Model> Gpt2Model::load(const std::string& model_dir, Device device,
                                           DType dtype) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir))
    fail(ErrorKind::kIo, model_dir, ": not a directory (expected a Hugging Face model directory)");
  Gpt2Config config =
      Gpt2Config::from_hf(HfConfig::load((fs::path(model_dir) / "config.json").string()));
  std::unique_ptr<Gpt2Model> model(new Gpt2Model());
  model->config_ = config;
  model->device_ = device;
  WeightLoader w(model_dir, {"transformer."}, dtype, device);
  const int64_t d = config.n_embd, inner = config.n_inner;
  model->wte_ = w.get_matrix("wte.weight", {config.vocab_size, d});
  model->wpe_ = w.get("wpe.weight", {config.n_positions, d});
  for (int64_t i = 0; i < config.n_layer; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
    Gpt2Block b;
    b.ln1_weight = w.get(p + "ln_1.weight", {d});
    b.ln1_bias = w.get(p + "ln_1.bias", {d});
    b.attn_weight = w.get_matrix(p + "attn.c_attn.weight", {d, 3 * d});
    b.attn_bias = w.get(p + "attn.c_attn.bias", {3 * d});
    b.attn_proj_weight = w.get_matrix(p + "attn.c_proj.weight", {d, d});
    b.attn_proj_bias = w.get(p + "attn.c_proj.bias", {d});
    b.ln2_weight = w.get(p + "ln_2.weight", {d});
    b.ln2_bias = w.get(p + "ln_2.bias", {d});
    b.fc_weight = w.get_matrix(p + "mlp.c_fc.weight", {d, inner});
    b.fc_bias = w.get(p + "mlp.c_fc.bias", {inner});
    b.mlp_proj_weight = w.get_matrix(p + "mlp.c_proj.weight", {inner, d});
    b.mlp_proj_bias = w.get(p + "mlp.c_proj.bias", {d});
    model->blocks_.push_back(std::move(b));
  }
  model->lnf_weight_ = w.get("ln_f.weight", {d});
  model->lnf_bias_ = w.get("ln_f.bias", {d});
  // lm_head.weight sits outside the "transformer." prefix in GPT2LMHeadModel checkpoints.
  if (!config.tie_word_embeddings) {
    WeightLoader head(model_dir, {}, dtype, device);
    if (!head.contains("lm_head.weight"))
      fail(ErrorKind::kFormat, model_dir,
           ": tie_word_embeddings is false but the checkpoint has no 'lm_head.weight'");
    model->lm_head_ = head.get_matrix("lm_head.weight", {config.vocab_size, d});
  }
  model->finish_init();
  return model;
}

std::unique_ptr<Gpt2Model> Gpt2Model::random(const Gpt2Config& config, uint64_t seed, Device device,
                                             DType dtype) {
  std::unique_ptr<Gpt2Model> model(new Gpt2Model());
  model->config_ = config;
  model->device_ = device;
  const int64_t d = config.n_embd, inner = config.n_inner;
  uint64_t stream = 0;
  const DType vectors = activation_dtype(device, dtype);
  auto normal = [&](const Shape& shape) {
    return randn(shape, seed, (stream++) << 40, 0.0f, 0.02f, device).to(dtype);
  };
  auto ones = [&](int64_t n) { return Tensor::full({n}, 1.0f, vectors, device); };
  auto zeros = [&](int64_t n) { return Tensor::zeros({n}, vectors, device); };
  model->wte_ = normal({config.vocab_size, d});
  model->wpe_ = normal({config.n_positions, d}).to(vectors);
  for (int64_t i = 0; i < config.n_layer; ++i) {
    model->blocks_.push_back({ones(d), zeros(d), normal({d, 3 * d}), zeros(3 * d), normal({d, d}),
                              zeros(d), ones(d), zeros(d), normal({d, inner}), zeros(inner),
                              normal({inner, d}), zeros(d)});
  }
  model->lnf_weight_ = ones(d);
  model->lnf_bias_ = zeros(d);
  if (!config.tie_word_embeddings) model->lm_head_ = normal({config.vocab_size, d});
  model->finish_init();
  return model;
}

void Gpt2Model::finish_init() {
  info_.model_type = "gpt2";
  info_.token_dim = config_.n_embd;
  info_.num_layers = config_.n_layer;
  info_.num_heads = config_.n_head;
  info_.vocab_size = config_.vocab_size;
  info_.max_positions = config_.n_positions;
  info_.eos_token_id = config_.eos_token_id;
  info_.bos_token_id = config_.bos_token_id;
  info_.pad_token_id = config_.pad_token_id;
  // Every weight is frozen from here on, so GEMMs may keep packed forms of them.
  int64_t count = 0;
  auto account = [&](const Tensor& t) {
    count += t.defined() ? t.numel() : 0;
    freeze_storage(t);
  };
  for (const Tensor* t : {&wte_, &wpe_, &lnf_weight_, &lnf_bias_, &lm_head_}) account(*t);
  for (const Gpt2Block& b : blocks_)
    for (const Tensor* t : {&b.ln1_weight, &b.ln1_bias, &b.attn_weight, &b.attn_bias,
                            &b.attn_proj_weight, &b.attn_proj_bias, &b.ln2_weight, &b.ln2_bias,
                            &b.fc_weight, &b.fc_bias, &b.mlp_proj_weight, &b.mlp_proj_bias})
      account(*t);
  info_.parameter_count = count;
}

KvCache Gpt2Model::make_cache(int64_t batch, int64_t capacity) const {
  return KvCache::allocate(config_.n_layer, batch, capacity, config_.n_head,
                           config_.n_embd / config_.n_head, activation_dtype(device_, wte_.dtype()),
                           device_);
}

namespace {

// Dropout sites get disjoint Philox counter ranges: 2^36 per layer, 2^34 per site.
uint64_t dropout_offset(int64_t layer, int site) {
  return (uint64_t(layer + 1) << 36) + (uint64_t(site) << 34);
}

}  // namespace

AttentionMask Gpt2Model::layer_mask(int64_t layer, const AttentionMask& base) const {
  AttentionMask mask = base;
  const int64_t hd = config_.n_embd / config_.n_head;
  mask.scale = config_.scale_attn_weights ? 1.0f / std::sqrt(float(hd)) : 1.0f;
  if (config_.scale_attn_by_inverse_layer_idx) mask.scale /= float(layer + 1);
  return mask;
}

Tensor Gpt2Model::ln_1(int64_t layer, const Tensor& h) const {
  const Gpt2Block& b = blocks_[size_t(layer)];
  return layernorm(h, b.ln1_weight, b.ln1_bias, float(config_.layer_norm_epsilon));
}

Tensor Gpt2Model::block_qkv(int64_t layer, const Tensor& normed, bool with_bias) const {
  const Gpt2Block& b = blocks_[size_t(layer)];
  return linear(normed, b.attn_weight, with_bias ? b.attn_bias : Tensor(),
                WeightLayout::kInOut);  // [B, T, 3d]
}

ResidualAndNorm Gpt2Model::block_finish(int64_t layer, const Tensor& h, const Tensor& o,
                                        const ForwardOptions& options, bool fuse_next_norm) const {
  const Gpt2Block& b = blocks_[size_t(layer)];
  const float resid_p = options.train ? config_.resid_pdrop : 0.0f;
  const float eps = float(config_.layer_norm_epsilon);
  // Each branch ends in one fused pass: its projection's bias, resid_pdrop, the residual add and
  // the LayerNorm that reads the sum next (ln_2; then the next block's ln_1, or ln_f).
  Tensor projected = matmul(o, b.attn_proj_weight);  // Conv1D: [in, out]
  auto [h1, m] =
      residual_dropout_add_layernorm(h, projected, b.attn_proj_bias, resid_p, options.dropout_seed,
                                     dropout_offset(layer, 1), b.ln2_weight, b.ln2_bias, eps);
  // c_fc's bias and the activation in the GEMM's epilogue where the backend can (CUDA: cuBLASLt).
  m = feed_forward(m, b.fc_weight, b.fc_bias, config_.activation, b.mlp_proj_weight);
  if (!fuse_next_norm)
    return {residual_dropout_add(h1, m, b.mlp_proj_bias, resid_p, options.dropout_seed,
                                 dropout_offset(layer, 2)),
            Tensor()};
  const bool last = layer + 1 == config_.n_layer;
  const Tensor& next_weight = last ? lnf_weight_ : blocks_[size_t(layer + 1)].ln1_weight;
  const Tensor& next_bias = last ? lnf_bias_ : blocks_[size_t(layer + 1)].ln1_bias;
  return residual_dropout_add_layernorm(h1, m, b.mlp_proj_bias, resid_p, options.dropout_seed,
                                        dropout_offset(layer, 2), next_weight, next_bias, eps);
}

namespace {

struct Heads {
  Tensor q, k, v;  // [B, T, H, hd] views of the interleaved projection
};

Heads split_heads(const Tensor& qkv, int64_t H) {
  const int64_t B = qkv.size(0), T = qkv.size(1), d = qkv.size(2) / 3;
  return {qkv.slice(2, 0, d).view({B, T, H, d / H}), qkv.slice(2, d, 2 * d).view({B, T, H, d / H}),
          qkv.slice(2, 2 * d, 3 * d).view({B, T, H, d / H})};
}

// x [1, ...] repeated along axis 0 to [rows, ...]; the backward sums the rows' gradients.
Tensor repeat_row(const Tensor& x, int64_t rows) {
  Shape shape = x.shape();
  shape[0] = rows;
  const Tensor zeros = Tensor::zeros({rows}, DType::I64);  // host ids: no wait to check them
  return index_select(x.reshape({1, -1}), zeros).view(shape);
}

}  // namespace

ResidualAndNorm Gpt2Model::block_forward(int64_t layer, const Tensor& h, const Tensor& normed_in,
                                         const AttentionMask& base_mask, KvCache* cache,
                                         const ForwardOptions& options, bool fuse_next_norm) const {
  const int64_t B = h.size(0), T = h.size(1), d = config_.n_embd;
  const float attn_p = options.train ? config_.attn_pdrop : 0.0f;
  const Tensor normed = normed_in.defined() ? normed_in : ln_1(layer, h);
  const AttentionMask mask = layer_mask(layer, base_mask);
  const AttentionDropout dropout{attn_p, options.dropout_seed, dropout_offset(layer, 0)};
  Tensor o;
  if (cache) {
    Heads heads = split_heads(block_qkv(layer, normed), config_.n_head);
    std::tie(heads.k, heads.v) = cache->append(layer, heads.k, heads.v);
    o = attention(heads.q, heads.k, heads.v, mask, dropout);
  } else {
    // One gradient buffer for q, k and v, and the projection's bias added as the kernels load.
    o = attention_packed(block_qkv(layer, normed, /*with_bias=*/false), config_.n_head, mask,
                         dropout, blocks_[size_t(layer)].attn_bias);
  }
  return block_finish(layer, h, o.view({B, T, d}), options, fuse_next_norm);
}

std::pair<Tensor, Tensor> Gpt2Model::shared_prefix_block_forward(
    int64_t layer, const Tensor& prefix, const Tensor& rest, const AttentionMask& base_mask) const {
  const int64_t B = rest.size(0), n = prefix.size(1), d = config_.n_embd;
  const Heads p = split_heads(block_qkv(layer, ln_1(layer, prefix)), config_.n_head);
  const Heads r = split_heads(block_qkv(layer, ln_1(layer, rest)), config_.n_head);
  AttentionMask prefix_mask = layer_mask(layer, AttentionMask{});
  prefix_mask.causal = true;  // the prefix is unmasked by promise: no key padding
  Tensor prefix_o = attention(p.q, p.k, p.v, prefix_mask);
  // The rest's queries sit at positions n.. and see the prefix's keys first, as a KV cache's.
  AttentionMask rest_mask = layer_mask(layer, base_mask);
  rest_mask.query_offset = n;
  Tensor k = concat({repeat_row(p.k, B), r.k}, 1), v = concat({repeat_row(p.v, B), r.v}, 1);
  Tensor rest_o = attention(r.q, k, v, rest_mask);
  const ForwardOptions no_dropout;
  return {block_finish(layer, prefix, prefix_o.view({1, n, d}), no_dropout, false).sum,
          block_finish(layer, rest, rest_o.view({B, rest.size(1), d}), no_dropout, false).sum};
}

Tensor Gpt2Model::hidden_states(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                const Tensor& position_ids, KvCache* cache,
                                const ForwardOptions& options) {
  SP_CHECK(inputs_embeds.dim() == 3 && inputs_embeds.size(2) == config_.n_embd,
           "gpt2: inputs_embeds must be [B, T, ", config_.n_embd, "], got ",
           inputs_embeds.describe());
  const int64_t B = inputs_embeds.size(0), T = inputs_embeds.size(1);
  const int64_t past = cache ? cache->length : 0;
  SP_CHECK(past + T <= config_.n_positions, "gpt2: sequence of ", past + T,
           " positions exceeds n_positions = ", config_.n_positions);
  SP_CHECK(!position_ids.defined() || (position_ids.dim() == 2 && position_ids.size(-1) == T &&
                                       (position_ids.size(0) == 1 || position_ids.size(0) == B)),
           "gpt2: position_ids must be [B, T] or [1, T] with T = ", T, ", got ",
           position_ids.describe());
  AttentionMask mask;
  mask.causal = true;
  mask.query_offset = past;
  if (attention_mask.defined()) {
    SP_CHECK(attention_mask.shape() == Shape({B, past + T}), "gpt2: attention_mask must be [", B,
             ", ", past + T, "] (past + current positions), got ", attention_mask.describe());
    mask.key_padding = attention_mask.dtype() == DType::F32 ? attention_mask.contiguous()
                                                            : attention_mask.to(DType::F32);
  }
  const float embd_p = options.train ? config_.embd_pdrop : 0.0f;
  // The default positions past .. past + T - 1 are rows of wpe as they stand: a view, where
  // explicit ids cost an upload and a gather.
  const Tensor position_embeds = position_ids.defined()
                                     ? embedding(wpe_, position_ids)
                                     : wpe_.slice(0, past, past + T).view({1, T, config_.n_embd});
  Tensor h = add(inputs_embeds, position_embeds);
  h = dropout(h, embd_p, options.dropout_seed, dropout_offset(-1, 0));
  const bool any_dropout =
      options.train &&
      (config_.embd_pdrop > 0.0f || config_.attn_pdrop > 0.0f || config_.resid_pdrop > 0.0f);
  const int64_t shared = options.shared_prefix;
  SP_CHECK(shared >= 0 && shared <= T, "gpt2: shared_prefix ", shared, " is outside [0, ", T, "]");
  if (shared > 0 && shared < T && B > 1 && !cache && !any_dropout && !position_ids.defined() &&
      !options.checkpoint_activations) {
    Tensor prefix = h.slice(0, 0, 1).slice(1, 0, shared), rest = h.slice(1, shared, T);
    for (int64_t layer = 0; layer < config_.n_layer; ++layer)
      std::tie(prefix, rest) = shared_prefix_block_forward(layer, prefix, rest, mask);
    h = concat({repeat_row(prefix, B), rest}, 1);
  } else {
    // Each block ends with the LayerNorm that reads its output (the next ln_1, or ln_f) in the
    // pass of its last residual add; a checkpointed block returns only the stream.
    ResidualAndNorm stream{h, Tensor()};
    for (int64_t layer = 0; layer < config_.n_layer; ++layer) {
      if (options.checkpoint_activations && !cache && grad_mode_enabled() &&
          stream.sum.requires_grad()) {
        stream.sum = checkpoint(
            [this, layer, mask, options](const std::vector<Tensor>& in) {
              return block_forward(layer, in[0], Tensor(), mask, nullptr, options, false).sum;
            },
            {stream.sum});
        stream.normed = Tensor();
      } else {
        stream = block_forward(layer, stream.sum, stream.normed, mask, cache, options, true);
      }
    }
    if (cache) cache->length += T;
    if (stream.normed.defined()) return stream.normed;
    h = stream.sum;
  }
  return layernorm(h, lnf_weight_, lnf_bias_, float(config_.layer_norm_epsilon));
}

Tensor Gpt2Model::logits(const Tensor& hidden) const {
  return matmul(hidden, output_embeddings().transpose(0, 1));
}

}  // namespace sp
