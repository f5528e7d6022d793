// What a GPU's compute capability decides: TF32 for fp32 GEMMs, native bf16 GEMMs (what --dtype
// auto picks bf16 for) and tensor-core bf16 attention (sm_80+); cuBLASLt GELU epilogues.
#pragma once

#include "engine/env_switch.h"

namespace sp {

// TF32 is on by default on real sm_80+ GPUs (an fp32 model then runs at tensor-core speed) and
// off under the emulator, whose fp32 results must equal the CPU reference bit for bit.
// SOFTPROMPT_CUDA_TF32 = 1/true or 0/false overrides the default either way.
inline bool tf32_by_default(int compute_major, bool emulated, const char* env_value) {
  return env_switch(env_value).value_or(!emulated && compute_major >= 8);
}

// bf16 tensor-core GEMMs with fp32 accumulation arrived with sm_80 (Ampere); older GPUs run
// bf16 GEMMs far slower than fp32, and the emulator has no bf16 hardware to gain from.
inline bool native_bf16_gemm_for(int compute_major, bool emulated) {
  return !emulated && compute_major >= 8;
}

// The bf16 tensor-core attention forward (wmma bf16) needs sm_80. The emulator runs it too, so
// that the kernel a GPU would run is the one the tests check. SOFTPROMPT_CUDA_TENSOR_CORE_ATTENTION
// = 1/true or 0/false overrides the default (1 is ignored below sm_80).
inline bool tensor_core_attention_by_default(int compute_major, bool emulated,
                                             const char* env_value) {
  const bool capable = emulated || compute_major >= 8;
  return capable && env_switch(env_value).value_or(true);
}

// cuBLASLt's bias + GELU epilogues (the feed-forward's first GEMM, and DGELU on the backward of
// its second) save two launches and about three [tokens, 4d] passes per GPT-2 layer. On by
// default, the emulator included (it emulates cuBLASLt, so the tests check the path a GPU takes);
// SOFTPROMPT_CUDA_GEMM_EPILOGUES = 0/false turns them off (no GPU has timed both yet).
inline bool gemm_epilogues_by_default(const char* env_value) {
  return env_switch(env_value).value_or(true);
}

}  // namespace sp
