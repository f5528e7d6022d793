// Seq2SeqLM: what the PEFT layer and the generator need from an encoder-decoder model (T5): the
// shared word embeddings, encoder and decoder forwards from embeddings, the LM head, and caches.
#pragma once

#include <cstdint>

#include "engine/tensor.h"
#include "models/causal_lm.h"
#include "models/kv_cache.h"

namespace sp {

/// Decoder state for incremental decoding. Self-attention keys/values grow by the positions each
/// decode() call adds; cross-attention keys/values depend only on the encoder output, so the
/// first decode() fills them for every layer and later calls reuse them unchanged.
struct Seq2SeqCache {
  KvCache self_attention;   ///< per decoder layer [B, capacity, H, D]
  KvCache cross_attention;  ///< per decoder layer [B, encoder_length, H, D]
  bool cross_filled = false;

  int64_t length() const { return self_attention.length; }  ///< decoder positions seen so far
};

/// A frozen encoder-decoder language model (T5). load_seq2seq_lm() returns one for a Hugging
/// Face directory; PeftModel wraps it to prepend soft prompts to the encoder input.
class Seq2SeqLM {
 public:
  virtual ~Seq2SeqLM() = default;
  virtual const ModelInfo& info() const = 0;
  virtual Device device() const = 0;
  /// The frozen [V, d] table shared by the encoder and decoder inputs (prompt inits copy rows).
  virtual Tensor word_embeddings() const = 0;
  /// Token embeddings: the inputs_embeds transformers builds from ids (T5 does not scale them).
  Tensor embed(const Tensor& ids) const;
  /// The token the decoder starts from (T5: config decoder_start_token_id, 0 by default).
  virtual int64_t decoder_start_token_id() const = 0;

  /// Encoder output [B, S, d] after the final layer norm (and its dropout in train mode).
  /// attention_mask: optional [B, S] (1 keep, 0 pad; F32 or integer).
  virtual Tensor encode(const Tensor& inputs_embeds, const Tensor& attention_mask,
                        const ForwardOptions& options) = 0;
  /// Decoder output [B, T, d] after the final layer norm, before any LM-head scaling.
  /// encoder_mask: optional [B, S] over encoder_hidden's positions. decoder_attention_mask:
  /// optional [B, past + T]. cache: optional; its self-attention part is appended to and its
  /// cross-attention part is filled on first use (afterwards encoder_hidden is not read again).
  virtual Tensor decode(const Tensor& decoder_inputs_embeds, const Tensor& encoder_hidden,
                        const Tensor& encoder_mask, const Tensor& decoder_attention_mask,
                        Seq2SeqCache* cache, const ForwardOptions& options) = 0;
  /// Logits [..., V] for decoder states [..., d]; applies the model's output scaling (T5 with
  /// scale_decoder_outputs multiplies by d_model^-0.5 first). Compute them only where needed.
  virtual Tensor logits(const Tensor& decoder_hidden) const = 0;
  /// The LM head as a [V, d] matrix and the factor applied to decoder states before it:
  /// logits = (decoder_hidden * output_scale()) @ output_embeddings()^T (for fused losses).
  virtual Tensor output_embeddings() const = 0;
  virtual float output_scale() const = 0;
  /// Decoder inputs for teacher forcing: [start] + labels[:, :-1], -100 replaced by the pad id
  /// (transformers' _shift_right). labels I64 [B, T] -> I64 [B, T].
  Tensor shift_right(const Tensor& labels) const;
  /// capacity: decoder positions the cache can hold; encoder_length: S of the encoder output.
  virtual Seq2SeqCache make_cache(int64_t batch, int64_t capacity,
                                  int64_t encoder_length) const = 0;
};

}  // namespace sp
