// kernels/emu/blas_internal.h: what the emulated cuBLAS (cuda_runtime_emu.cpp) shares with the
// emulated cuBLASLt (cublaslt_emu.cpp): element access, device-range checks, the fp32 product.
#pragma once

#include <cstddef>
#include <string>

#include "kernels/emu/cuda_runtime_emu.h"

namespace sp::emu::blas {

using cuda_emu::cublasComputeType_t;
using cuda_emu::cublasOperation_t;
using cuda_emu::cublasStatus_t;
using cuda_emu::cudaDataType;

// The compute types emulated: the 32F family (fp32 accumulation, inputs rounded as the type says).
bool is_32f_compute(cublasComputeType_t compute);
// Bytes per element of a 32F, 16F or 16BF type; 0 for any other.
std::size_t element_size(cudaDataType type);
float load_element(cudaDataType type, const void* base, std::size_t index);
void store_element(cudaDataType type, void* base, std::size_t index, float value);
// "" when [p, p + bytes) lies inside one live device allocation, else why not (naming `role`).
std::string device_range_problem(const void* p, std::size_t bytes, const char* role);
// Lands the pending page-locked copies (the stream's earlier work) and counts one GEMM call.
void begin_gemm();
// Records why the calling thread's cuBLAS call failed (emu::last_error_detail) and returns status.
cublasStatus_t fail(cublasStatus_t status, std::string detail);
// out = op(A) op(B) in fp32 (m x n, column-major, leading dimension m). A and B are `type`, read
// with their leading dimensions and rounded first as `compute` asks (TF32 for FAST_TF32 on fp32
// operands, ...). k may be 0 (out is zeroed). The caller has checked sizes and ranges.
void product_fp32(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                  const void* A, int lda, const void* B, int ldb, cudaDataType type,
                  cublasComputeType_t compute, float* out);

}  // namespace sp::emu::blas
