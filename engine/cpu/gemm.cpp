// CPU fp32 GEMM: OpenBLAS or oneDNN sgemm (single-threaded calls, split across softprompt's own
// pool) or Eigen, which also serves every one-row product; bf16 operands go to gemm_bf16.cpp.
#include <cblas.h>

#include <dnnl.h>
#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <string>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/gemm_panels.h"
#include "engine/cpu/onednn_thread.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

// OpenBLAS picks its kernels by CPU model; a model newer than its table gets the generic
// "Prescott" SSE3 kernels, at a fifth of the machine's speed. oneDNN picks by instruction set.
bool openblas_runs_below_this_cpu() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return CpuBackend::openblas_runs_generic_kernels(openblas_get_corename(), avx2);
}

std::atomic<CpuBackend::GemmLibrary> g_library{CpuBackend::default_gemm_library()};

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;
using Map = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;

void eigen_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  Map C(c, m, n, Eigen::OuterStride<>(ldc));
  ConstMap A(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
  ConstMap B(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
  if (beta == 0.0f)
    C.setZero();
  else if (beta != 1.0f)
    C *= beta;
  if (!trans_a && !trans_b) C.noalias() += alpha * A * B;
  if (!trans_a && trans_b) C.noalias() += alpha * A * B.transpose();
  if (trans_a && !trans_b) C.noalias() += alpha * A.transpose() * B;
  if (trans_a && trans_b) C.noalias() += alpha * A.transpose() * B.transpose();
}

void sgemm_one_thread(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta * C; BLAS rejects k == 0 leading dimensions
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  // BLAS requires ld >= stored columns even where a single stored row makes ld irrelevant.
  lda = std::max(lda, trans_a ? m : k);
  ldb = std::max(ldb, trans_b ? k : n);
  ldc = std::max(ldc, n);
  // One row (a decode step, attention over a KV cache): Eigen's GEMV streams B at memory speed,
  // OpenBLAS's sgemm packs it first (2-3x slower at M = 1; bench_ops gemm/*/M:1).
  if (m == 1 || g_library.load() == CpuBackend::GemmLibrary::kEigen) {
    eigen_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (g_library.load() == CpuBackend::GemmLibrary::kOneDnn) {
    cpu_detail::keep_onednn_on_this_thread();
    const cpu_detail::AsyncSignalsHeldBack signals_wait_for_the_kernel;
    const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k,
                                            alpha, a, lda, b, ldb, beta, c, ldc);
    SP_CHECK(status == dnnl_success, "gemm: oneDNN's sgemm failed with status ", int(status),
             " for m ", m, ", n ", n, ", k ", k);
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, int(m), int(n), int(k), alpha, a, int(lda), b,
              int(ldb), beta, c, int(ldc));
}

}  // namespace

void CpuBackend::set_gemm_library(GemmLibrary library) {
  g_library.store(library);
}
CpuBackend::GemmLibrary CpuBackend::gemm_library() {
  return g_library.load();
}
bool CpuBackend::openblas_runs_generic_kernels(const std::string& core, bool cpu_has_avx2_fma) {
  std::string name = core;
  for (char& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  // OpenBLAS's x86-64 cores with AVX2 kernels, as openblas_get_corename names them.
  for (const char* avx2_core : {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"})
    if (name == avx2_core) return false;
  return cpu_has_avx2_fma;
}

CpuBackend::GemmLibrary CpuBackend::default_gemm_library() {
  static const GemmLibrary library =
      openblas_runs_below_this_cpu() ? GemmLibrary::kOneDnn : GemmLibrary::kOpenBlas;
  return library;
}
std::string CpuBackend::gemm_description() {
  const std::string openblas = std::string("OpenBLAS ") + openblas_get_corename();
  switch (gemm_library()) {
    case GemmLibrary::kOpenBlas:
      return openblas;
    case GemmLibrary::kEigen:
      return "Eigen";
    case GemmLibrary::kOneDnn:  // the default only where OpenBLAS runs its generic kernels
      return default_gemm_library() == GemmLibrary::kOneDnn
                 ? "oneDNN sgemm (" + openblas + " would run its generic kernels on this CPU)"
                 : "oneDNN sgemm";
  }
  return "?";
}

void cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc, bool single_thread) {
  cpu_detail::split_gemm_into_panels(
      m, n, k, single_thread, [&](int64_t row0, int64_t row1, int64_t col0, int64_t col1) {
        const float* a_panel = trans_a ? a + row0 : a + row0 * lda;
        const float* b_panel = trans_b ? b + col0 * ldb : b + col0;
        sgemm_one_thread(trans_a, trans_b, row1 - row0, col1 - col0, k, alpha, a_panel, lda,
                         b_panel, ldb, beta, c + row0 * ldc + col0, ldc);
      });
}

void CpuBackend::gemm(const GemmArgs& g) {
  SP_CHECK(g.c_dtype == DType::F32, "gemm: the CPU backend writes GEMM results in F32, got a ",
           dtype_name(g.c_dtype), " result");
  SP_CHECK(g.dtype == DType::F32 || g.dtype == DType::BF16,
           "gemm: the CPU backend multiplies F32 or BF16 operands, got ", dtype_name(g.dtype));
  count_gemm(g);
  if (g.dtype == DType::BF16) {
    bf16_gemm(g);
    return;
  }
  const float* a = static_cast<const float*>(g.a);
  const float* b = static_cast<const float*>(g.b);
  float* c = static_cast<float*>(g.c);
  if (g.batch == 1) {
    cpu_sgemm(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, a, g.lda, b, g.ldb, g.beta, c, g.ldc,
              false);
    return;
  }
  if (g.batch >= num_threads()) {
    parallel_for(0, g.batch, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        sgemm_one_thread(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, a + i * g.stride_a, g.lda,
                         b + i * g.stride_b, g.ldb, g.beta, c + i * g.stride_c, g.ldc);
    });
    return;
  }
  for (int64_t i = 0; i < g.batch; ++i)
    cpu_sgemm(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, a + i * g.stride_a, g.lda,
              b + i * g.stride_b, g.ldb, g.beta, c + i * g.stride_c, g.ldc, false);
}

}  // namespace sp
