// tests/engine/gemm_reference.h: the double-precision GEMM the CPU GEMM tests (fp32 on every
// library, bf16 on both paths) compare against.
#pragma once

#include <cstdint>
#include <vector>

namespace sp::testing {

// C = alpha op(A) op(B) + beta C in double, row-major with leading dimensions.
inline std::vector<float> reference_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                                         float alpha, const std::vector<float>& a, int64_t lda,
                                         const std::vector<float>& b, int64_t ldb, float beta,
                                         std::vector<float> c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < k; ++p)
        sum += double(ta ? a[p * lda + i] : a[i * lda + p]) *
               double(tb ? b[j * ldb + p] : b[p * ldb + j]);
      c[i * ldc + j] = float(alpha * sum + (beta == 0.0f ? 0.0 : beta * c[i * ldc + j]));
    }
  return c;
}

}  // namespace sp::testing
