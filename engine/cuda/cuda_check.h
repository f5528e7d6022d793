// engine/cuda/cuda_check.h: turns failed CUDA runtime and cuBLAS calls into sp::Error naming the
// backend op and the call, in both flavours (nvcc and kernels/emu).
#pragma once

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

}  // namespace sp::SP_CUDA_NS

// SP_CUDA_CHECK(op, call): runs a CUDA runtime call and throws sp::Error naming op and call.
#define SP_CUDA_CHECK(op, call) ::sp::SP_CUDA_NS::check_cuda((call), (op), #call)
// SP_CUBLAS_CHECK(op, call): the same for cuBLAS.
#define SP_CUBLAS_CHECK(op, call) ::sp::SP_CUDA_NS::check_cublas((call), (op), #call)
// SP_CUDA_CHECK_LAUNCH(op, kernel): checks the launch that just happened (bad configurations
// surface here; faults inside the kernel surface at the next synchronising call).
#define SP_CUDA_CHECK_LAUNCH(op, kernel) \
  ::sp::SP_CUDA_NS::check_cuda(cudaGetLastError(), (op), "launch of " kernel)
