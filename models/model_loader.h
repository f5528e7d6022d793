// Opens a Hugging Face model directory by its config.json model_type: GPT-2 as a CausalLM
// (T5 lives in models/t5.h). Unsupported types give one error listing the supported ones.
#pragma once

#include <memory>
#include <string>

#include "engine/device.h"
#include "engine/dtype.h"
#include "models/causal_lm.h"

namespace sp {

// "gpt2", "t5", ... read from <dir>/config.json (errors name the file).
std::string read_model_type(const std::string& model_dir);

std::unique_ptr<CausalLM> load_causal_lm(const std::string& model_dir,
                                         Device device = Device::cpu(), DType dtype = DType::F32);

}  // namespace sp
