// Tests of the emulated CUDA runtime (memory, copies, streams, events, device queries, errors)
// and of the cuBLAS subset, against naive column-major references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda_compat.h"
#include "tests/emu/emu_test_kernels.cuh"
#include "tests/emu/emu_test_util.h"

namespace sp::cuda_emu {
namespace {

using ::sp::emu_test_util::DeviceBuffer;

// ---- memory and errors ----

TEST(EmuRuntime, MallocFreeCountersAndAlignment) {
  ::sp::emu::reset_runtime_stats();
  const auto before = ::sp::emu::runtime_stats();
  void* a = nullptr;
  float* b = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 1000), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&b, 37 * sizeof(float)), cudaSuccess);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a) % 256, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b) % 256, 0u);
  auto mid = ::sp::emu::runtime_stats();
  EXPECT_EQ(mid.malloc_calls, 2u);
  EXPECT_EQ(mid.live_allocations, before.live_allocations + 2);
  EXPECT_EQ(mid.live_bytes, before.live_bytes + 1000 + 37 * sizeof(float));
  EXPECT_EQ(cudaFree(a), cudaSuccess);
  EXPECT_EQ(cudaFree(b), cudaSuccess);
  EXPECT_EQ(cudaFree(nullptr), cudaSuccess);
  const auto after = ::sp::emu::runtime_stats();
  EXPECT_EQ(after.free_calls, 2u);
  EXPECT_EQ(after.live_bytes, before.live_bytes);
  EXPECT_GE(after.peak_bytes, before.live_bytes + 1000);
}

TEST(EmuRuntime, ErrorsAreStickyUntilRead) {
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  int local = 0;
  EXPECT_EQ(cudaFree(&local), cudaErrorInvalidValue);
  EXPECT_NE(::sp::emu::last_error_detail().find("not a pointer returned by cudaMalloc"),
            std::string::npos);
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 16), cudaSuccess);  // success does not clear the last error
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);  // double free
  EXPECT_STREQ(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument");
  EXPECT_STREQ(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation");
  cudaGetLastError();
}

TEST(EmuRuntime, CopiesCheckWhereThePointersAre) {
  std::vector<float> host(64), back(64, 0.0f);
  for (int i = 0; i < 64; ++i) host[i] = static_cast<float>(i);
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 64 * sizeof(float)), cudaSuccess);
  const auto before = ::sp::emu::runtime_stats();
  EXPECT_EQ(cudaMemcpy(dev, host.data(), 64 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(back.data(), dev, 64 * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, host);
  EXPECT_EQ(::sp::emu::runtime_stats().memcpy_calls - before.memcpy_calls, 2u);

  // Wrong direction, overruns and host pointers posing as device pointers are errors.
  EXPECT_EQ(cudaMemcpy(host.data(), dev, 4, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_NE(::sp::emu::last_error_detail().find("destination"), std::string::npos);
  EXPECT_EQ(cudaMemcpy(back.data(), dev + 1, 64 * sizeof(float), cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);
  EXPECT_NE(::sp::emu::last_error_detail().find("overruns"), std::string::npos);
  EXPECT_EQ(cudaMemcpy(dev, back.data(), 4, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(dev, host.data(), 4, static_cast<cudaMemcpyKind>(9)),
            cudaErrorInvalidMemcpyDirection);
  // cudaMemcpyDefault infers the direction.
  EXPECT_EQ(cudaMemcpy(dev + 8, dev, 8 * sizeof(float), cudaMemcpyDefault), cudaSuccess);
  EXPECT_EQ(cudaMemset(dev, 0, 64 * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(back.data(), dev, 64 * sizeof(float), cudaMemcpyDefault), cudaSuccess);
  for (float v : back) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(cudaMemset(host.data(), 0, 4), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(dev), cudaSuccess);
  cudaGetLastError();
}

TEST(EmuRuntime, PinnedHostMemory) {
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 128 * sizeof(float)), cudaSuccess);
  pinned[127] = 1.0f;
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 128 * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(dev, pinned, 128 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(dev), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(dev), cudaSuccess);
  cudaGetLastError();
}

// A copy from page-locked memory is read by the DMA engine after cudaMemcpyAsync returns, so what
// the host writes to the source before the stream next works is what arrives; the queries see it
// pending. A pageable source is staged before the call returns.
TEST(EmuRuntime, PageLockedSourcesAreReadWhenTheStreamNextWorks) {
  float* pinned = nullptr;
  float *dev = nullptr, *other = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 4 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dev, 4 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&other, 4 * sizeof(float)), cudaSuccess);
  cudaStream_t s = nullptr;
  cudaEvent_t copied = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&copied), cudaSuccess);
  const auto device_value = [&](const float* p) {
    float v = 0;
    EXPECT_EQ(cudaMemcpy(&v, p, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  };

  // Rewritten before a synchronisation: the rewrite arrives.
  pinned[0] = 1.0f;
  ASSERT_EQ(cudaMemcpyAsync(dev, pinned, sizeof(float), cudaMemcpyHostToDevice, s), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(copied, s), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(copied), cudaErrorNotReady);
  EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady);
  EXPECT_EQ(cudaGetLastError(), cudaErrorNotReady);  // as the real runtime may leave it
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  pinned[0] = 2.0f;
  ASSERT_EQ(cudaEventSynchronize(copied), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(copied), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(s), cudaSuccess);
  EXPECT_EQ(device_value(dev), 2.0f);

  // Two queue in order; a kernel launch lands both before it runs, and rewrites after it do not
  // arrive.
  pinned[0] = 3.0f;
  pinned[1] = 4.0f;
  ASSERT_EQ(cudaMemcpyAsync(dev, pinned, sizeof(float), cudaMemcpyHostToDevice, s), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(dev + 1, pinned + 1, sizeof(float), cudaMemcpyHostToDevice, s),
            cudaSuccess);
  SP_LAUNCH(1, 32, 0, s, emu_test::fill<float>)(other, 0.0f, 4);
  SP_LAUNCH(1, 32, 0, s, (emu_test::scale_add<float, 1>))(dev, other, 2);
  pinned[0] = pinned[1] = 5.0f;
  EXPECT_EQ(device_value(other), 3.0f);
  EXPECT_EQ(device_value(other + 1), 4.0f);

  // A pageable source has been read when the call returns.
  std::vector<float> pageable{6.0f};
  ASSERT_EQ(cudaMemcpyAsync(dev, pageable.data(), sizeof(float), cudaMemcpyHostToDevice, s),
            cudaSuccess);
  ASSERT_EQ(cudaEventRecord(copied, s), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(copied), cudaSuccess);
  pageable[0] = 7.0f;
  EXPECT_EQ(device_value(dev), 6.0f);

  EXPECT_EQ(cudaEventDestroy(copied), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaFree(dev), cudaSuccess);
  EXPECT_EQ(cudaFree(other), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
}

// Any address inside an allocation is classified, as CUDA's cudaPointerGetAttributes does:
// page-locked host, device, or ordinary (unregistered) host memory.
TEST(EmuRuntime, PointerAttributesClassifyEveryAddressOfAnAllocation) {
  float *pinned = nullptr, *dev = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 64 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dev, 64 * sizeof(float)), cudaSuccess);
  std::vector<float> pageable(64);
  cudaPointerAttributes a{};
  for (auto [ptr, want] : {std::pair<const void*, cudaMemoryType>{pinned, cudaMemoryTypeHost},
                           {pinned + 63, cudaMemoryTypeHost},
                           {dev, cudaMemoryTypeDevice},
                           {dev + 63, cudaMemoryTypeDevice},
                           {dev + 64, cudaMemoryTypeUnregistered},
                           {pageable.data(), cudaMemoryTypeUnregistered}}) {
    ASSERT_EQ(cudaPointerGetAttributes(&a, ptr), cudaSuccess);
    EXPECT_EQ(a.type, want) << ptr;
  }
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  ASSERT_EQ(cudaPointerGetAttributes(&a, pinned), cudaSuccess);
  EXPECT_EQ(a.type, cudaMemoryTypeUnregistered);
  EXPECT_EQ(cudaFree(dev), cudaSuccess);
}

TEST(EmuRuntime, StreamsAndEvents) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  cudaEvent_t start = nullptr, stop = nullptr, untimed = nullptr;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming), cudaSuccess);
  float ms = -1.0f;
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaErrorInvalidResourceHandle);  // unrecorded
  ASSERT_EQ(cudaEventRecord(start, s), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(stop, s), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(untimed, s), cudaSuccess);
  ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, untimed), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaStreamWaitEvent(s, stop, 0), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(s), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);  // the default stream
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(start), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(stop), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(untimed), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);  // destroyed
  cudaGetLastError();
}

TEST(EmuRuntime, DeviceQueries) {
  int count = 0, device = -1;
  EXPECT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  EXPECT_EQ(count, 1);
  EXPECT_EQ(cudaSetDevice(0), cudaSuccess);
  EXPECT_EQ(cudaSetDevice(1), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(device, 0);
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_STREQ(prop.name, "softprompt CUDA emulator");
  EXPECT_EQ(prop.multiProcessorCount, 108);
  EXPECT_EQ(prop.warpSize, 32);
  EXPECT_EQ(prop.maxThreadsPerBlock, 1024);
  EXPECT_EQ(prop.sharedMemPerBlock, 48u * 1024);
  EXPECT_EQ(prop.sharedMemPerBlockOptin, 227u * 1024);
  int sms = 0;
  EXPECT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  EXPECT_EQ(sms, 108);
  std::size_t free_bytes = 0, total_bytes = 0;
  EXPECT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  EXPECT_GT(total_bytes, 0u);
  EXPECT_LE(free_bytes, total_bytes);
  cudaGetLastError();
}

// ---- cuBLAS ----

// C = alpha * op(A) * op(B) + beta * C, column-major, in double.
std::vector<float> reference_gemm(bool ta, bool tb, int m, int n, int k, float alpha,
                                  const std::vector<float>& A, int lda, const std::vector<float>& B,
                                  int ldb, float beta, std::vector<float> C, int ldc) {
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      for (int p = 0; p < k; ++p) {
        const double a = ta ? A[i * lda + p] : A[p * lda + i];
        const double b = tb ? B[p * ldb + j] : B[j * ldb + p];
        acc += a * b;
      }
      float& c = C[j * ldc + i];
      c = static_cast<float>(alpha * acc + (beta == 0.0f ? 0.0 : beta * c));
    }
  }
  return C;
}

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

class EmuCublas : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cublasCreate(&handle_), CUBLAS_STATUS_SUCCESS); }
  void TearDown() override { EXPECT_EQ(cublasDestroy(handle_), CUBLAS_STATUS_SUCCESS); }
  cublasHandle_t handle_ = nullptr;
};

TEST_F(EmuCublas, SgemmAllTransposesWithPaddedLeadingDimensions) {
  const int m = 13, n = 7, k = 9;
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      const int lda = (ta ? k : m) + 3, ldb = (tb ? n : k) + 2, ldc = m + 5;
      const auto A = random_values(static_cast<std::size_t>(lda) * (ta ? m : k), 1);
      const auto B = random_values(static_cast<std::size_t>(ldb) * (tb ? k : n), 2);
      const auto C = random_values(static_cast<std::size_t>(ldc) * n, 3);
      DeviceBuffer dA(A), dB(B), dC(C);
      const float alpha = 1.5f, beta = -0.5f;
      ASSERT_EQ(cublasSgemm(handle_, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                            m, n, k, &alpha, dA.ptr, lda, dB.ptr, ldb, &beta, dC.ptr, ldc),
                CUBLAS_STATUS_SUCCESS);
      const auto expect = reference_gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
      const auto got = dC.download();
      for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], expect[i], 1e-5f) << "ta=" << ta << " tb=" << tb << " i=" << i;
      }
    }
  }
}

TEST_F(EmuCublas, BetaZeroIgnoresCAndKZeroScalesC) {
  const int m = 4, n = 3, k = 2;
  const auto A = random_values(m * k, 4), B = random_values(k * n, 5);
  DeviceBuffer dA(A), dB(B), dC(std::vector<float>(m * n, std::numeric_limits<float>::quiet_NaN()));
  const float one = 1.0f, zero = 0.0f, two = 2.0f;
  ASSERT_EQ(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA.ptr, m, dB.ptr, k,
                        &zero, dC.ptr, m),
            CUBLAS_STATUS_SUCCESS);
  for (float v : dC.download()) EXPECT_FALSE(std::isnan(v));
  DeviceBuffer dC2(std::vector<float>(m * n, 3.0f));
  ASSERT_EQ(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, 0, &one, dA.ptr, m, dB.ptr, 1,
                        &two, dC2.ptr, m),
            CUBLAS_STATUS_SUCCESS);
  for (float v : dC2.download()) EXPECT_EQ(v, 6.0f);
}

TEST_F(EmuCublas, StridedBatched) {
  const int m = 5, n = 4, k = 3, batch = 3;
  const long long sA = m * k + 2, sB = k * n + 1, sC = m * n + 3;
  const auto A = random_values(sA * batch, 6), B = random_values(sB * batch, 7);
  const auto C = random_values(sC * batch, 8);
  DeviceBuffer dA(A), dB(B), dC(C);
  const float alpha = 0.75f, beta = 0.25f;
  ::sp::emu::reset_runtime_stats();
  ASSERT_EQ(cublasSgemmStridedBatched(handle_, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &alpha, dA.ptr, m,
                                      sA, dB.ptr, n, sB, &beta, dC.ptr, m, sC, batch),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(::sp::emu::runtime_stats().gemm_calls, 1u);
  const auto got = dC.download();
  for (int b = 0; b < batch; ++b) {
    const std::vector<float> Ab(A.begin() + b * sA, A.begin() + b * sA + m * k);
    const std::vector<float> Bb(B.begin() + b * sB, B.begin() + b * sB + n * k);
    const std::vector<float> Cb(C.begin() + b * sC, C.begin() + b * sC + m * n);
    const auto expect = reference_gemm(false, true, m, n, k, alpha, Ab, m, Bb, n, beta, Cb, m);
    for (int i = 0; i < m * n; ++i) ASSERT_NEAR(got[b * sC + i], expect[i], 1e-5f);
  }
  // Padding between batches is untouched.
  EXPECT_EQ(got[m * n], C[m * n]);
}

TEST_F(EmuCublas, GemmExBf16InBf16OutRoundsOnce) {
  const int m = 6, n = 5, k = 40;
  const auto Af = random_values(m * k, 9), Bf = random_values(k * n, 10);
  std::vector<__nv_bfloat16> A(Af.begin(), Af.end()), B(Bf.begin(), Bf.end());
  std::vector<__nv_bfloat16> C(m * n, __nv_bfloat16(1.0f));
  __nv_bfloat16 *dA, *dB, *dC;
  ASSERT_EQ(cudaMalloc(&dA, A.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dB, B.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dC, C.size() * 2), cudaSuccess);
  cudaMemcpy(dA, A.data(), A.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), B.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dC, C.data(), C.size() * 2, cudaMemcpyHostToDevice);
  const float alpha = 1.0f, beta = 0.5f;
  ASSERT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dA, CUDA_R_16BF, m, dB,
                         CUDA_R_16BF, k, &beta, dC, CUDA_R_16BF, m, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  std::vector<__nv_bfloat16> got(C.size());
  cudaMemcpy(got.data(), dC, C.size() * 2, cudaMemcpyDeviceToHost);
  std::vector<float> Aw(A.begin(), A.end()), Bw(B.begin(), B.end()), Cw(m * n, 1.0f);
  const auto expect = reference_gemm(false, false, m, n, k, alpha, Aw, m, Bw, k, beta, Cw, m);
  int exact = 0;
  for (int i = 0; i < m * n; ++i) {
    // fp32 accumulation then one rounding: within half a bf16 ulp of the exact result.
    EXPECT_NEAR(__bfloat162float(got[i]), expect[i], std::fabs(expect[i]) * 0x1p-8f + 1e-6f);
    exact += __bfloat16_as_ushort(got[i]) == __bfloat16_as_ushort(__float2bfloat16(expect[i]));
  }
  EXPECT_GE(exact, m * n - 2);  // fp32 vs double accumulation may flip a rare tie
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
}

TEST_F(EmuCublas, GemmExHalfInFloatOut) {
  const int m = 3, n = 2, k = 4;
  std::vector<__half> A(m * k), B(k * n);
  for (int i = 0; i < m * k; ++i) A[i] = __float2half(0.25f * i);
  for (int i = 0; i < k * n; ++i) B[i] = __float2half(1.0f - 0.5f * i);
  __half *dA, *dB;
  float* dC;
  cudaMalloc(&dA, A.size() * 2);
  cudaMalloc(&dB, B.size() * 2);
  cudaMalloc(&dC, m * n * 4);
  cudaMemcpy(dA, A.data(), A.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), B.size() * 2, cudaMemcpyHostToDevice);
  const float alpha = 1.0f, beta = 0.0f;
  ASSERT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dA, CUDA_R_16F, m, dB,
                         CUDA_R_16F, k, &beta, dC, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  std::vector<float> got(m * n);
  cudaMemcpy(got.data(), dC, m * n * 4, cudaMemcpyDeviceToHost);
  std::vector<float> Aw(A.begin(), A.end()), Bw(B.begin(), B.end());
  const auto expect =
      reference_gemm(false, false, m, n, k, 1.0f, Aw, m, Bw, k, 0.0f, std::vector<float>(m * n), m);
  for (int i = 0; i < m * n; ++i) EXPECT_FLOAT_EQ(got[i], expect[i]);
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
}

float tf32(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0xfffu + ((u >> 13) & 1u);
  u &= ~0x1fffu;
  std::memcpy(&x, &u, 4);
  return x;
}

TEST_F(EmuCublas, Tf32IsEmulatedNotIgnored) {
  const int m = 8, n = 8, k = 64;
  const auto A = random_values(m * k, 11), B = random_values(k * n, 12);
  std::vector<float> At(A.size()), Bt(B.size());
  for (std::size_t i = 0; i < A.size(); ++i) At[i] = tf32(A[i]);
  for (std::size_t i = 0; i < B.size(); ++i) Bt[i] = tf32(B[i]);
  const std::vector<float> zeros(m * n, 0.0f);
  const auto exact = reference_gemm(false, false, m, n, k, 1, A, m, B, k, 0, zeros, m);
  const auto rounded = reference_gemm(false, false, m, n, k, 1, At, m, Bt, k, 0, zeros, m);
  DeviceBuffer dA(A), dB(B), dC(zeros);
  const float one = 1.0f, zero = 0.0f;
  const auto max_err = [&](const std::vector<float>& ref) {
    double e = 0;
    const auto got = dC.download();
    for (int i = 0; i < m * n; ++i) e = std::max(e, std::fabs(double(got[i]) - ref[i]));
    return e;
  };
  // Default math: full fp32.
  ASSERT_EQ(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA.ptr, m, dB.ptr, k,
                        &zero, dC.ptr, m),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_LT(max_err(exact), 1e-5);
  // TF32 math mode: inputs rounded to 10 mantissa bits first.
  ASSERT_EQ(cublasSetMathMode(handle_, CUBLAS_TF32_TENSOR_OP_MATH), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA.ptr, m, dB.ptr, k,
                        &zero, dC.ptr, m),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_LT(max_err(rounded), 1e-5);
  EXPECT_GT(max_err(exact), 1e-4);
  // The pedantic compute type keeps fp32 even in TF32 mode; FAST_TF32 asks for TF32 always.
  ASSERT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA.ptr, CUDA_R_32F, m,
                         dB.ptr, CUDA_R_32F, k, &zero, dC.ptr, CUDA_R_32F, m,
                         CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_LT(max_err(exact), 1e-5);
  ASSERT_EQ(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA.ptr, CUDA_R_32F, m,
                         dB.ptr, CUDA_R_32F, k, &zero, dC.ptr, CUDA_R_32F, m,
                         CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_LT(max_err(rounded), 1e-5);
}

TEST_F(EmuCublas, InvalidCallsReportStatus) {
  DeviceBuffer d(std::vector<float>(64, 1.0f));
  std::vector<float> host(64, 1.0f);
  const float one = 1.0f;
  EXPECT_EQ(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.ptr, 3, d.ptr, 4, &one,
                        d.ptr, 4),
            CUBLAS_STATUS_INVALID_VALUE);  // lda < m
  EXPECT_EQ(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, -1, 4, 4, &one, d.ptr, 4, d.ptr, 4, &one,
                        d.ptr, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasSgemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.ptr, 4, d.ptr, 4, &one,
                        d.ptr, 4),
            CUBLAS_STATUS_NOT_INITIALIZED);
  // A host pointer where cuBLAS needs device memory would fault on the GPU.
  EXPECT_EQ(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, host.data(), 4, d.ptr, 4,
                        &one, d.ptr, 4),
            CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_NE(::sp::emu::last_error_detail().find("A "), std::string::npos)
      << ::sp::emu::last_error_detail();
  EXPECT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.ptr, CUDA_R_32F, 4,
                         d.ptr, CUDA_R_32F, 4, &one, d.ptr, CUDA_R_32F, 4, CUBLAS_COMPUTE_16F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.ptr, CUDA_R_32F, 4,
                         d.ptr, CUDA_R_16BF, 4, &one, d.ptr, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_STREQ(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
  EXPECT_NE(std::string(cublasGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED)), "");
}

TEST_F(EmuCublas, HandleState) {
  cudaStream_t s = nullptr, got = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  EXPECT_EQ(cublasSetStream(handle_, s), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasGetStream(handle_, &got), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(got, s);
  cublasMath_t mode;
  EXPECT_EQ(cublasSetMathMode(handle_, CUBLAS_TF32_TENSOR_OP_MATH), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasGetMathMode(handle_, &mode), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(mode, CUBLAS_TF32_TENSOR_OP_MATH);
  EXPECT_EQ(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_DEVICE), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasSetStream(handle_, nullptr), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

}  // namespace
}  // namespace sp::cuda_emu
