// The CPU's fp32 GEMM on each library it can use (OpenBLAS, oneDNN, Eigen) against a double
// reference, and the policy that picks the default library for this CPU.
#include <cblas.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "tests/engine/gemm_reference.h"
#include "tests/test_util.h"

namespace sp {
namespace {

using testing::expect_all_close;
using testing::reference_gemm;

std::vector<float> uniform_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> out(n);
  for (float& v : out) v = uniform(rng);
  return out;
}

class CpuGemm : public ::testing::TestWithParam<CpuBackend::GemmLibrary> {
 protected:
  void SetUp() override {
    saved_ = CpuBackend::gemm_library();
    CpuBackend::set_gemm_library(GetParam());
  }
  void TearDown() override { CpuBackend::set_gemm_library(saved_); }
  CpuBackend::GemmLibrary saved_{};
};

// Every layout, alpha and beta, padded leading dimensions, and shapes that are split into
// thread-pool panels (m * n * k >= 2^18) as well as ones that are not.
TEST_P(CpuGemm, MatchesDoubleReferenceForEveryLayout) {
  struct Shape3 {
    int64_t m, n, k;
  };
  for (Shape3 s : {Shape3{5, 7, 3}, Shape3{130, 300, 70}, Shape3{300, 90, 40}, Shape3{2, 257, 96}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 0.5f}) {
          const int64_t a_rows = ta ? s.k : s.m, a_cols = ta ? s.m : s.k;
          const int64_t b_rows = tb ? s.n : s.k, b_cols = tb ? s.k : s.n;
          const int64_t lda = a_cols + 3, ldb = b_cols + 1, ldc = s.n + 2;
          std::vector<float> a = uniform_values(size_t(a_rows * lda), 1);
          std::vector<float> b = uniform_values(size_t(b_rows * ldb), 2);
          std::vector<float> c = uniform_values(size_t(s.m * ldc), 3);
          std::vector<float> got = c;
          cpu_sgemm(ta, tb, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb, beta, got.data(),
                    ldc, false);
          std::vector<float> want =
              reference_gemm(ta, tb, s.m, s.n, s.k, 0.75f, a, lda, b, ldb, beta, c, ldc);
          // fp32 products and sums: |error| <= k * 2^-23 * sum|a||b| (+ one rounding of beta c),
          // under 1e-5 * k for |a|, |b| <= 1; a wrong layout or stride is off by O(1).
          char label[96];
          std::snprintf(label, sizeof label, "m%lld n%lld ta%d tb%d beta%g", (long long)s.m,
                        (long long)s.n, int(ta), int(tb), double(beta));
          expect_all_close(want, got, 1e-5f * float(s.k), label);
        }
}

INSTANTIATE_TEST_SUITE_P(Libraries, CpuGemm,
                         ::testing::Values(CpuBackend::GemmLibrary::kOpenBlas,
                                           CpuBackend::GemmLibrary::kOneDnn,
                                           CpuBackend::GemmLibrary::kEigen),
                         [](const auto& info) {
                           switch (info.param) {
                             case CpuBackend::GemmLibrary::kOpenBlas:
                               return "OpenBlas";
                             case CpuBackend::GemmLibrary::kOneDnn:
                               return "OneDnn";
                             case CpuBackend::GemmLibrary::kEigen:
                               return "Eigen";
                           }
                           return "Unknown";
                         });

// OpenBLAS chooses kernels by CPU model and runs its generic SSE3 ("Prescott") ones on models
// newer than its table; then, and only then, oneDNN (which chooses by instruction set) serves.
TEST(CpuGemmPolicy, OneDnnServesOnlyWhereOpenBlasRunsGenericKernels) {
  EXPECT_TRUE(CpuBackend::openblas_runs_generic_kernels("Prescott", true));
  EXPECT_TRUE(CpuBackend::openblas_runs_generic_kernels("Nehalem", true));
  EXPECT_TRUE(CpuBackend::openblas_runs_generic_kernels("Sandybridge", true));
  EXPECT_FALSE(CpuBackend::openblas_runs_generic_kernels("Prescott", false));  // an old CPU
  for (const char* core : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"})
    EXPECT_FALSE(CpuBackend::openblas_runs_generic_kernels(core, true)) << core;
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  EXPECT_EQ(CpuBackend::default_gemm_library() == CpuBackend::GemmLibrary::kOneDnn,
            CpuBackend::openblas_runs_generic_kernels(openblas_get_corename(), avx2))
      << "OpenBLAS core " << openblas_get_corename();
  EXPECT_NE(CpuBackend::gemm_description().find(openblas_get_corename()), std::string::npos)
      << CpuBackend::gemm_description();
}

}  // namespace
}  // namespace sp
