// tests/engine/gemm_reference.h: the double-precision GEMM the CPU GEMM tests (fp32 on every
// library, bf16 on both paths) compare against.
#pragma once

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
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

// One case of the layout sweep: op(A) is m x k, op(B) k x n, C m x n, stored row-major with
// padded leading dimensions; alpha is 0.75.
struct GemmCase {
  int64_t m, n, k;
  bool trans_a, trans_b;
  float beta;
  int64_t lda, ldb, ldc;
  std::vector<float> a, b, c;  // values in [-1, 1], passed through the sweep's `round`
  std::string label;
  std::vector<float> reference() const {
    return reference_gemm(trans_a, trans_b, m, n, k, 0.75f, a, lda, b, ldb, beta, c, ldc);
  }
};

// Every layout and beta, padded leading dimensions, and shapes large enough to be split into
// thread-pool panels (m * n * k >= 2^18) as well as small ones that are not; check(case) each.
template <class Round, class Check>
void for_each_gemm_case(Round round, Check check) {
  auto values = [&](size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<float> out(n);
    for (float& v : out) v = round(uniform(rng));
    return out;
  };
  struct Shape3 {
    int64_t m, n, k;
  };
  for (Shape3 s : {Shape3{5, 7, 3}, Shape3{130, 300, 70}, Shape3{300, 90, 40}, Shape3{1, 257, 96}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 0.5f}) {
          GemmCase g{s.m,     s.n, s.k, ta, tb, beta, (ta ? s.m : s.k) + 3, (tb ? s.k : s.n) + 1,
                     s.n + 2, {},  {},  {}, {}};
          g.a = values(size_t((ta ? s.k : s.m) * g.lda), 1);
          g.b = values(size_t((tb ? s.n : s.k) * g.ldb), 2);
          g.c = values(size_t(s.m * g.ldc), 3);
          char label[96];
          std::snprintf(label, sizeof label, "m%lld n%lld ta%d tb%d beta%g", (long long)s.m,
                        (long long)s.n, int(ta), int(tb), double(beta));
          g.label = label;
          check(g);
        }
}

}  // namespace sp::testing
