// The CPU's fp32 GEMM on each library it can use (OpenBLAS, oneDNN, Eigen) against a double
// reference, and the policy that picks the default library for this CPU.
#include <cblas.h>
#include <gtest/gtest.h>

#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "tests/engine/gemm_reference.h"
#include "tests/engine/gemm_signals.h"
#include "tests/test_util.h"

namespace sp {
namespace {

using testing::expect_all_close;
using testing::expect_products_survive_a_stream_of_signals;
using testing::for_each_gemm_case;
using testing::GemmCase;

class CpuGemm : public ::testing::TestWithParam<CpuBackend::GemmLibrary> {
 protected:
  void SetUp() override {
    saved_ = CpuBackend::gemm_library();
    CpuBackend::set_gemm_library(GetParam());
  }
  void TearDown() override { CpuBackend::set_gemm_library(saved_); }
  CpuBackend::GemmLibrary saved_{};
};

// Every layout, beta, padded leading dimensions, panel-split and unsplit shapes (a one-row
// product is Eigen's GEMV whatever the library).
TEST_P(CpuGemm, MatchesDoubleReferenceForEveryLayout) {
  for_each_gemm_case([](float v) { return v; },
                     [](const GemmCase& c) {
                       std::vector<float> got = c.c;
                       cpu_sgemm(c.trans_a, c.trans_b, c.m, c.n, c.k, 0.75f, c.a.data(), c.lda,
                                 c.b.data(), c.ldb, c.beta, got.data(), c.ldc, false);
                       // fp32 products and sums: |error| <= k * 2^-23 * sum|a||b| (+ one rounding
                       // of beta c), under 1e-5 * k for |a|, |b| <= 1; a wrong layout or stride is
                       // off by O(1).
                       expect_all_close(c.reference(), got, 1e-5f * float(c.k), c.label);
                     });
}

// A handled signal must not touch a GEMM's memory (the oneDNN sgemm bug gemm_signals.h
// describes). GPT-2-sized panels, the shapes that crashed training, on the calling thread, which
// is the one receiving the signals.
TEST_P(CpuGemm, SignalsHandledDuringAGemmLeaveItsResultAndTheHeapIntact) {
  const int64_t m = 64, n = 768, k = 768;
  std::vector<float> a(size_t(m * k)), b(size_t(k * n));
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 13) - 6) / 8.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 7) - 3) / 4.0f;
  expect_products_survive_a_stream_of_signals(size_t(m * n), [&](std::vector<float>& c) {
    cpu_sgemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n, true);
  });
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

// --dtype auto on the CPU: bf16 only with bf16 instructions (as oneDNN detects them) and bf16
// GEMMs measured at least 1.15x fp32's speed.
TEST(CpuGemmPolicy, AutoPicksBf16OnlyWhereItsGemmsMeasureFaster) {
  EXPECT_TRUE(CpuBackend::bf16_pays_off(2.0));
  EXPECT_FALSE(CpuBackend::bf16_pays_off(1.0));
  EXPECT_FALSE(CpuBackend::bf16_pays_off(0.0));  // no bf16 instructions
  const double speedup = CpuBackend::measured_bf16_speedup();
  EXPECT_EQ(speedup > 0, CpuBackend::cpu_has_native_bf16());
  EXPECT_EQ(backend_for(Device::cpu()).native_bf16_gemm(),
            CpuBackend::cpu_has_native_bf16() && CpuBackend::bf16_pays_off(speedup))
      << "bf16 GEMMs measured at " << speedup << "x fp32";
}

}  // namespace
}  // namespace sp
