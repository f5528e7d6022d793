// The bf16 GEMM (bf16 operands, fp32 accumulation and result) on the CPU, both of its paths, and
// the mixed-precision matmul / linear_cross_entropy built on it (bf16 weights, fp32 activations).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "tests/engine/gemm_reference.h"
#include "tests/engine/gemm_signals.h"
#include "tests/test_util.h"

namespace sp {
namespace {

using testing::expect_all_close;
using testing::expect_products_survive_a_stream_of_signals;
using testing::for_each_gemm_case;
using testing::GemmCase;
using testing::reference_gemm;

// Values on the bf16 grid, so that widening is exact and both GEMM paths see the same numbers.
std::vector<float> bf16_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> out(n);
  for (float& v : out) v = bf16_to_float(float_to_bf16(uniform(rng)));
  return out;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = float_to_bf16(values[i]);
  return out;
}

class Bf16Gemm : public ::testing::TestWithParam<CpuBackend::Bf16GemmPath> {
 protected:
  void SetUp() override {
    saved_ = CpuBackend::bf16_gemm_path();
    CpuBackend::set_bf16_gemm_path(GetParam());
  }
  void TearDown() override { CpuBackend::set_bf16_gemm_path(saved_); }
  CpuBackend::Bf16GemmPath saved_{};
};

// Every layout, beta, padded leading dimensions, panel-split and unsplit shapes.
TEST_P(Bf16Gemm, MatchesDoubleReferenceForEveryLayout) {
  Backend& cpu = backend_for(Device::cpu());
  auto on_bf16_grid = [](float v) { return bf16_to_float(float_to_bf16(v)); };
  for_each_gemm_case(on_bf16_grid, [&](const GemmCase& c) {
    std::vector<uint16_t> a16 = to_bf16(c.a), b16 = to_bf16(c.b);
    std::vector<float> got = c.c;
    GemmArgs g;
    g.dtype = DType::BF16;
    g.c_dtype = DType::F32;
    g.trans_a = c.trans_a, g.trans_b = c.trans_b, g.m = c.m, g.n = c.n, g.k = c.k;
    g.lda = c.lda, g.ldb = c.ldb, g.ldc = c.ldc, g.alpha = 0.75f, g.beta = c.beta;
    g.a = a16.data(), g.b = b16.data(), g.c = got.data();
    cpu.gemm(g);
    // Exact products of bf16 values summed in fp32: |error| <= k * 2^-24 * sum|a||b|,
    // under 1e-5 for k <= 96 and |a|, |b| <= 1 (a wrong layout is off by O(1)).
    expect_all_close(c.reference(), got, 1e-5f * float(c.k), c.label);
  });
}

TEST_P(Bf16Gemm, StridedBatchAndEmptyInnerDimension) {
  Backend& cpu = backend_for(Device::cpu());
  const int64_t batch = 3, m = 4, n = 6, k = 5;
  std::vector<float> a = bf16_values(size_t(batch * m * k), 4), b = bf16_values(size_t(k * n), 5);
  std::vector<uint16_t> a16 = to_bf16(a), b16 = to_bf16(b);
  std::vector<float> got(size_t(batch * m * n), 7.0f);
  GemmArgs g;
  g.dtype = DType::BF16;
  g.m = m, g.n = n, g.k = k, g.lda = k, g.ldb = n, g.ldc = n, g.batch = batch;
  g.stride_a = m * k, g.stride_b = 0, g.stride_c = m * n;  // B broadcast over the batch
  g.a = a16.data(), g.b = b16.data(), g.c = got.data();
  cpu.gemm(g);
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<float> a_i(a.begin() + i * m * k, a.begin() + (i + 1) * m * k);
    std::vector<float> want = reference_gemm(false, false, m, n, k, 1.0f, a_i, k, b, n, 0.0f,
                                             std::vector<float>(m * n), n);
    expect_all_close(want,
                     std::vector<float>(got.begin() + i * m * n, got.begin() + (i + 1) * m * n),
                     1e-5f, "batch entry");
  }
  // k = 0: C = beta * C.
  g.k = 0, g.beta = 0.5f, g.batch = 1;
  std::vector<float> c(size_t(m * n), 4.0f);
  g.c = c.data();
  cpu.gemm(g);
  for (float v : c) ASSERT_EQ(v, 2.0f);
}

// A handled signal must not touch a bf16 GEMM's memory either (gemm_signals.h says why):
// GPT-2-sized panels through the backend, whose calling thread receives the signals.
TEST_P(Bf16Gemm, SignalsHandledDuringAGemmLeaveItsResultAndTheHeapIntact) {
  const int64_t m = 64, n = 768, k = 768;
  const std::vector<uint16_t> a = to_bf16(bf16_values(size_t(m * k), 1)),
                              b = to_bf16(bf16_values(size_t(k * n), 2));
  expect_products_survive_a_stream_of_signals(size_t(m * n), [&](std::vector<float>& c) {
    GemmArgs g;
    g.dtype = DType::BF16;
    g.m = m, g.n = n, g.k = k;
    g.lda = k, g.ldb = n, g.ldc = n;
    g.a = a.data(), g.b = b.data(), g.c = c.data();
    backend_for(Device::cpu()).gemm(g);
  });
}

INSTANTIATE_TEST_SUITE_P(Paths, Bf16Gemm,
                         ::testing::Values(CpuBackend::Bf16GemmPath::kOneDnn,
                                           CpuBackend::Bf16GemmPath::kWidenedSgemm),
                         [](const auto& info) {
                           return info.param == CpuBackend::Bf16GemmPath::kOneDnn ? "OneDnn"
                                                                                  : "WidenedSgemm";
                         });

TEST(Bf16GemmCpu, RefusesABf16Result) {
  std::vector<uint16_t> a(4), b(4), c(4);
  GemmArgs g;
  g.dtype = g.c_dtype = DType::BF16;
  g.m = g.n = g.k = 2, g.lda = g.ldb = g.ldc = 2;
  g.a = a.data(), g.b = b.data(), g.c = c.data();
  try {
    backend_for(Device::cpu()).gemm(g);
    FAIL() << "a BF16 result was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("results in F32"), std::string::npos) << e.what();
  }
}

// ---- the mixed-precision matmul: F32 activations times a BF16 weight ----

Tensor floats(const std::vector<float>& values, const Shape& shape) {
  return Tensor::from_floats(values, shape);
}

TEST(MixedMatmul, RoundsTheActivationAndReturnsF32) {
  const int64_t B = 2, T = 3, K = 40, N = 24;
  std::vector<float> x = bf16_values(size_t(B * T * K), 6);
  for (size_t i = 0; i < x.size(); ++i) x[i] += 1e-3f * float(i % 7);  // off the bf16 grid
  Tensor activations = floats(x, {B, T, K});
  Tensor weight = floats(bf16_values(size_t(K * N), 7), {K, N}).to(DType::BF16);
  for (bool transposed : {false, true}) {
    Tensor w = transposed ? weight.transpose(0, 1).contiguous().transpose(0, 1) : weight;
    Tensor got = matmul(activations, w);
    EXPECT_EQ(got.dtype(), DType::F32);
    EXPECT_EQ(got.shape(), Shape({B, T, N}));
    // The same GEMM in fp32 on the bf16-rounded activation: equal up to fp32 summation order.
    Tensor want = matmul(activations.to(DType::BF16).to(DType::F32), weight.to(DType::F32));
    expect_all_close(want.to_floats(), got.to_floats(), 1e-5f * float(K),
                     transposed ? "transposed weight" : "weight");
  }
}

TEST(MixedMatmul, GradientOfTheActivationIsF32AndExactForBf16Upstream) {
  const int64_t M = 6, K = 32, N = 20;
  Tensor x = floats(bf16_values(size_t(M * K), 8), {M, K}).set_requires_grad(true);
  Tensor w = floats(bf16_values(size_t(K * N), 9), {K, N}).to(DType::BF16);
  // An upstream gradient on the bf16 grid: rounding it for the backward GEMM changes nothing,
  // so dX must equal the fp32 dC W^T up to summation order.
  Tensor upstream = floats(bf16_values(size_t(M * N), 10), {M, N});
  sum(mul(matmul(x, w), upstream), {0, 1}).backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().dtype(), DType::F32);
  NoGradGuard no_grad;
  Tensor want = matmul(upstream, w.to(DType::F32).transpose(0, 1));
  expect_all_close(want.to_floats(), x.grad().to_floats(), 1e-5f * float(N), "dX");
}

TEST(MixedMatmul, TwoBf16OperandsOnTheCpuAreRefusedClearly) {
  Tensor a = Tensor::zeros({2, 2}, DType::BF16), b = Tensor::zeros({2, 2}, DType::BF16);
  try {
    matmul(a, b);
    FAIL() << "bf16 x bf16 on the CPU was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("computes in F32"), std::string::npos) << e.what();
  }
}

TEST(MixedLinearCrossEntropy, MatchesTheFp32HeadOnRoundedHiddenStates) {
  const int64_t n = 9, d = 16, V = 50;
  Tensor hidden = floats(bf16_values(size_t(n * d), 11), {n, d}).set_requires_grad(true);
  Tensor head = floats(bf16_values(size_t(V * d), 12), {V, d}).to(DType::BF16);
  std::vector<int64_t> target_ids{3, 7, -100, 49, 0, 12, 12, 33, 1};
  Tensor targets = Tensor::from_ints(target_ids, {n}, DType::I64);
  CrossEntropyResult got = linear_cross_entropy(hidden, head, targets, -100);
  got.loss.backward();
  Tensor reference_hidden = hidden.detach().clone().set_requires_grad(true);
  CrossEntropyResult want =
      linear_cross_entropy(reference_hidden, head.to(DType::F32), targets, -100);
  want.loss.backward();
  EXPECT_EQ(got.counted_rows, 8);
  // hidden is on the bf16 grid, so the forward logits agree to fp32 summation (1e-6 relative).
  EXPECT_NEAR(got.loss.item(), want.loss.item(), 1e-5f * std::abs(want.loss.item()));
  // The logit gradients (softmax - onehot) / count are rounded to bf16 (2^-9 relative) before
  // the backward GEMM: each dH element is a sum of V such terms times |W| <= 1, so the error is
  // at most 2^-9 * sum_v |dlogit_v| <= 2^-9 * 2 / count ~ 5e-4; a wrong layout is O(1e-1).
  expect_all_close(reference_hidden.grad().to_floats(), hidden.grad().to_floats(), 5e-4f, "dH");
}

TEST(MixedLinearCrossEntropy, RefusesATrainableBf16Head) {
  Tensor hidden = Tensor::zeros({2, 4});
  Tensor head = Tensor::zeros({5, 4}, DType::BF16).set_requires_grad(true);
  Tensor targets = Tensor::from_ints({1, 2}, {2}, DType::I64);
  EXPECT_THROW(linear_cross_entropy(hidden, head, targets, -100), Error);
}

// A frozen (immutable) weight is packed once per panel and reused: results must stay those of
// the strided weight for every M (decode rows, prefill rows, row- and column-split panels) and
// both layouts, and a new weight that reuses freed memory must never meet the old packing.
TEST_P(Bf16Gemm, FrozenWeightPackedOnceGivesTheStridedResults) {
  const int64_t K = 96, N = 300;
  for (uint32_t seed : {20u, 21u, 22u}) {  // fresh weights, likely at the freed one's address
    Tensor weight = floats(bf16_values(size_t(K * N), seed), {K, N}).to(DType::BF16);
    Tensor fresh_copy = weight.clone();  // never marked: the strided path
    weight.impl()->storage->mark_immutable();
    for (bool transposed : {false, true}) {
      Tensor frozen = transposed ? weight.view({N, K}).transpose(0, 1) : weight;
      Tensor plain = transposed ? fresh_copy.view({N, K}).transpose(0, 1) : fresh_copy;
      for (int64_t M : {1, 16, 700}) {
        Tensor x = floats(bf16_values(size_t(M * K), seed + 100), {M, K});
        const std::vector<float> got = matmul(x, frozen).to_floats();
        const std::vector<float> want = matmul(x, plain).to_floats();
        // Same bf16 products, fp32 sums; only the blocking may differ (1e-5 * K as above).
        char label[64];
        std::snprintf(label, sizeof label, "seed %u M %lld %s", seed, (long long)M,
                      transposed ? "transposed" : "row-major");
        expect_all_close(want, got, 1e-5f * float(K), label);
      }
    }
    const size_t packed = weight.impl()->storage->derived_count();
    if (GetParam() == CpuBackend::Bf16GemmPath::kOneDnn)
      EXPECT_GE(packed, 2u) << "one packing per layout (and per column panel) expected";
    else
      EXPECT_EQ(packed, 0u) << "the widened path has nothing to pack";
    EXPECT_EQ(fresh_copy.impl()->storage->derived_count(), 0u);
  }
}

}  // namespace
}  // namespace sp
