// GPT-2 (transformers' GPT2LMHeadModel semantics): config, frozen weights from a Hugging Face
// directory, forward from input embeddings with masks/positions/KV cache, and the LM head.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/ops/layernorm.h"
#include "models/causal_lm.h"
#include "models/hf_config.h"

namespace sp {

/// The fields of a GPT-2 config.json that the forward uses, with transformers' defaults.
struct Gpt2Config {
  int64_t n_embd = 768;
  int64_t n_head = 12;
  int64_t n_layer = 12;
  int64_t n_positions = 1024;
  int64_t n_inner = 3072;  ///< config's null means 4 * n_embd
  int64_t vocab_size = 50257;
  double layer_norm_epsilon = 1e-5;
  Activation activation = Activation::kGeluTanh;
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  bool tie_word_embeddings = true;
  float embd_pdrop = 0.1f, attn_pdrop = 0.1f, resid_pdrop = 0.1f;
  std::optional<int64_t> bos_token_id, eos_token_id, pad_token_id;

  /// Validates every field it reads; unsupported values name the field and what is supported.
  static Gpt2Config from_hf(const HfConfig& config);
};

/// One transformer block's frozen weights, in the checkpoint's Conv1D [in, out] layout.
struct Gpt2Block {
  Tensor ln1_weight, ln1_bias;
  Tensor attn_weight, attn_bias;            ///< c_attn, Conv1D [d, 3d]
  Tensor attn_proj_weight, attn_proj_bias;  ///< [d, d]
  Tensor ln2_weight, ln2_bias;
  Tensor fc_weight, fc_bias;              ///< [d, inner]
  Tensor mlp_proj_weight, mlp_proj_bias;  ///< [inner, d]
};

/// GPT2LMHeadModel with frozen weights; usually reached through load_causal_lm().
class Gpt2Model final : public CausalLM {
 public:
  /// Loads config.json and the safetensors weights of `model_dir`. Weights are converted to
  /// `dtype` (the CPU computes in F32) and placed on `device`.
  static std::unique_ptr<Gpt2Model> load(const std::string& model_dir,
                                         Device device = Device::cpu(), DType dtype = DType::F32);
  /// A model with random weights (benchmarks, tests): N(0, 0.02) matrices, unit layer norms;
  /// the matrices drawn in F32, then cast to `dtype` (as load() stores them).
  static std::unique_ptr<Gpt2Model> random(const Gpt2Config& config, uint64_t seed,
                                           Device device = Device::cpu(), DType dtype = DType::F32);

  const ModelInfo& info() const override { return info_; }
  Device device() const override { return device_; }
  Tensor word_embeddings() const override { return wte_; }
  Tensor hidden_states(const Tensor& inputs_embeds, const Tensor& attention_mask,
                       const Tensor& position_ids, KvCache* cache,
                       const ForwardOptions& options) override;
  Tensor logits(const Tensor& hidden) const override;
  Tensor output_embeddings() const override {
    return config_.tie_word_embeddings ? wte_ : lm_head_;
  }
  KvCache make_cache(int64_t batch, int64_t capacity) const override;
  const Gpt2Config& config() const { return config_; }

 private:
  Gpt2Model() = default;
  void finish_init();
  /// One block from the residual stream h and its ln_1 (`normed`; undefined: computed here).
  /// Returns the new stream and, with fuse_next_norm, the next LayerNorm of it (the next block's
  /// ln_1, or ln_f after the last block) from the same pass as the MLP's residual add.
  ResidualAndNorm block_forward(int64_t layer, const Tensor& h, const Tensor& normed,
                                const AttentionMask& mask, KvCache* cache,
                                const ForwardOptions& options, bool fuse_next_norm) const;
  /// One block over a batch-shared prefix [1, n, d] and the rest of every row [B, T - n, d]
  /// (no dropout): the rest attends to the prefix's keys and values. Returns {prefix, rest}.
  std::pair<Tensor, Tensor> shared_prefix_block_forward(int64_t layer, const Tensor& prefix,
                                                        const Tensor& rest,
                                                        const AttentionMask& mask) const;
  // The block's halves around attention: qkv = c_attn(normed) with normed = ln_1(h) (without
  // c_attn's bias where attention adds it), and once attention has produced o [B, T, d], the
  // output projection, both residuals and the MLP (and, with fuse_next_norm, the next norm).
  Tensor block_qkv(int64_t layer, const Tensor& normed, bool with_bias = true) const;
  ResidualAndNorm block_finish(int64_t layer, const Tensor& h, const Tensor& o,
                               const ForwardOptions& options, bool fuse_next_norm) const;
  Tensor ln_1(int64_t layer, const Tensor& h) const;
  AttentionMask layer_mask(int64_t layer, const AttentionMask& base) const;

  Gpt2Config config_;
  ModelInfo info_;
  Device device_;
  Tensor wte_, wpe_, lnf_weight_, lnf_bias_, lm_head_;
  std::vector<Gpt2Block> blocks_;
};

}  // namespace sp
