// PEFT adapter directories: adapter_config.json + adapter_model.safetensors, written atomically
// the way PEFT's save_pretrained writes them and read back with every defect named.
#pragma once

#include <map>
#include <string>

#include "engine/tensor.h"
#include "peft/config.h"
#include "peft/prompt_adapter.h"

namespace sp {

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";

/// Writes `dir` (created if needed): the config with inference_mode true and the F32 tensors
/// with metadata {"format": "pt"}. Each file is replaced atomically (temporary file, fsync,
/// rename, directory fsync), the config first, so no file is ever half-written.
void save_adapter(const std::string& dir, const PromptAdapter& adapter);
/// Removes the temporary files a save_adapter killed mid-write leaves in `dir`.
void remove_stale_adapter_temporaries(const std::string& dir);

/// The contents of an adapter directory: its config and named tensors.
struct AdapterFiles {
  std::string dir;
  PromptTuningConfig config;
  std::map<std::string, Tensor> tensors;
};

/// Reads an adapter directory written by PEFT or softprompt.
AdapterFiles read_adapter_files(const std::string& dir);

}  // namespace sp
