// CudaBackend construction, device/stream/cuBLAS setup, host <-> device copies, launch geometry,
// and the factory entry points engine/backend.cpp calls (one set per flavour).
#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "engine/cuda/capability_policy.h"
#include "engine/cuda/cuda_backend_factory.h"
#include "engine/cuda/cuda_check.h"
#include "engine/error.h"

namespace sp::SP_CUDA_NS {

CudaBackend::CudaBackend(int device_index) : device_index_(device_index) {
  const char* op = "CudaBackend";
  SP_CUDA_CHECK(op, cudaSetDevice(device_index_));
  cudaDeviceProp props{};
  SP_CUDA_CHECK(op, cudaGetDeviceProperties(&props, device_index_));
  multiprocessors_ = std::max(1, props.multiProcessorCount);
  int optin = 0;
  SP_CUDA_CHECK(
      op, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_index_));
  max_shared_memory_ = std::max<size_t>(size_t(optin), 48 * 1024);
  SP_CUDA_CHECK(op, cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  SP_CUBLAS_CHECK(op, cublasCreate(&cublas_));
  SP_CUBLAS_CHECK(op, cublasSetStream(cublas_, stream_));
  SP_CUBLAS_CHECK(op, cublasLtCreate(&cublaslt_));
  // The word graph replays write their seed shift to (a capture could not allocate it).
  void* slot = nullptr;
  SP_CUDA_CHECK(op, cudaMalloc(&slot, sizeof(uint64_t)));
  seed_shift_slot_ = static_cast<uint64_t*>(slot);
  allow_tf32_.store(tf32_by_default(props.major, SP_CUDA_EMU, std::getenv("SOFTPROMPT_CUDA_TF32")));
  native_bf16_gemm_ = native_bf16_gemm_for(props.major, SP_CUDA_EMU);
  tensor_core_attention_.store(tensor_core_attention_by_default(
      props.major, SP_CUDA_EMU, std::getenv("SOFTPROMPT_CUDA_TENSOR_CORE_ATTENTION")));
  gemm_epilogues_.store(gemm_epilogues_by_default(std::getenv("SOFTPROMPT_CUDA_GEMM_EPILOGUES")));
  // Deliberately leaked: Storage objects keep a pointer to their allocator and may be destroyed
  // after this backend during static destruction.
  allocator_ = new CachingAllocator(device_index_);
}

CudaBackend::~CudaBackend() {
  // Errors are ignored here: at process exit the CUDA runtime may already be shutting down.
  if (stream_) (void)cudaStreamSynchronize(stream_);
  staging_ring_.clear([this](cudaEvent_t e) { idle_events_.push_back(e); });
  for (cudaEvent_t e : idle_events_) (void)cudaEventDestroy(e);
  if (staging_) (void)cudaFreeHost(staging_);
  if (seed_shift_slot_) (void)cudaFree(seed_shift_slot_);
  if (cublaslt_) (void)cublasLtDestroy(cublaslt_);
  if (cublas_) (void)cublasDestroy(cublas_);
  if (stream_) (void)cudaStreamDestroy(stream_);
}

Device CudaBackend::device() const {
  return SP_CUDA_EMU ? Device::cuda_emu() : Device::cuda(device_index_);
}

void CudaBackend::activate(const char* op) const {
  int current = -1;
  SP_CUDA_CHECK(op, cudaGetDevice(&current));
  if (current != device_index_) SP_CUDA_CHECK(op, cudaSetDevice(device_index_));
}

void CudaBackend::synchronize() {
  SP_CHECK(!capturing_, "synchronize: ", device().str(),
           " is capturing, and a capture cannot wait for the device");
  activate("synchronize");
  count_host_sync();
  SP_CUDA_CHECK("synchronize", cudaStreamSynchronize(stream_));
}

BackendStats CudaBackend::stats() const {
  BackendStats s = Backend::stats();
  s.device_allocations = allocator_->cache_stats().device_mallocs - device_mallocs_at_reset_;
  return s;
}

void CudaBackend::reset_stats() {
  Backend::reset_stats();
  device_mallocs_at_reset_ = allocator_->cache_stats().device_mallocs;
}

void CudaBackend::copy_from_host(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  SP_CHECK(!capturing_, "copy_from_host: ", device().str(),
           " is capturing, and an upload from host memory cannot be captured (each replay would "
           "re-read the staging buffer); upload inputs into device tensors before capturing and "
           "update them in place between replays");
  activate("copy_from_host");
  count_launch("cudaMemcpyAsync (host to device)", {0.0, double(nbytes)});
  if (staging_ring_.fits(nbytes)) {
    stage_upload(dst, src, nbytes);
    return;
  }
  cudaPointerAttributes source{};
  SP_CUDA_CHECK("copy_from_host", cudaPointerGetAttributes(&source, src));
  SP_CUDA_CHECK("copy_from_host",
                cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream_));
  // The caller may free the host buffer as soon as we return. From pageable memory the driver
  // has staged the bytes by the time cudaMemcpyAsync returns (possibly after waiting for the
  // stream); page-locked memory is read by the DMA later, so then we wait. (CUDA runtime docs,
  // "API synchronization behavior".)
  if (source.type == cudaMemoryTypeHost) {
    count_host_sync();
    SP_CUDA_CHECK("copy_from_host", cudaStreamSynchronize(stream_));
  }
}

void CudaBackend::stage_upload(void* dst, const void* src, size_t nbytes) {
  const char* op = "copy_from_host";
  std::lock_guard lock(staging_mutex_);
  if (!staging_) {
    void* pinned = nullptr;
    SP_CUDA_CHECK(op, cudaHostAlloc(&pinned, kUploadStagingBytes, cudaHostAllocDefault));
    staging_ = static_cast<unsigned char*>(pinned);
  }
  // cudaErrorNotReady is not a failure, but the runtime may leave it for cudaGetLastError, where
  // the next launch check would report it: clear it.
  const auto landed = [op](cudaEvent_t e) {
    const cudaError_t status = cudaEventQuery(e);
    if (status == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    SP_CUDA_CHECK(op, status);
    return true;
  };
  // Staged bytes an earlier upload still reads: wait for it (the ring wrapped onto work the
  // device has not reached, i.e. over kUploadStagingBytes queued ahead of it).
  const auto retire = [&](cudaEvent_t e) {
    if (!landed(e)) {
      count_host_sync();
      SP_CUDA_CHECK(op, cudaEventSynchronize(e));
    }
    idle_events_.push_back(e);
  };
  const size_t offset = staging_ring_.acquire(nbytes, landed, retire);
  std::memcpy(staging_ + offset, src, nbytes);
  SP_CUDA_CHECK(op,
                cudaMemcpyAsync(dst, staging_ + offset, nbytes, cudaMemcpyHostToDevice, stream_));
  cudaEvent_t done = nullptr;
  if (idle_events_.empty()) {
    SP_CUDA_CHECK(op, cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  } else {
    done = idle_events_.back();
    idle_events_.pop_back();
  }
  staging_ring_.commit(offset, nbytes, done);
  SP_CUDA_CHECK(op, cudaEventRecord(done, stream_));
}

void CudaBackend::copy_to_host(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  SP_CHECK(!capturing_, "copy_to_host: ", device().str(),
           " is capturing, and reading device memory on the host waits for the device, which a "
           "capture cannot do; read outputs after replay()");
  activate("copy_to_host");
  count_launch("cudaMemcpyAsync (device to host)", {0.0, double(nbytes)});
  SP_CUDA_CHECK("copy_to_host", cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream_));
  count_host_sync();
  SP_CUDA_CHECK("copy_to_host", cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_on_device(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  activate("copy_on_device");
  count_launch("cudaMemcpyAsync (device to device)", {0.0, 2.0 * double(nbytes)});
  SP_CUDA_CHECK("copy_on_device",
                cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream_));
}

unsigned int CudaBackend::grid_for(int64_t work, int threads) const {
  // Enough blocks to fill every SM several times over; grid-stride loops cover the rest.
  const int64_t cap = int64_t(multiprocessors_) * 32;
  return unsigned(std::clamp<int64_t>((work + threads - 1) / threads, 1, cap));
}

unsigned int CudaBackend::grid_for_rows(int64_t rows) const {
  const int64_t cap = int64_t(multiprocessors_) * 32;
  return unsigned(std::clamp<int64_t>(rows, 1, cap));
}

int CudaBackend::threads_for_row(int64_t cols, int per_thread) {
  const int64_t wanted = (cols + per_thread - 1) / per_thread;
  return int(std::clamp<int64_t>((wanted + 31) / 32 * 32, 32, 256));
}

}  // namespace sp::SP_CUDA_NS

namespace sp {

#if SP_CUDA_EMU

std::unique_ptr<Backend> make_cuda_emu_backend() {
  return std::make_unique<cuda_emu::CudaBackend>(0);
}

bool cuda_emu_backend_built() {
  return true;
}

#else

int cuda_device_count() {
  // Without a driver or a GPU the runtime reports an error: that simply means no devices.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

std::unique_ptr<Backend> make_cuda_backend(int device_index) {
  const int count = cuda_device_count();
  if (device_index < 0 || device_index >= count)
    fail(ErrorKind::kUnsupported, "device cuda:", device_index, ": ",
         count == 0 ? std::string("no CUDA device is visible (driver missing or no GPU)")
                    : str_cat("this machine has ", count, " CUDA device(s)"));
  return std::make_unique<cuda_real::CudaBackend>(device_index);
}

#endif

}  // namespace sp
