// The model layer's public API: Hugging Face GPT-2, Llama-family and T5 directories as frozen
// CausalLM / Seq2SeqLM models, their tokenizers, generation, and the LM losses on selected rows.
#pragma once

#include "models/causal_lm.h"         // CausalLM, ModelInfo, ForwardOptions
#include "models/generate.h"          // generate(), GenerationConfig
#include "models/generate_seq2seq.h"  // generate_seq2seq()
#include "models/gpt2.h"              // Gpt2Model, Gpt2Config
#include "models/hf_config.h"         // HfConfig: typed config.json access
#include "models/kv_cache.h"          // KvCache
#include "models/llama.h"             // LlamaModel, LlamaConfig (Llama, Mistral, Qwen2)
#include "models/lm_loss.h"           // causal_lm_loss, seq2seq_lm_loss, select_targets
#include "models/model_loader.h"      // load_causal_lm(), load_seq2seq_lm(), read_model_type()
#include "models/seq2seq_lm.h"        // Seq2SeqLM, Seq2SeqCache
#include "models/t5.h"                // T5Model, T5Config
#include "models/tokenizer.h"         // Tokenizer, load_tokenizer()
