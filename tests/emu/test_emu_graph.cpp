// The emulated CUDA graphs: work queued on a capturing stream is recorded and runs only when the
// graph is launched, reading memory as it is then; the calls a capture forbids fail and
// invalidate it, as in the CUDA runtime documentation (cudaStreamBeginCapture,
// cudaThreadExchangeStreamCaptureMode, the cudaErrorStreamCapture* and cudaErrorCapturedEvent
// error descriptions).
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda_compat.h"
#include "tests/emu/emu_test_kernels.cuh"
#include "tests/emu/emu_test_util.h"

namespace sp::cuda_emu {
namespace {

using ::sp::emu_test_util::DeviceBuffer;

// A non-blocking stream, destroyed at scope exit (ending a capture left open).
struct Stream {
  cudaStream_t s = nullptr;
  Stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess); }
  ~Stream() {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
      cudaGraph_t graph = nullptr;
      (void)cudaStreamEndCapture(s, &graph);
      if (graph) (void)cudaGraphDestroy(graph);
    }
    (void)cudaGetLastError();
    cudaStreamDestroy(s);
  }
};

// Page-locked host memory holding n floats.
struct Pinned {
  float* p = nullptr;
  explicit Pinned(std::size_t n) { EXPECT_EQ(cudaMallocHost(&p, n * sizeof(float)), cudaSuccess); }
  ~Pinned() { cudaFreeHost(p); }
};

TEST(EmuGraph, CapturedWorkRunsOnlyWhenLaunchedAndReadsMemoryAsItIsThen) {
  constexpr int n = 40;
  Stream stream;
  Pinned input(n);
  for (int i = 0; i < n; ++i) input.p[i] = float(i);
  DeviceBuffer<float> x(std::vector<float>(n, -1.0f)), y(std::vector<float>(n, -2.0f));
  cublasHandle_t blas = nullptr;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(blas, stream.s), CUBLAS_STATUS_SUCCESS);
  DeviceBuffer<float> product(std::vector<float>(1, -3.0f));
  const std::uint64_t launches_before = emu::runtime_stats().graph_launches;

  ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  // x = input; y = 0; y += 3 x (a kernel); product = x . x (a GEMM).
  ASSERT_EQ(cudaMemcpyAsync(x.ptr, input.p, n * sizeof(float), cudaMemcpyHostToDevice, stream.s),
            cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(y.ptr, 0, n * sizeof(float), stream.s), cudaSuccess);
  SP_LAUNCH(2, 32, 0, stream.s, emu_test::scale_add<float, 3>)(x.ptr, y.ptr, n);
  const float one = 1.0f, zero = 0.0f;
  ASSERT_EQ(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, 1, 1, n, &one, x.ptr, n, x.ptr, n, &zero,
                        product.ptr, 1),
            CUBLAS_STATUS_SUCCESS);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  ASSERT_EQ(cudaStreamIsCapturing(stream.s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaSuccess) << emu::last_error_detail();
  ASSERT_NE(graph, nullptr);
  // Nothing ran during the capture.
  EXPECT_EQ(x.download(), std::vector<float>(n, -1.0f));
  EXPECT_EQ(y.download(), std::vector<float>(n, -2.0f));
  EXPECT_EQ(product.download(), std::vector<float>(1, -3.0f));
  std::size_t nodes = 0;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
  EXPECT_EQ(nodes, 4u);

  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(graph), cudaSuccess);  // the executable graph does not need it
  for (const float offset : {0.0f, 100.0f}) {
    for (int i = 0; i < n; ++i) input.p[i] = float(i) + offset;  // the copy reads it at launch
    ASSERT_EQ(cudaGraphLaunch(exec, stream.s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    const std::vector<float> got = y.download();
    double dot = 0.0;
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(got[i], 3.0f * (float(i) + offset)) << i;
      dot += double(float(i) + offset) * double(float(i) + offset);
    }
    EXPECT_EQ(product.download()[0], float(dot));  // exact: integers below 2^24
  }
  EXPECT_EQ(emu::runtime_stats().graph_launches - launches_before, 2u);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cublasDestroy(blas), CUBLAS_STATUS_SUCCESS);
}

TEST(EmuGraph, KernelArgumentsAreTheCapturedValues) {
  Stream stream;
  DeviceBuffer<float> out(std::vector<float>(8, 0.0f));
  float value = 5.0f;
  ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  SP_LAUNCH(1, 8, 0, stream.s, emu_test::fill<float>)(out.ptr, value, 8);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaSuccess);
  value = 7.0f;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream.s), cudaSuccess);
  EXPECT_EQ(out.download(), std::vector<float>(8, 5.0f));
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

// Each forbidden call, made while `stream` captures (in cudaStreamCaptureModeGlobal).
struct ForbiddenCall {
  const char* name;
  std::function<cudaError_t(cudaStream_t)> call;
};

std::vector<ForbiddenCall> forbidden_calls(float* device, std::vector<float>& pageable) {
  return {
      {"cudaMalloc",
       [](cudaStream_t) {
         void* p = nullptr;
         return cudaMalloc(&p, 64);
       }},
      {"cudaFree", [device](cudaStream_t) { return cudaFree(device); }},
      {"cudaHostAlloc",
       [](cudaStream_t) {
         void* p = nullptr;
         return cudaHostAlloc(&p, 64, cudaHostAllocDefault);
       }},
      {"cudaMemcpy",
       [device, &pageable](cudaStream_t) {
         return cudaMemcpy(pageable.data(), device, 4, cudaMemcpyDeviceToHost);
       }},
      {"cudaMemset", [device](cudaStream_t) { return cudaMemset(device, 0, 4); }},
      {"cudaDeviceSynchronize", [](cudaStream_t) { return cudaDeviceSynchronize(); }},
      {"cudaStreamSynchronize", [](cudaStream_t s) { return cudaStreamSynchronize(s); }},
      {"cudaStreamQuery", [](cudaStream_t s) { return cudaStreamQuery(s); }},
      {"pageable host memory",
       [device, &pageable](cudaStream_t s) {
         return cudaMemcpyAsync(device, pageable.data(), 4, cudaMemcpyHostToDevice, s);
       }},
  };
}

TEST(EmuGraph, ForbiddenCallsFailAndInvalidateTheCapture) {
  DeviceBuffer<float> device(std::vector<float>(4, 1.0f));
  std::vector<float> pageable(4, 0.0f);
  for (const ForbiddenCall& forbidden : forbidden_calls(device.ptr, pageable)) {
    SCOPED_TRACE(forbidden.name);
    Stream stream;
    ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaSuccess);
    SP_LAUNCH(1, 4, 0, stream.s, emu_test::fill<float>)(device.ptr, 2.0f, 4);
    EXPECT_EQ(forbidden.call(stream.s), cudaErrorStreamCaptureUnsupported);
    EXPECT_NE(emu::last_error_detail().find(forbidden.name), std::string::npos)
        << emu::last_error_detail();
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    ASSERT_EQ(cudaStreamIsCapturing(stream.s, &status), cudaSuccess);
    EXPECT_EQ(status, cudaStreamCaptureStatusInvalidated);
    cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(&status);
    EXPECT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(graph, nullptr);
    EXPECT_NE(emu::last_error_detail().find(forbidden.name), std::string::npos)
        << emu::last_error_detail();
    (void)cudaGetLastError();
    EXPECT_EQ(device.download(), std::vector<float>(4, 1.0f));  // the kernel never ran
  }
}

TEST(EmuGraph, RelaxedCapturesAllowUnsafeCallsButNotSynchronisingTheCapturingStream) {
  Stream stream;
  ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream.s), cudaErrorStreamCaptureUnsupported);
  (void)cudaGetLastError();
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaErrorStreamCaptureInvalidated);
  (void)cudaGetLastError();
}

TEST(EmuGraph, ACaptureOnAnotherStreamDoesNotStopThisThreadsUnsafeCallsUnderThreadLocal) {
  Stream capturing;
  ASSERT_EQ(cudaStreamBeginCapture(capturing.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  std::thread other([] {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);  // another thread: not this capture's business
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  });
  other.join();
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);  // the capturing thread
  (void)cudaGetLastError();
}

TEST(EmuGraph, EventsRecordedInACaptureCannotBeWaitedForUntilRecordedOutsideOne) {
  Stream stream;
  cudaEvent_t event = nullptr;
  ASSERT_EQ(cudaEventCreate(&event), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(event, stream.s), cudaSuccess);
  EXPECT_EQ(cudaStreamWaitEvent(stream.s, event, 0), cudaSuccess);  // inside the capture: order
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(event), cudaErrorCapturedEvent);
  EXPECT_EQ(cudaEventSynchronize(event), cudaErrorCapturedEvent);
  EXPECT_EQ(cudaStreamWaitEvent(stream.s, event, 0), cudaErrorCapturedEvent);
  (void)cudaGetLastError();
  ASSERT_EQ(cudaEventRecord(event, stream.s), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(event), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(event), cudaSuccess);
}

TEST(EmuGraph, AGlobalCaptureEndsOnlyOnItsOwnThread) {
  Stream stream;
  ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  std::thread other([&stream] {
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaErrorStreamCaptureWrongThread);
    (void)cudaGetLastError();
  });
  other.join();
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

TEST(EmuGraph, MisusedCapturesAndGraphsAreErrors) {
  Stream stream;
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaErrorIllegalState);
  EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal),
            cudaErrorStreamCaptureUnsupported);
  ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaErrorIllegalState);
  ASSERT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaErrorInvalidValue);
  cudaGraphExec_t from_destroyed = nullptr;
  EXPECT_EQ(cudaGraphInstantiate(&from_destroyed, graph), cudaErrorInvalidValue);
  EXPECT_EQ(from_destroyed, nullptr);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphLaunch(exec, stream.s), cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

}  // namespace
}  // namespace sp::cuda_emu
