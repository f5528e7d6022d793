// CudaBackend GEMM through cuBLAS. GemmArgs are row-major; cuBLAS is column-major, and a
// row-major matrix is the column-major view of its transpose, so C = op(A) op(B) is computed as
// C^T = op(B)^T op(A)^T: the operands swap places and m and n swap roles.
#include <algorithm>
#include <climits>
#include <utility>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "engine/cuda/workspace.h"
#include "kernels/elementwise.cuh"

namespace sp::SP_CUDA_NS {

namespace {

int to_int(const char* op, const char* what, int64_t value) {
  SP_CHECK(value >= 0 && value <= INT_MAX, op, ": ", what, " = ", value,
           " exceeds cuBLAS's 32-bit limit");
  return int(value);
}

// cuBLASLt's scratch for the epilogue GEMMs (from the caching allocator, so reused).
constexpr size_t kCublasLtWorkspaceBytes = size_t(4) << 20;

// The descriptors of one cuBLASLt matmul, destroyed on every exit path.
struct LtMatmul {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  ~LtMatmul() {
    if (preference) (void)cublasLtMatmulPreferenceDestroy(preference);
    for (cublasLtMatrixLayout_t layout : {a, b, d})
      if (layout) (void)cublasLtMatrixLayoutDestroy(layout);
    if (desc) (void)cublasLtMatmulDescDestroy(desc);
  }
};

// The cuBLAS type of an F32 or BF16 matrix.
cudaDataType cuda_type(DType dtype) {
  return dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

// fp32 accumulation always; TF32 tensor cores only for fp32 operands and only when allowed.
cublasComputeType_t compute_type(DType operands, bool allow_tf32) {
  return operands == DType::F32 && allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

// Whether a GEMM may take a fused epilogue: one F32 or BF16 GEMM, a result of the operands' dtype,
// nothing to accumulate, cuBLASLt's 16-byte alignment and (for the aux matrix) a row stride of 8
// elements.
bool epilogue_fits(const GemmArgs& g, const void* bias, const void* aux) {
  return (g.dtype == DType::F32 || g.dtype == DType::BF16) && g.batch == 1 && g.k > 0 && g.m > 0 &&
         g.n > 0 && g.c_dtype == g.dtype && g.beta == 0.0f && (aux == nullptr || g.ldc % 8 == 0) &&
         aligned16({g.a, g.b, g.c, bias, aux}) &&
         std::max({g.m, g.n, g.k, g.lda, g.ldb, g.ldc}) <= INT_MAX;
}

// The alignment of p in bytes, up to the 256 cuBLASLt's heuristic assumes unless told less: the
// algorithm it picks may rely on it.
uint32_t alignment_of(const void* p) {
  uint32_t alignment = 256;
  while (alignment > 1 && reinterpret_cast<uintptr_t>(p) % alignment != 0) alignment /= 2;
  return alignment;
}

}  // namespace

void CudaBackend::gemm(const GemmArgs& g) {
  const char* op = "gemm";
  SP_CHECK(g.dtype == DType::F32 || g.dtype == DType::BF16, op,
           ": the CUDA backend multiplies F32 or BF16 matrices, got ", dtype_name(g.dtype));
  SP_CHECK(g.c_dtype == g.dtype || g.c_dtype == DType::F32, op, ": a ", dtype_name(g.dtype),
           " GEMM writes a ", dtype_name(g.dtype), " or F32 result, got ", dtype_name(g.c_dtype));
  count_gemm(g);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  activate(op);
  const bool bf16_result = g.c_dtype == DType::BF16;
  if (g.k == 0) {  // C = beta * C; not every BLAS accepts an empty inner dimension
    const int threads = 256;
    auto launch = [&](auto tag) {
      using T = typename decltype(tag)::type;
      SP_LAUNCH(grid_for(g.batch * g.m * g.n, threads), threads, 0, stream_,
                scale_matrices_kernel<T>)
      (static_cast<T*>(g.c), g.batch, g.m, g.n, g.ldc, g.stride_c, g.beta);
      SP_CUDA_CHECK_LAUNCH(*this, op, "scale_matrices_kernel",
                           KernelTraffic{double(g.batch * g.m * g.n),
                                         2.0 * double(g.batch * g.m * g.n * int64_t(sizeof(T)))});
    };
    if (bf16_result)
      launch(TypeTag<__nv_bfloat16>{});
    else
      launch(TypeTag<float>{});
    return;
  }
  // Leading dimensions of a single stored row are irrelevant but must still satisfy cuBLAS.
  const int64_t lda = std::max<int64_t>({g.lda, g.trans_a ? g.m : g.k, 1});
  const int64_t ldb = std::max<int64_t>({g.ldb, g.trans_b ? g.k : g.n, 1});
  const int64_t ldc = std::max<int64_t>({g.ldc, g.n, 1});
  const int m = to_int(op, "n", g.n), n = to_int(op, "m", g.m), k = to_int(op, "k", g.k);
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType type = cuda_type(g.dtype), c_type = cuda_type(g.c_dtype);
  const cublasComputeType_t compute = compute_type(g.dtype, allow_tf32());
  if (g.batch == 1) {
    SP_CUBLAS_CHECK(
        op, cublasGemmEx(cublas_, op_first, op_second, m, n, k, &g.alpha, g.b, type,
                         to_int(op, "ldb", ldb), g.a, type, to_int(op, "lda", lda), &g.beta, g.c,
                         c_type, to_int(op, "ldc", ldc), compute, CUBLAS_GEMM_DEFAULT));
    return;
  }
  SP_CUBLAS_CHECK(op, cublasGemmStridedBatchedEx(
                          cublas_, op_first, op_second, m, n, k, &g.alpha, g.b, type,
                          to_int(op, "ldb", ldb), g.stride_b, g.a, type, to_int(op, "lda", lda),
                          g.stride_a, &g.beta, g.c, c_type, to_int(op, "ldc", ldc), g.stride_c,
                          to_int(op, "batch", g.batch), compute, CUBLAS_GEMM_DEFAULT));
}

bool CudaBackend::gemm_with_epilogue(const char* op, const GemmArgs& g, unsigned epilogue,
                                     const void* bias, const void* aux) {
  activate(op);
  const cudaDataType type = cuda_type(g.dtype);
  const cublasComputeType_t compute = compute_type(g.dtype, allow_tf32());
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T (see gemm above): cuBLASLt's
  // A is our B, its B our A, and its D (n rows, m columns) our C. The bias runs along D's rows.
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  LtMatmul lt;
  SP_CUBLAS_CHECK(op, cublasLtMatmulDescCreate(&lt.desc, compute, CUDA_R_32F));
  SP_CUBLAS_CHECK(op, cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                     &op_first, sizeof(op_first)));
  SP_CUBLAS_CHECK(op, cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                     &op_second, sizeof(op_second)));
  const uint32_t epilogue_value = epilogue;
  SP_CUBLAS_CHECK(op, cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                     &epilogue_value, sizeof(epilogue_value)));
  if (bias) {
    SP_CUBLAS_CHECK(op, cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof(bias)));
  }
  if (aux) {
    const int64_t aux_ld = g.ldc;
    SP_CUBLAS_CHECK(op, cublasLtMatmulDescSetAttribute(
                            lt.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    SP_CUBLAS_CHECK(
        op, cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld,
                                           sizeof(aux_ld)));
  }
  const uint64_t m = uint64_t(g.m), n = uint64_t(g.n), k = uint64_t(g.k);
  SP_CUBLAS_CHECK(op, cublasLtMatrixLayoutCreate(&lt.a, type, g.trans_b ? k : n, g.trans_b ? n : k,
                                                 std::max<int64_t>(g.ldb, 1)));
  SP_CUBLAS_CHECK(op, cublasLtMatrixLayoutCreate(&lt.b, type, g.trans_a ? m : k, g.trans_a ? k : m,
                                                 std::max<int64_t>(g.lda, 1)));
  SP_CUBLAS_CHECK(op, cublasLtMatrixLayoutCreate(&lt.d, type, n, m, g.ldc));
  const uint64_t workspace_bytes = kCublasLtWorkspaceBytes;
  SP_CUBLAS_CHECK(op, cublasLtMatmulPreferenceCreate(&lt.preference));
  SP_CUBLAS_CHECK(op, cublasLtMatmulPreferenceSetAttribute(
                          lt.preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                          sizeof(workspace_bytes)));
  // cuBLASLt's A, B, C and D: our B, A, C and C.
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const void*> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, g.b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, g.a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, g.c},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, g.c}};
  for (const auto& [attribute, pointer] : alignments) {
    const uint32_t alignment = alignment_of(pointer);
    SP_CUBLAS_CHECK(op, cublasLtMatmulPreferenceSetAttribute(lt.preference, attribute, &alignment,
                                                             sizeof(alignment)));
  }
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  const cublasStatus_t searched = cublasLtMatmulAlgoGetHeuristic(
      cublaslt_, lt.desc, lt.a, lt.b, lt.d, lt.d, lt.preference, 1, &heuristic, &found);
  if (searched != CUBLAS_STATUS_SUCCESS || found == 0) return false;  // the caller unfuses
  Workspace workspace(*this, kCublasLtWorkspaceBytes);
  const cublasStatus_t ran =
      cublasLtMatmul(cublaslt_, lt.desc, &g.alpha, g.b, lt.a, g.a, lt.b, &g.beta, g.c, lt.d, g.c,
                     lt.d, &heuristic.algo, workspace.as<void>(), kCublasLtWorkspaceBytes, stream_);
  // A refusal is found before anything runs: the caller unfuses. Any other failure is an error.
  if (ran == CUBLAS_STATUS_NOT_SUPPORTED || ran == CUBLAS_STATUS_INVALID_VALUE) return false;
  check_cublas(ran, op, "cublasLtMatmul");
  const double element = double(dtype_size(g.dtype));
  count_gemm(g, element * ((bias ? double(g.n) : 0.0) + (aux ? double(g.m) * double(g.n) : 0.0)));
  return true;
}

bool CudaBackend::gemm_bias_activation(const GemmArgs& g, Activation act, const void* bias,
                                       void* pre) {
  // cuBLASLt's GELU is the tanh form (gelu_new). Its ReLU saves a bit mask, which the backward
  // would need a DRELU for: ReLU is fused only where nothing is saved (inference). Other
  // activations run unfused.
  const bool gelu = act == Activation::kGeluTanh;
  const bool relu = act == Activation::kRelu && pre == nullptr;
  if (!gemm_epilogues() || !(gelu || relu) || !epilogue_fits(g, bias, pre)) return false;
  unsigned epilogue = relu  ? CUBLASLT_EPILOGUE_RELU
                      : pre ? CUBLASLT_EPILOGUE_GELU_AUX
                            : CUBLASLT_EPILOGUE_GELU;
  if (bias) epilogue |= CUBLASLT_EPILOGUE_BIAS;
  return gemm_with_epilogue("gemm_bias_activation", g, epilogue, bias, pre);
}

bool CudaBackend::gemm_activation_backward(const GemmArgs& g, Activation act, const void* pre) {
  if (pre == nullptr || !gemm_epilogues() || act != Activation::kGeluTanh ||
      !epilogue_fits(g, nullptr, pre))
    return false;
  return gemm_with_epilogue("gemm_activation_backward", g, CUBLASLT_EPILOGUE_DGELU, nullptr, pre);
}

}  // namespace sp::SP_CUDA_NS
