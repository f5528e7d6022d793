// tf32_by_default: whether fp32 GEMMs start on TF32 tensor cores. On by default on real GPUs of
// compute capability 8.0+ (as the issue asks; an fp32 model then runs at tensor-core speed),
// off under the emulator, whose fp32 results must equal the CPU reference bit for bit.
#pragma once

#include <cstring>

namespace sp {

// SOFTPROMPT_CUDA_TF32 = 1/true or 0/false overrides the default either way.
inline bool tf32_by_default(int compute_major, bool emulated, const char* env_value) {
  if (env_value != nullptr) {
    if (std::strcmp(env_value, "1") == 0 || std::strcmp(env_value, "true") == 0) return true;
    if (std::strcmp(env_value, "0") == 0 || std::strcmp(env_value, "false") == 0) return false;
  }
  return !emulated && compute_major >= 8;
}

}  // namespace sp
