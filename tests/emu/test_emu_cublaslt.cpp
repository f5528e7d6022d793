// Tests of the emulated cuBLASLt subset (kernels/emu/cublaslt_emu.h): the GELU and bias
// epilogues against references computed in double, the heuristic's refusals and the buffer checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "kernels/cuda_compat.h"
#include "tests/emu/emu_test_util.h"

namespace sp::cuda_emu {
namespace {

using ::sp::emu_test_util::DeviceBuffer;

double gelu_tanh(double v) {
  return 0.5 * v *
         (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
}
// d/dv of gelu_tanh, by the chain rule (checked against a central difference below).
double gelu_tanh_derivative(double v) {
  const double c = std::sqrt(2.0 / std::numbers::pi), t = std::tanh(c * (v + 0.044715 * v * v * v));
  return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * v * v);
}

// One column-major D = epilogue(op(A) op(B)) problem's descriptors, destroyed at scope exit.
struct Problem {
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  Problem(cudaDataType type, int m, int n, int k, cublasOperation_t transa,
          std::uint32_t epilogue) {
    EXPECT_EQ(cublasLtCreate(&handle), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
              CUBLAS_STATUS_SUCCESS);
    set(CUBLASLT_MATMUL_DESC_TRANSA, std::int32_t(transa));
    set(CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
    const bool ta = transa != CUBLAS_OP_N;
    EXPECT_EQ(cublasLtMatrixLayoutCreate(&a, type, ta ? k : m, ta ? m : k, ta ? k : m),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatrixLayoutCreate(&b, type, k, n, k), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatrixLayoutCreate(&d, type, m, n, m), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
  }
  ~Problem() {
    cublasLtMatmulPreferenceDestroy(pref);
    for (auto l : {a, b, d}) cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(handle);
  }
  template <class V>
  void set(cublasLtMatmulDescAttributes_t attr, V value) {
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)),
              CUBLAS_STATUS_SUCCESS);
  }
  // The heuristic's answer: how many algorithms it offers (0 or 1), with `algo` the first.
  int offered(cublasLtMatmulAlgo_t* algo = nullptr) {
    cublasLtMatmulHeuristicResult_t result{};
    int returned = -1;
    const cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, d, d, pref, 1, &result, &returned);
    EXPECT_EQ(s == CUBLAS_STATUS_SUCCESS, returned == 1) << ::sp::emu::last_error_detail();
    if (algo) *algo = result.algo;
    return returned;
  }
  cublasStatus_t run(const void* A, const void* B, void* D, cudaStream_t stream = nullptr) {
    cublasLtMatmulAlgo_t algo{};
    if (offered(&algo) != 1) return CUBLAS_STATUS_NOT_SUPPORTED;
    const float one = 1.0f, zero = 0.0f;
    return cublasLtMatmul(handle, desc, &one, A, a, B, b, &zero, D, d, D, d, &algo, nullptr, 0,
                          stream);
  }
};

// Multiples of 1/16 in [-1, 1]: every product and sum below is exact in fp32 and double.
std::vector<float> sixteenths(std::size_t n, int seed) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = float(int((i * 7 + seed * 13) % 33) - 16) / 16.0f;
  return v;
}

TEST(EmuCublasLt, GeluAuxBiasRunsOnTheFp32SumAndRoundsEachOutputOnce) {
  const int m = 16, n = 3, k = 8;
  const std::vector<float> A = sixteenths(m * k, 1), B = sixteenths(k * n, 2);
  std::vector<float> bias(m);
  for (int i = 0; i < m; ++i) bias[i] = float(2 * i + 1) / 512.0f;  // below bf16's spacing near 1
  const auto to_bf16 = [](const std::vector<float>& v) {
    return std::vector<__nv_bfloat16>(v.begin(), v.end());
  };
  DeviceBuffer<__nv_bfloat16> dA(to_bf16(A)), dB(to_bf16(B)), dBias(to_bf16(bias));
  DeviceBuffer<__nv_bfloat16> dD(std::vector<__nv_bfloat16>(m * n)),
      dAux(std::vector<__nv_bfloat16>(m * n));
  Problem p(CUDA_R_16BF, m, n, k, CUBLAS_OP_N, CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
  p.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(dBias.ptr));
  p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(dAux.ptr));
  p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, std::int64_t(m));
  ::sp::emu::reset_runtime_stats();
  ASSERT_EQ(p.run(dA.ptr, dB.ptr, dD.ptr), CUBLAS_STATUS_SUCCESS) << ::sp::emu::last_error_detail();
  EXPECT_EQ(::sp::emu::runtime_stats().gemm_calls, 1u);
  const auto D = dD.download(), aux = dAux.download();
  int order_matters = 0;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double product = 0;
      for (int l = 0; l < k; ++l) product += double(A[l * m + i]) * double(B[j * k + l]);
      const double t = product + double(__bfloat162float(__nv_bfloat16(bias[i])));
      const int at = j * m + i;
      // The aux holds the GELU input rounded once (t is exact in fp32).
      EXPECT_EQ(__bfloat162float(aux[at]), __bfloat162float(__nv_bfloat16(float(t)))) << at;
      // GELU of the unrounded sum, rounded once: within one bf16 rounding of the exact value.
      const double want = gelu_tanh(t);
      EXPECT_NEAR(__bfloat162float(D[at]), want, std::fabs(want) * 0x1p-8 + 1e-6) << at;
      // Rounding the product before adding the bias (an unfused GEMM) would differ here.
      const float rounded_first =
          float(__nv_bfloat16(float(__bfloat162float(__nv_bfloat16(float(product))) +
                                    __bfloat162float(__nv_bfloat16(bias[i])))));
      order_matters += rounded_first != __bfloat162float(aux[at]);
    }
  EXPECT_GT(order_matters, 0) << "the data cannot tell the rounding orders apart";
}

TEST(EmuCublasLt, ReluBiasClampsTheBiasedSum) {
  const int m = 8, n = 4, k = 5;
  const std::vector<float> A = sixteenths(m * k, 7), B = sixteenths(k * n, 8);
  std::vector<float> bias(m);
  for (int i = 0; i < m; ++i) bias[i] = float(i - 4) / 8.0f;
  DeviceBuffer<float> dA(A), dB(B), dBias(bias), dD(std::vector<float>(m * n, 99.0f));
  Problem p(CUDA_R_32F, m, n, k, CUBLAS_OP_N, CUBLASLT_EPILOGUE_RELU_BIAS);
  p.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(dBias.ptr));
  ASSERT_EQ(p.run(dA.ptr, dB.ptr, dD.ptr), CUBLAS_STATUS_SUCCESS) << ::sp::emu::last_error_detail();
  const auto D = dD.download();
  int clamped = 0;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double t = bias[i];
      for (int l = 0; l < k; ++l) t += double(A[l * m + i]) * double(B[j * k + l]);
      EXPECT_EQ(D[j * m + i], float(std::max(t, 0.0))) << i << "," << j;  // exact sums
      clamped += t < 0;
    }
  EXPECT_GT(clamped, 0) << "the data never reach the clamp";
}

// Captured into a graph, the matmul runs at launch, after its descriptors are gone, exactly as
// it runs eagerly (the emulator has one algorithm, so bit for bit), on the operands as they are
// at launch.
TEST(EmuCublasLt, ACapturedMatmulRunsAtLaunchAsCapturedAfterItsDescriptorsAreDestroyed) {
  const int m = 16, n = 3, k = 8;
  const std::vector<float> A = sixteenths(m * k, 11), B = sixteenths(k * n, 12);
  std::vector<float> bias(m);
  for (int i = 0; i < m; ++i) bias[i] = float(i - 8) / 16.0f;
  DeviceBuffer<float> dA(A), dB(B), dBias(bias), dD(std::vector<float>(m * n, 99.0f)),
      dAux(std::vector<float>(m * n, 99.0f)), eager(std::vector<float>(m * n, 99.0f)),
      eager_aux(std::vector<float>(m * n, 99.0f));
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph = nullptr;
  {
    Problem p(CUDA_R_32F, m, n, k, CUBLAS_OP_N, CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
    p.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(dBias.ptr));
    p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, std::int64_t(m));
    p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(eager_aux.ptr));
    ASSERT_EQ(p.run(dA.ptr, dB.ptr, eager.ptr), CUBLAS_STATUS_SUCCESS);
    p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(dAux.ptr));
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    ASSERT_EQ(p.run(dA.ptr, dB.ptr, dD.ptr, stream), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess) << ::sp::emu::last_error_detail();
  }
  EXPECT_EQ(dD.download(), std::vector<float>(m * n, 99.0f));  // not run yet
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  EXPECT_EQ(dD.download(), eager.download());
  EXPECT_EQ(dAux.download(), eager_aux.download());
  EXPECT_NE(dD.download(), std::vector<float>(m * n, 99.0f));
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

TEST(EmuCublasLt, DgeluMultipliesTheProductByTheGeluDerivativeAtTheAux) {
  // The derivative used as the reference is itself checked against a central difference.
  for (double v : {-2.5, -0.7, 0.0, 0.3, 1.9}) {
    const double h = 1e-5, fd = (gelu_tanh(v + h) - gelu_tanh(v - h)) / (2 * h);
    EXPECT_NEAR(gelu_tanh_derivative(v), fd, 1e-8) << v;
  }
  const int m = 24, n = 5, k = 7;
  const std::vector<float> A = sixteenths(k * m, 3), B = sixteenths(k * n, 4);  // A stored k x m
  std::vector<float> pre(m * n);
  for (int i = 0; i < m * n; ++i) pre[i] = float(i % 17) / 4.0f - 2.0f;
  DeviceBuffer<float> dA(A), dB(B), dPre(pre), dD(std::vector<float>(m * n, 99.0f));
  Problem p(CUDA_R_32F, m, n, k, CUBLAS_OP_T, CUBLASLT_EPILOGUE_DGELU);
  p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(dPre.ptr));
  p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, std::int64_t(m));
  ASSERT_EQ(p.run(dA.ptr, dB.ptr, dD.ptr), CUBLAS_STATUS_SUCCESS) << ::sp::emu::last_error_detail();
  const auto D = dD.download();
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double product = 0;
      for (int l = 0; l < k; ++l) product += double(A[i * k + l]) * double(B[j * k + l]);
      const double want = product * gelu_tanh_derivative(pre[j * m + i]);
      // fp32 evaluation of tanh and the products: a few fp32 ulps of O(1) values.
      EXPECT_NEAR(D[j * m + i], want, 1e-5 * (1.0 + std::fabs(want))) << i << "," << j;
    }
}

TEST(EmuCublasLt, TheHeuristicOffersNothingForWhatTheLibraryRejects) {
  const int m = 16, n = 2, k = 4;
  DeviceBuffer<__nv_bfloat16> bias(std::vector<__nv_bfloat16>(m + 8)),
      aux(std::vector<__nv_bfloat16>(m * n + 8));
  const auto gelu_problem = [&](std::int64_t aux_ld, const void* bias_ptr) {
    auto p = std::make_unique<Problem>(CUDA_R_16BF, m, n, k, CUBLAS_OP_N,
                                       CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
    p->set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_ptr);
    p->set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(aux.ptr));
    p->set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld);
    return p;
  };
  EXPECT_EQ(gelu_problem(m, bias.ptr)->offered(), 1);
  EXPECT_EQ(gelu_problem(m + 4, bias.ptr)->offered(), 0);  // aux ld not a multiple of 8
  EXPECT_EQ(gelu_problem(8, bias.ptr)->offered(), 0);      // aux ld below D's rows
  EXPECT_EQ(gelu_problem(m, bias.ptr + 1)->offered(), 0);  // bias 2 bytes past 16-byte alignment
  EXPECT_NE(::sp::emu::last_error_detail().find("bias"), std::string::npos);
  Problem relu_aux(CUDA_R_16BF, m, n, k, CUBLAS_OP_N, 2 | 128 /* RELU_AUX: a bit mask */);
  EXPECT_EQ(relu_aux.offered(), 0);
  Problem mixed(CUDA_R_16BF, m, n, k, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT);
  cublasLtMatrixLayoutDestroy(mixed.d);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&mixed.d, CUDA_R_32F, m, n, m), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(mixed.offered(), 0);
  std::int32_t two = 2;
  EXPECT_EQ(cublasLtMatrixLayoutSetAttribute(mixed.a, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &two,
                                             sizeof(two)),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(mixed.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &two, 2),
            CUBLAS_STATUS_INVALID_VALUE);  // a uint32 attribute given 2 bytes
}

// The heuristic's algorithm assumes the alignments the preference declares (256 bytes unless
// set): a less aligned matrix is refused at cublasLtMatmul, one declared as such is not.
TEST(EmuCublasLt, MatricesLessAlignedThanDeclaredAreRefused) {
  const int m = 16, n = 2, k = 4;
  DeviceBuffer<float> dA(sixteenths(m * k, 9)), dB(sixteenths(k * n, 10));
  DeviceBuffer<float> dD(std::vector<float>(m * n + 4));
  float* offset_d = dD.ptr + 4;  // 16 bytes past a 256-byte boundary
  Problem p(CUDA_R_32F, m, n, k, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT);
  EXPECT_EQ(p.run(dA.ptr, dB.ptr, offset_d), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_NE(::sp::emu::last_error_detail().find("is not aligned to the 256"), std::string::npos)
      << ::sp::emu::last_error_detail();
  for (auto attr :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    const std::uint32_t sixteen = 16;
    ASSERT_EQ(cublasLtMatmulPreferenceSetAttribute(p.pref, attr, &sixteen, sizeof(sixteen)),
              CUBLAS_STATUS_SUCCESS);
  }
  EXPECT_EQ(p.run(dA.ptr, dB.ptr, offset_d), CUBLAS_STATUS_SUCCESS);
  const std::uint32_t eight = 8;
  ASSERT_EQ(cublasLtMatmulPreferenceSetAttribute(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                 &eight, sizeof(eight)),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(p.offered(), 0);  // no emulated kernel reads matrices aligned to less than 16 bytes
}

TEST(EmuCublasLt, MatmulChecksEveryBufferItTouches) {
  const int m = 16, n = 2, k = 4;
  DeviceBuffer<float> dA(sixteenths(m * k, 5)), dB(sixteenths(k * n, 6)),
      dD(std::vector<float>(m * n));
  DeviceBuffer<float> short_aux(std::vector<float>(m * n - 1));
  Problem p(CUDA_R_32F, m, n, k, CUBLAS_OP_N, CUBLASLT_EPILOGUE_GELU_AUX);
  p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(short_aux.ptr));
  p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, std::int64_t(m));
  EXPECT_EQ(p.run(dA.ptr, dB.ptr, dD.ptr), CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_NE(::sp::emu::last_error_detail().find("epilogue aux"), std::string::npos)
      << ::sp::emu::last_error_detail();
  DeviceBuffer<float> aux(std::vector<float>(m * n));
  p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(aux.ptr));
  EXPECT_EQ(p.run(dA.ptr, dB.ptr, dD.ptr), CUBLAS_STATUS_SUCCESS);
  alignas(256) float host_d[m * n] = {};
  EXPECT_EQ(p.run(dA.ptr, dB.ptr, host_d), CUBLAS_STATUS_EXECUTION_FAILED);  // D on the host
}

}  // namespace
}  // namespace sp::cuda_emu
