// CudaBackend GEMM through cuBLAS. GemmArgs are row-major; cuBLAS is column-major, and a
// row-major matrix is the column-major view of its transpose, so C = op(A) op(B) is computed as
// C^T = op(B)^T op(A)^T: the operands swap places and m and n swap roles.
#include <algorithm>
#include <climits>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "kernels/elementwise.cuh"

namespace sp::SP_CUDA_NS {

namespace {

int to_int(const char* op, const char* what, int64_t value) {
  SP_CHECK(value >= 0 && value <= INT_MAX, op, ": ", what, " = ", value,
           " exceeds cuBLAS's 32-bit limit");
  return int(value);
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
  const bool bf16 = g.dtype == DType::BF16;
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
  const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType c_type = bf16_result ? CUDA_R_16BF : CUDA_R_32F;
  // fp32 accumulation always; TF32 tensor cores only for fp32 operands and only when allowed.
  const cublasComputeType_t compute =
      !bf16 && allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
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

}  // namespace sp::SP_CUDA_NS
