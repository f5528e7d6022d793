// engine/cuda/cuda_check.h: turns failed CUDA runtime and cuBLAS calls into sp::Error naming the
// backend op and the call, in both flavours (nvcc and kernels/emu).
#pragma once

#include <atomic>
#include <cstdlib>

#include "engine/env_switch.h"
#include "engine/error.h"
#include "kernels/cuda_compat.h"

namespace sp::SP_CUDA_NS {

inline void check_cuda(cudaError_t status, const char* op, const char* call) {
  if (status == cudaSuccess) return;
  // A failed call leaves a sticky last error behind; clear it so the next check is about itself.
  (void)cudaGetLastError();
  // Running out of device memory is a limit of the machine, not a softprompt bug.
  fail(status == cudaErrorMemoryAllocation ? ErrorKind::kUnsupported : ErrorKind::kInternal, op,
       ": ", call, " failed: ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")");
}

inline void check_cublas(cublasStatus_t status, const char* op, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail(ErrorKind::kInternal, op, ": ", call, " failed: ", cublasGetStatusName(status), " (",
       cublasGetStatusString(status), ")");
}

// SOFTPROMPT_CUDA_SYNC=1 (or true): every launch is followed by a device synchronisation, so a
// fault inside a kernel is reported against that kernel rather than at the next synchronising
// call. Slow; for diagnosis (scripts/gpu_check.sh runs the suite with it). Read once.
inline bool sync_requested(const char* env_value) {
  return env_switch(env_value).value_or(false);
}
inline std::atomic<bool>& sync_after_every_launch() {
  static std::atomic<bool> on{sync_requested(std::getenv("SOFTPROMPT_CUDA_SYNC"))};
  return on;
}

inline void check_launch(const char* op, const char* launch, const char* run) {
  check_cuda(cudaGetLastError(), op, launch);
  if (sync_after_every_launch().load(std::memory_order_relaxed))
    check_cuda(cudaDeviceSynchronize(), op, run);
}

}  // namespace sp::SP_CUDA_NS

// SP_CUDA_CHECK(op, call): runs a CUDA runtime call and throws sp::Error naming op and call.
#define SP_CUDA_CHECK(op, call) ::sp::SP_CUDA_NS::check_cuda((call), (op), #call)
// SP_CUBLAS_CHECK(op, call): the same for cuBLAS.
#define SP_CUBLAS_CHECK(op, call) ::sp::SP_CUDA_NS::check_cublas((call), (op), #call)
// SP_CUDA_CHECK_LAUNCH(backend, op, kernel[, traffic]): counts the launch that just happened, and
// its KernelTraffic, in the backend's stats and checks it (bad configurations surface here; faults
// inside the kernel at the next synchronising call, or here with SOFTPROMPT_CUDA_SYNC=1).
#define SP_CUDA_CHECK_LAUNCH(backend, op, kernel, ...)                     \
  do {                                                                     \
    (backend).note_launch(kernel __VA_OPT__(, ) __VA_ARGS__);              \
    ::sp::SP_CUDA_NS::check_launch((op), "launch of " kernel,              \
                                   kernel " (synchronised after launch)"); \
  } while (0)
