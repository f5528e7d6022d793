// Opens a Hugging Face model directory by its config.json model_type: GPT-2 as a CausalLM, T5 as
// a Seq2SeqLM. Unsupported types give one error listing the supported ones.
#pragma once

#include <memory>
#include <string>

#include "engine/device.h"
#include "engine/dtype.h"
#include "models/causal_lm.h"
#include "models/seq2seq_lm.h"

namespace sp {

/// "gpt2", "t5", ... read from <dir>/config.json (errors name the file).
std::string read_model_type(const std::string& model_dir);

/// A decoder-only model (GPT-2) from a Hugging Face directory, weights converted to `dtype` on
/// `device`; errors name the file and what is unsupported (e.g. a T5 directory).
std::unique_ptr<CausalLM> load_causal_lm(const std::string& model_dir,
                                         Device device = Device::cpu(), DType dtype = DType::F32);

/// An encoder-decoder model (T5) from a Hugging Face directory, as load_causal_lm() does.
std::unique_ptr<Seq2SeqLM> load_seq2seq_lm(const std::string& model_dir,
                                           Device device = Device::cpu(), DType dtype = DType::F32);

}  // namespace sp
