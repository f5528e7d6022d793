// Llama-family decoders (transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM):
// config, frozen weights, RMSNorm + RoPE + grouped-query attention + SwiGLU forward, LM head.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/ops/layernorm.h"
#include "models/causal_lm.h"
#include "models/hf_config.h"

namespace sp {

/// The fields of a Llama / Mistral / Qwen2 config.json the forward uses, transformers' defaults.
struct LlamaConfig {
  std::string model_type = "llama";  ///< "llama", "mistral" or "qwen2"
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_layers = 32;
  int64_t num_heads = 32;
  int64_t num_kv_heads = 32;  ///< fewer than num_heads: grouped-query attention
  int64_t head_dim = 128;     ///< config's head_dim, else hidden_size / num_heads
  int64_t vocab_size = 32000;
  int64_t max_positions = 2048;
  double rms_norm_eps = 1e-6;
  Activation hidden_act = Activation::kSilu;
  bool qkv_bias = false;  ///< Llama's attention_bias; always true for Qwen2
  bool o_bias = false;    ///< Llama's attention_bias; never for Qwen2
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  float attention_dropout = 0.0f;
  /// RoPE: theta and the scaling transformers calls rope_type "default", "linear" or "llama3".
  double rope_theta = 10000.0;
  std::string rope_type = "default";
  double rope_factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_positions = 8192;
  /// Per layer: 0 = full causal attention, else the sliding window (Mistral, Qwen2 layer_types).
  std::vector<int64_t> layer_window;
  std::optional<int64_t> bos_token_id, eos_token_id, pad_token_id;

  /// Validates every field it reads; unsupported values name the field and what is supported.
  static LlamaConfig from_hf(const HfConfig& config);
  /// RoPE's inverse frequencies [head_dim / 2] after the configured scaling, in float32 as
  /// transformers computes them.
  std::vector<float> inverse_frequencies() const;
};

/// One decoder layer's frozen weights, nn.Linear [out, in] layout; biases may be undefined.
/// q_proj, k_proj and v_proj are stacked into one [(H + 2 Hkv) * head_dim, d] matrix, and
/// gate_proj and up_proj into one [2 * intermediate, d]: each is one GEMM forward and backward.
struct LlamaBlock {
  Tensor input_norm, post_attention_norm;
  Tensor qkv_weight, qkv_bias, o_weight, o_bias;
  Tensor gate_up_weight, gate_up_bias, down_weight, down_bias;
};

/// A Llama-family causal LM with frozen weights; usually reached through load_causal_lm().
class LlamaModel final : public CausalLM {
 public:
  /// Loads config.json and the (possibly sharded) safetensors weights of `model_dir`.
  static std::unique_ptr<LlamaModel> load(const std::string& model_dir,
                                          Device device = Device::cpu(), DType dtype = DType::F32);
  /// Random weights (benchmarks, tests): N(0, 0.02) matrices, unit norms, zero biases.
  static std::unique_ptr<LlamaModel> random(const LlamaConfig& config, uint64_t seed,
                                            Device device = Device::cpu(),
                                            DType dtype = DType::F32);

  const ModelInfo& info() const override { return info_; }
  Device device() const override { return device_; }
  Tensor word_embeddings() const override { return embed_tokens_; }
  Tensor hidden_states(const Tensor& inputs_embeds, const Tensor& attention_mask,
                       const Tensor& position_ids, KvCache* cache,
                       const ForwardOptions& options) override;
  Tensor logits(const Tensor& hidden) const override;
  Tensor output_embeddings() const override {
    return config_.tie_word_embeddings ? embed_tokens_ : lm_head_;
  }
  KvCache make_cache(int64_t batch, int64_t capacity) const override;
  const LlamaConfig& config() const { return config_; }

 private:
  LlamaModel() = default;
  void finish_init();
  /// One block from the residual stream h and its input norm (`normed`; undefined: computed
  /// here). Returns the new stream and, with fuse_next_norm, the next RMS norm of it (the next
  /// block's input norm, or the final norm after the last block) from the same pass as the MLP's
  /// residual add.
  ResidualAndNorm block_forward(int64_t layer, const Tensor& h, const Tensor& normed,
                                const Tensor& cos, const Tensor& sin, const AttentionMask& mask,
                                KvCache* cache, const ForwardOptions& options,
                                bool fuse_next_norm) const;

  LlamaConfig config_;
  ModelInfo info_;
  Device device_;
  std::vector<float> inv_freq_;
  Tensor embed_tokens_, final_norm_, lm_head_;
  std::vector<LlamaBlock> blocks_;
};

}  // namespace sp
