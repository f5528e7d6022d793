// kernels/emu/cublaslt_emu.h: the emulated subset of cuBLASLt in sp::cuda_emu: one column-major
// matmul with the bias, ReLU and GELU epilogues (GELU's input saved for the DGELU backward).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/emu/cuda_runtime_emu.h"

namespace sp::cuda_emu {

struct cublasLtContext;
using cublasLtHandle_t = cublasLtContext*;
struct cublasLtMatmulDescOpaque_t;
using cublasLtMatmulDesc_t = cublasLtMatmulDescOpaque_t*;
struct cublasLtMatrixLayoutOpaque_t;
using cublasLtMatrixLayout_t = cublasLtMatrixLayoutOpaque_t*;
struct cublasLtMatmulPreferenceOpaque_t;
using cublasLtMatmulPreference_t = cublasLtMatmulPreferenceOpaque_t*;

struct cublasLtMatmulAlgo_t {
  std::uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  std::size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};

// Attribute numbers as in cublasLt.h; only these are emulated (others:
// CUBLAS_STATUS_NOT_SUPPORTED).
enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,           // int32 cublasComputeType_t
  CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,             // int32 cudaDataType
  CUBLASLT_MATMUL_DESC_TRANSA = 3,                 // int32 cublasOperation_t
  CUBLASLT_MATMUL_DESC_TRANSB = 4,                 // int32 cublasOperation_t
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,               // uint32 cublasLtEpilogue_t
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,           // const void*
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,  // void*
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,       // int64
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,        // int32 cudaDataType
};
enum cublasLtMatrixLayoutAttribute_t {
  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,  // int32; only 1 is emulated
};
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,    // uint64
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,  // uint32, default 256
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};
enum cublasLtEpilogue_t : std::uint32_t {
  CUBLASLT_EPILOGUE_DEFAULT = 1,
  CUBLASLT_EPILOGUE_RELU = 2,
  CUBLASLT_EPILOGUE_BIAS = 4,
  CUBLASLT_EPILOGUE_RELU_BIAS = 2 | 4,
  CUBLASLT_EPILOGUE_GELU = 32,
  CUBLASLT_EPILOGUE_GELU_AUX = 32 | 128,
  CUBLASLT_EPILOGUE_GELU_BIAS = 32 | 4,
  CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 32 | 128 | 4,
  CUBLASLT_EPILOGUE_DGELU = 64 | 128,
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType scale_type);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              std::size_t size);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          std::uint64_t rows, std::uint64_t cols, std::int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout,
                                                cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, std::size_t size);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, std::size_t size);
// Offers one algorithm when the emulated library supports the problem, none otherwise (then
// CUBLAS_STATUS_NOT_SUPPORTED with *returned = 0, as the real library answers): A and B of one
// type, C and D of that type, 32F-family compute, an emulated epilogue, a bias and an aux buffer
// aligned to 16 bytes, an aux leading dimension divisible by 8 and >= D's rows, and minimum
// alignments of A, B, C and D (the preference's, 256 bytes unless set) of at least 16 bytes. The
// algorithm assumes those alignments: cublasLtMatmul refuses less aligned matrices
// (CUBLAS_STATUS_INVALID_VALUE), so a caller must declare what it passes.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned);
// D = epilogue(alpha op(A) op(B) + beta C [+ bias]) with fp32 accumulation; the epilogue runs on
// the fp32 value and each output is rounded once to its type (D; the GELU input to the aux type,
// D's). GELU is the tanh form; RELU is max(v, 0) (its AUX forms, a bit mask, are not emulated).
// DGELU: D = (alpha op(A) op(B) + beta C) * GELU'(aux).
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t a_layout, const void* B,
                              cublasLtMatrixLayout_t b_layout, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c_layout, void* D,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo,
                              void* workspace, std::size_t workspace_bytes, cudaStream_t stream);

}  // namespace sp::cuda_emu

namespace sp::emu {

// Test hook: the next cublasLtMatmul returns `status` without computing anything, as a library
// that refuses a problem its heuristic offered an algorithm for would (or one that fails).
void fail_next_lt_matmul(cuda_emu::cublasStatus_t status);

}  // namespace sp::emu
