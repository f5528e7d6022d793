// T5 (transformers' T5ForConditionalGeneration semantics, v1.0 and v1.1/flan): config, frozen
// weights from a Hugging Face directory, encoder/decoder forwards with relative position bias,
// the cached cross-attention, dropout in train mode and the (optionally scaled) LM head.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/ops/layernorm.h"
#include "models/hf_config.h"
#include "models/seq2seq_lm.h"

namespace sp {

/// The fields of a T5 config.json that the forward uses, with transformers' defaults.
struct T5Config {
  int64_t d_model = 512;
  int64_t d_kv = 64;  ///< per-head size; inner dim num_heads * d_kv may differ from d_model
  int64_t d_ff = 2048;
  int64_t num_heads = 8;
  int64_t num_layers = 6;          ///< encoder blocks
  int64_t num_decoder_layers = 6;  ///< config's null means num_layers
  int64_t vocab_size = 32128;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  std::string feed_forward_proj = "relu";
  Activation dense_activation = Activation::kRelu;  ///< after dense_act_fn overrides
  bool is_gated_act = false;  ///< wo(act(wi_0 x) * wi_1 x) instead of wo(act(wi x))
  /// transformers 5 multiplies decoder outputs by d_model^-0.5 before the head when this is set;
  /// config.json's scale_decoder_outputs when present, else its tie_word_embeddings (default true).
  bool scale_decoder_outputs = true;
  bool tie_word_embeddings = true;  ///< as written in config.json (informational, see load())
  float dropout_rate = 0.1f;
  int64_t pad_token_id = 0;
  std::optional<int64_t> eos_token_id = 1;
  int64_t decoder_start_token_id = 0;

  int64_t inner_dim() const { return num_heads * d_kv; }
  /// Validates every field it reads; unsupported values name the field and what is supported.
  static T5Config from_hf(const HfConfig& config);
};

/// One attention sublayer's frozen weights. nn.Linear layout [out, in]; q|k|v (self-attention) or
/// k|v (cross-attention) are packed along the output axis at load so one GEMM projects them all.
struct T5Attention {
  Tensor norm;    ///< the sublayer's T5LayerNorm weight [d]
  Tensor q;       ///< cross-attention only: [inner, d]
  Tensor packed;  ///< self: [3 * inner, d] (q|k|v); cross: [2 * inner, d] (k|v)
  Tensor o;       ///< [d, inner]
};

/// One feed-forward sublayer's frozen weights (nn.Linear layout [out, in]).
struct T5FeedForward {
  Tensor norm;  ///< [d]
  Tensor wi;    ///< [d_ff, d], or [2 * d_ff, d] = wi_0|wi_1 when gated
  Tensor wo;    ///< [d, d_ff]
};

/// One encoder or decoder block.
struct T5Block {
  T5Attention self_attention;
  T5Attention cross_attention;  ///< decoder blocks only
  T5FeedForward feed_forward;
};

/// T5ForConditionalGeneration with frozen weights; usually reached through load_seq2seq_lm().
class T5Model final : public Seq2SeqLM {
 public:
  /// Loads config.json and the safetensors weights of `model_dir`, converted to `dtype` and placed
  /// on `device`. The embedding may be stored as shared.weight, encoder.embed_tokens.weight or
  /// decoder.embed_tokens.weight; lm_head.weight is used when the file has it (and differs from
  /// the embedding), otherwise the head is the embedding, as transformers 5 ties it.
  static std::unique_ptr<T5Model> load(const std::string& model_dir, Device device = Device::cpu(),
                                       DType dtype = DType::F32);

  const ModelInfo& info() const override { return info_; }
  Device device() const override { return device_; }
  Tensor word_embeddings() const override { return shared_; }
  int64_t decoder_start_token_id() const override { return config_.decoder_start_token_id; }
  Tensor encode(const Tensor& inputs_embeds, const Tensor& attention_mask,
                const ForwardOptions& options) override;
  Tensor decode(const Tensor& decoder_inputs_embeds, const Tensor& encoder_hidden,
                const Tensor& encoder_mask, const Tensor& decoder_attention_mask,
                Seq2SeqCache* cache, const ForwardOptions& options) override;
  Tensor logits(const Tensor& decoder_hidden) const override;
  Tensor output_embeddings() const override { return lm_head_.defined() ? lm_head_ : shared_; }
  float output_scale() const override;
  Seq2SeqCache make_cache(int64_t batch, int64_t capacity, int64_t encoder_length) const override;

  const T5Config& config() const { return config_; }
  /// True when lm_head.weight is its own matrix (v1.1 / flan), false when it is the embedding.
  bool has_separate_lm_head() const { return lm_head_.defined(); }

 private:
  T5Model() = default;
  void finish_init();
  // A block on the residual stream h, whose first RMS norm `normed` the previous block's last
  // residual add may have computed in its pass (undefined: computed here). Returns the new stream
  // and, with next_norm, that norm of it (the next block's first norm, or the stack's final norm)
  // from the pass of the block's last residual add.
  ResidualAndNorm encoder_block(int64_t layer, const Tensor& h, const Tensor& normed,
                                const AttentionMask& mask, const ForwardOptions& options,
                                const Tensor& next_norm) const;
  ResidualAndNorm decoder_block(int64_t layer, const Tensor& h, const Tensor& normed,
                                const AttentionMask& self_mask, const Tensor& encoder_hidden,
                                const AttentionMask& cross_mask, Seq2SeqCache* cache,
                                const ForwardOptions& options, const Tensor& next_norm) const;
  // The feed-forward sublayer: `normed` and `next_norm` as for the blocks.
  ResidualAndNorm feed_forward(const T5FeedForward& ff, const Tensor& h, const Tensor& normed,
                               uint64_t dropout_base, const ForwardOptions& options,
                               const Tensor& next_norm) const;

  T5Config config_;
  ModelInfo info_;
  Device device_;
  Tensor shared_;   ///< [V, d]
  Tensor lm_head_;  ///< [V, d] when separate; undefined when tied to shared_
  Tensor encoder_bias_table_, decoder_bias_table_;  ///< [buckets, heads], block 0 of each stack
  Tensor encoder_final_norm_, decoder_final_norm_;
  std::vector<T5Block> encoder_, decoder_;
};

}  // namespace sp
