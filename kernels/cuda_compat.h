// kernels/cuda_compat.h: the one include of every kernel .cuh and CUDA host .cu file. Defines
// SP_CUDA_NS, SP_LAUNCH and SP_DYNAMIC_SHARED for nvcc (real CUDA) and g++ (kernels/emu).
#pragma once

#if defined(__CUDACC__)

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

// Kernels and CUDA host code live in namespace sp::SP_CUDA_NS, so the nvcc-built flavour and the
// g++-built emulated flavour can link into one binary without clashing.
#define SP_CUDA_NS cuda_real
#define SP_CUDA_EMU 0

// SP_LAUNCH(grid, block, smem_bytes, stream, kernel...)(args...): the kernel is variadic so
// template ids with commas (my_kernel<float, 4>) pass through unparenthesised.
#define SP_LAUNCH(grid, block, smem_bytes, stream, ...) \
  __VA_ARGS__<<<(grid), (block), (smem_bytes), (stream)>>>

// SP_DYNAMIC_SHARED(T, name): T* name at the block's dynamic shared memory. Every kernel declares
// the same unsigned char array, so kernels of different element types can share a translation
// unit (differently typed extern __shared__ arrays of one name do not compile).
// 128-byte alignment: wmma tiles need 32-byte aligned shared addresses.
#define SP_DYNAMIC_SHARED(T, name)                                            \
  extern __shared__ __align__(128) unsigned char sp_dynamic_shared_memory_[]; \
  T* name = reinterpret_cast<T*>(sp_dynamic_shared_memory_)

#else

#include "kernels/emu/cublaslt_emu.h"
#include "kernels/emu/cuda_graph_emu.h"
#include "kernels/emu/cuda_runtime_emu.h"
#include "kernels/emu/emu.h"
#include "kernels/emu/wmma.h"

#define SP_CUDA_NS cuda_emu

#endif

// Kernels name the warp matrix API `wmma`, as CUDA code usually does: nvcuda::wmma under nvcc,
// kernels/emu/wmma.h under g++.
namespace sp::SP_CUDA_NS {
#if defined(__CUDACC__)
namespace wmma = ::nvcuda::wmma;
#else
namespace wmma = ::sp::emu::wmma;
#endif
}  // namespace sp::SP_CUDA_NS
