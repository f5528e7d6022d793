// kernels/emu/cuda_runtime_emu.cpp: the emulated CUDA runtime and cuBLAS subset declared in
// kernels/emu/cuda_runtime_emu.h. GEMMs go to OpenBLAS's cblas_sgemm in column-major order.
#include "kernels/emu/cuda_runtime_emu.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "kernels/emu/blas_internal.h"
#include "kernels/emu/capture_internal.h"
#include "kernels/error.h"

namespace sp::cuda_emu {

struct CUstream_st {
  unsigned int flags = 0;
};

struct CUevent_st {
  unsigned int flags = 0;
  bool recorded = false;
  std::chrono::steady_clock::time_point when;
  // How many deferred pinned-memory copies had been queued when the event was recorded: it
  // completes once that many have landed.
  std::uint64_t copies_before = 0;
};

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};

}  // namespace sp::cuda_emu

namespace sp::emu {
namespace {

using namespace ::sp::cuda_emu;

constexpr std::size_t kDeviceAlignment = 256;
constexpr int kSmemOptInLimit = 227 * 1024;

// A cudaMemcpyAsync from page-locked host memory that has not landed yet: the DMA engine reads
// the source when the stream next does work, not when the call returns.
struct DeferredCopy {
  void* dst;
  const void* src;
  std::size_t count;
};

struct Registry {
  std::mutex mu;
  std::deque<DeferredCopy> deferred;  // in stream order (all streams are treated as one queue)
  std::uint64_t deferred_queued = 0;  // ever queued
  std::uint64_t deferred_landed = 0;  // ever completed
  std::map<std::uintptr_t, std::size_t> device;  // start -> size of every live cudaMalloc
  std::unordered_map<void*, std::size_t> host;   // cudaMallocHost / cudaHostAlloc
  std::unordered_set<const void*> streams;
  std::unordered_set<const void*> events;
  std::unordered_set<const void*> handles;
  std::uint64_t live_bytes = 0;
  std::uint64_t peak_bytes = 0;
};

Registry& registry() {
  static Registry r;
  return r;
}

std::atomic<std::uint64_t> g_malloc_calls{0};
std::atomic<std::uint64_t> g_free_calls{0};
std::atomic<std::uint64_t> g_host_alloc_calls{0};
std::atomic<std::uint64_t> g_host_free_calls{0};
std::atomic<std::uint64_t> g_memcpy_calls{0};
std::atomic<std::uint64_t> g_memset_calls{0};
std::atomic<std::uint64_t> g_sync_calls{0};
std::atomic<std::uint64_t> g_gemm_calls{0};
std::atomic<std::uint64_t> g_graph_launches{0};

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local std::string t_detail;

template <class... Args>
cudaError_t failed(cudaError_t error, Args&&... detail) {
  t_last_error = error;
  t_detail = str_cat(std::forward<Args>(detail)...);
  return error;
}

template <class... Args>
cublasStatus_t blas_failed(cublasStatus_t status, Args&&... detail) {
  t_detail = str_cat(std::forward<Args>(detail)...);
  return status;
}

const void* addr(const void* p) {
  return p;
}

// cudaErrorStreamCaptureUnsupported (recorded, the capture invalidated) when a capture in
// progress forbids `call` now; cudaSuccess otherwise.
cudaError_t refused_by_capture(const char* call) {
  const std::string why = capture::unsafe_call(call);
  return why.empty() ? cudaSuccess : failed(cudaErrorStreamCaptureUnsupported, why);
}

// cudaErrorCapturedEvent (recorded) when `event` was last recorded in a capture; cudaSuccess
// otherwise.
cudaError_t refused_for_captured_event(const char* call, const void* event) {
  if (!capture::event_captured(event)) return cudaSuccess;
  return failed(cudaErrorCapturedEvent, call, ": event ", event, " was last recorded in a capture");
}

// The live device allocation containing p, or nullptr.
const std::pair<const std::uintptr_t, std::size_t>* find_device(Registry& r, const void* p) {
  const auto u = reinterpret_cast<std::uintptr_t>(p);
  auto it = r.device.upper_bound(u);
  if (it == r.device.begin()) return nullptr;
  --it;
  if (u < it->first + std::max<std::size_t>(it->second, 1)) return &*it;
  return nullptr;
}

enum class Side { kHost, kDevice, kAny };

// Checks that [p, p + bytes) lies entirely in one device allocation (kDevice) or in no device
// allocation (kHost). Returns an empty string when it does.
std::string check_range(Registry& r, const void* p, std::size_t bytes, Side side,
                        const char* role) {
  if (side == Side::kAny) return {};
  const auto* a = find_device(r, p);
  if (side == Side::kHost) {
    if (a) return str_cat(role, " ", addr(p), " is device memory but the copy kind says host");
    return {};
  }
  if (!a) {
    return str_cat(role, " ", addr(p),
                   " is not inside any live cudaMalloc allocation (host pointer, freed, or never "
                   "allocated)");
  }
  const std::size_t offset = reinterpret_cast<std::uintptr_t>(p) - a->first;
  if (offset + bytes > a->second) {
    return str_cat(role, " range of ", bytes, " bytes at offset ", offset,
                   " overruns its allocation of ", a->second, " bytes");
  }
  return {};
}

bool valid_stream(Registry& r, cudaStream_t s) {
  return s == nullptr || r.streams.count(s) != 0;
}

// Completes every deferred copy, in order; the caller holds r.mu.
void land_deferred_copies(Registry& r) {
  for (const DeferredCopy& c : r.deferred) std::memcpy(c.dst, c.src, c.count);
  r.deferred_landed += r.deferred.size();
  r.deferred.clear();
}

bool is_page_locked(Registry& r, const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  for (const auto& [start, size] : r.host) {
    const auto begin = reinterpret_cast<std::uintptr_t>(start);
    if (address >= begin && address < begin + std::max<std::size_t>(size, 1)) return true;
  }
  return false;
}

// asynchronous: cudaMemcpyAsync, whose copies from page-locked memory the DMA reads later.
cudaError_t copy(const char* fn, void* dst, const void* src, std::size_t count, cudaMemcpyKind kind,
                 cudaStream_t stream, bool asynchronous) {
  g_memcpy_calls.fetch_add(1, std::memory_order_relaxed);
  Registry& r = registry();
  std::unique_lock lock(r.mu);
  if (!valid_stream(r, stream)) {
    return failed(cudaErrorInvalidResourceHandle, fn, ": stream ", addr(stream),
                  " is not a live stream");
  }
  Side dst_side = Side::kAny;
  Side src_side = Side::kAny;
  switch (kind) {
    case cudaMemcpyHostToHost:
      dst_side = src_side = Side::kHost;
      break;
    case cudaMemcpyHostToDevice:
      dst_side = Side::kDevice;
      src_side = Side::kHost;
      break;
    case cudaMemcpyDeviceToHost:
      dst_side = Side::kHost;
      src_side = Side::kDevice;
      break;
    case cudaMemcpyDeviceToDevice:
      dst_side = src_side = Side::kDevice;
      break;
    case cudaMemcpyDefault:
      break;
    default:
      return failed(cudaErrorInvalidMemcpyDirection, fn, ": unknown cudaMemcpyKind ",
                    static_cast<int>(kind));
  }
  if (!asynchronous) {
    if (const cudaError_t refused = refused_by_capture(fn)) return refused;
  }
  if (count == 0) return cudaSuccess;
  if (!dst || !src) return failed(cudaErrorInvalidValue, fn, ": null pointer");
  if (auto why = check_range(r, dst, count, dst_side, "destination"); !why.empty()) {
    return failed(cudaErrorInvalidValue, fn, ": ", why);
  }
  if (auto why = check_range(r, src, count, src_side, "source"); !why.empty()) {
    return failed(cudaErrorInvalidValue, fn, ": ", why);
  }
  if (asynchronous && capture::capturing(stream)) {
    // A graph's copy runs at each launch; from pageable memory the driver cannot defer it.
    const auto pageable = [&r](const void* p) {
      return !find_device(r, p) && !is_page_locked(r, p);
    };
    if (pageable(dst) || pageable(src)) {
      return failed(
          cudaErrorStreamCaptureUnsupported,
          capture::on_capturing_stream("cudaMemcpyAsync to or from pageable host memory", stream));
    }
    capture::record(stream, [dst, src, count] { std::memcpy(dst, src, count); });
    return cudaSuccess;
  }
  // A DMA from page-locked memory queues behind earlier ones; any other copy is done now, so
  // those land first (stream order).
  if (asynchronous && find_device(r, dst) && is_page_locked(r, src)) {
    r.deferred.push_back({dst, src, count});
    ++r.deferred_queued;
    return cudaSuccess;
  }
  land_deferred_copies(r);
  lock.unlock();
  std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t set(const char* fn, void* dst, int value, std::size_t count, cudaStream_t stream,
                bool asynchronous) {
  g_memset_calls.fetch_add(1, std::memory_order_relaxed);
  Registry& r = registry();
  std::unique_lock lock(r.mu);
  if (!valid_stream(r, stream)) {
    return failed(cudaErrorInvalidResourceHandle, fn, ": stream ", addr(stream),
                  " is not a live stream");
  }
  if (!asynchronous) {
    if (const cudaError_t refused = refused_by_capture(fn)) return refused;
  }
  if (count == 0) return cudaSuccess;
  if (auto why = check_range(r, dst, count, Side::kDevice, "destination"); !why.empty()) {
    return failed(cudaErrorInvalidValue, fn, ": ", why);
  }
  if (asynchronous && capture::capturing(stream)) {
    capture::record(stream, [dst, value, count] { std::memset(dst, value, count); });
    return cudaSuccess;
  }
  land_deferred_copies(r);
  lock.unlock();
  std::memset(dst, value, count);
  return cudaSuccess;
}

std::size_t physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page)
                               : std::size_t{16} << 30;
}

// ---- GEMM helpers ----

float round_tf32(float x) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  u += 0xfffu + ((u >> 13) & 1u);
  return std::bit_cast<float>(u & ~0x1fffu);
}
float round_bf16(float x) {
  return float(builtin::__nv_bfloat16(x));
}
float round_half(float x) {
  return float(builtin::__half(x));
}

enum class InputRounding { kNone, kTf32, kBf16, kHalf };

// How the operands are rounded before the product: fp32 ones as the compute type's fast modes ask,
// or to TF32 under a cuBLAS handle's TF32 math mode (cuBLASLt has no math mode: its callers pass
// the default).
InputRounding input_rounding(cudaDataType type, cublasComputeType_t compute, cublasMath_t math) {
  if (type != CUDA_R_32F) return InputRounding::kNone;
  const bool tf32_mode = (math & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH;
  if (compute == CUBLAS_COMPUTE_32F_FAST_TF32 || (compute == CUBLAS_COMPUTE_32F && tf32_mode))
    return InputRounding::kTf32;
  if (compute == CUBLAS_COMPUTE_32F_FAST_16BF) return InputRounding::kBf16;
  if (compute == CUBLAS_COMPUTE_32F_FAST_16F) return InputRounding::kHalf;
  return InputRounding::kNone;
}

std::size_t type_size(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F:
      return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF:
      return 2;
    default:
      return 0;
  }
}

float load(cudaDataType t, const void* base, std::size_t i) {
  switch (t) {
    case CUDA_R_16BF: {
      builtin::__nv_bfloat16 v;
      std::memcpy(&v, static_cast<const char*>(base) + 2 * i, 2);
      return float(v);
    }
    case CUDA_R_16F: {
      builtin::__half v;
      std::memcpy(&v, static_cast<const char*>(base) + 2 * i, 2);
      return float(v);
    }
    default:
      return static_cast<const float*>(base)[i];
  }
}

void store(cudaDataType t, void* base, std::size_t i, float v) {
  switch (t) {
    case CUDA_R_16BF: {
      const builtin::__nv_bfloat16 h(v);
      std::memcpy(static_cast<char*>(base) + 2 * i, &h, 2);
      break;
    }
    case CUDA_R_16F: {
      const builtin::__half h(v);
      std::memcpy(static_cast<char*>(base) + 2 * i, &h, 2);
      break;
    }
    default:
      static_cast<float*>(base)[i] = v;
      break;
  }
}

struct Operand {
  cudaDataType type;
  const void* ptr;
  int rows;  // as stored (column-major)
  int cols;
  int ld;
  long long stride;
};

// Elements spanned by one stored matrix, padding between columns included.
std::size_t extent(const Operand& o) {
  if (o.rows == 0 || o.cols == 0) return 0;
  return static_cast<std::size_t>(o.ld) * static_cast<std::size_t>(o.cols - 1) +
         static_cast<std::size_t>(o.rows);
}

std::string check_operand(const Operand& o, int batch, const char* name) {
  const std::size_t elems = extent(o);
  if (elems == 0 || batch == 0) return {};
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  const std::size_t bytes = elems * type_size(o.type);
  const std::size_t esize = type_size(o.type);
  for (const long long b : {0LL, static_cast<long long>(batch - 1)}) {
    const auto* p = static_cast<const char*>(o.ptr) + b * o.stride * static_cast<long long>(esize);
    if (auto why = check_range(r, p, bytes, Side::kDevice, name); !why.empty()) {
      return batch > 1 ? str_cat(why, " (batch ", b, ")") : why;
    }
  }
  return {};
}

// One matrix as dense fp32 (ld = rows), rounded as the compute type demands.
std::vector<float> widen(const Operand& o, const void* ptr, InputRounding rounding) {
  std::vector<float> out(static_cast<std::size_t>(o.rows) * static_cast<std::size_t>(o.cols));
  for (int c = 0; c < o.cols; ++c) {
    for (int r = 0; r < o.rows; ++r) {
      float v = load(o.type, ptr, static_cast<std::size_t>(c) * o.ld + r);
      switch (rounding) {
        case InputRounding::kTf32:
          v = round_tf32(v);
          break;
        case InputRounding::kBf16:
          v = round_bf16(v);
          break;
        case InputRounding::kHalf:
          v = round_half(v);
          break;
        case InputRounding::kNone:
          break;
      }
      out[static_cast<std::size_t>(c) * o.rows + r] = v;
    }
  }
  return out;
}

CBLAS_TRANSPOSE to_cblas(cublasOperation_t op) {
  return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;  // real matrices: C == T
}

cublasStatus_t gemm(const char* fn, cublasHandle_t handle, cublasOperation_t transa,
                    cublasOperation_t transb, int m, int n, int k, const void* alpha_p,
                    const void* A, cudaDataType Atype, int lda, long long strideA, const void* B,
                    cudaDataType Btype, int ldb, long long strideB, const void* beta_p, void* C,
                    cudaDataType Ctype, int ldc, long long strideC, int batch,
                    cublasComputeType_t compute, bool sgemm) {
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cudaStream_t stream = nullptr;
  {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    if (!handle || !r.handles.count(handle)) {
      return blas_failed(CUBLAS_STATUS_NOT_INITIALIZED, fn, ": handle ", addr(handle),
                         " was not created by cublasCreate (or was destroyed)");
    }
    math = handle->math;
    stream = handle->stream;
    land_deferred_copies(r);
  }
  g_gemm_calls.fetch_add(1, std::memory_order_relaxed);
  const auto valid_op = [](cublasOperation_t op) {
    return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
  };
  if (!valid_op(transa) || !valid_op(transb)) {
    return blas_failed(CUBLAS_STATUS_INVALID_VALUE, fn, ": invalid cublasOperation_t");
  }
  if (m < 0 || n < 0 || k < 0 || batch < 0) {
    return blas_failed(CUBLAS_STATUS_INVALID_VALUE, fn, ": negative size m=", m, " n=", n, " k=", k,
                       " batchCount=", batch);
  }
  const Operand a{Atype, A,      transa == CUBLAS_OP_N ? m : k, transa == CUBLAS_OP_N ? k : m,
                  lda,   strideA};
  const Operand b{Btype, B,      transb == CUBLAS_OP_N ? k : n, transb == CUBLAS_OP_N ? n : k,
                  ldb,   strideB};
  const Operand c{Ctype, C, m, n, ldc, strideC};
  if (lda < std::max(1, a.rows) || ldb < std::max(1, b.rows) || ldc < std::max(1, m)) {
    return blas_failed(CUBLAS_STATUS_INVALID_VALUE, fn, ": leading dimension too small (lda=", lda,
                       " needs >= ", std::max(1, a.rows), ", ldb=", ldb,
                       " needs >= ", std::max(1, b.rows), ", ldc=", ldc,
                       " needs >= ", std::max(1, m), ")");
  }
  if (!blas::is_32f_compute(compute)) {
    return blas_failed(CUBLAS_STATUS_NOT_SUPPORTED, fn, ": compute type ",
                       static_cast<int>(compute), " is not emulated (only the 32F family)");
  }
  if (type_size(Atype) == 0 || Atype != Btype || !(Ctype == Atype || Ctype == CUDA_R_32F)) {
    return blas_failed(CUBLAS_STATUS_NOT_SUPPORTED, fn,
                       ": type combination A=", static_cast<int>(Atype),
                       " B=", static_cast<int>(Btype), " C=", static_cast<int>(Ctype),
                       " is not supported (A and B 32F, 16F or 16BF alike; C the same or 32F)");
  }
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  if (!alpha_p || !beta_p) return blas_failed(CUBLAS_STATUS_INVALID_VALUE, fn, ": null alpha/beta");
  for (const auto& [op, name] : {std::pair{&a, "A"}, std::pair{&b, "B"}, std::pair{&c, "C"}}) {
    if (op == &a || op == &b) {
      if (k == 0) continue;
    }
    if (auto why = check_operand(*op, batch, name); !why.empty()) {
      return blas_failed(CUBLAS_STATUS_EXECUTION_FAILED, fn, ": ", why);
    }
  }
  const float alpha = *static_cast<const float*>(alpha_p);
  const float beta = *static_cast<const float*>(beta_p);

  const InputRounding rounding = input_rounding(Atype, compute, math);
  (void)sgemm;

  const std::size_t a_es = type_size(Atype);
  const std::size_t c_es = type_size(Ctype);
  // Captured into a graph, the product is taken at each launch, from what memory holds then.
  const auto run = [=] {
    for (int i = 0; i < batch; ++i) {
      const char* pa = static_cast<const char*>(A) + static_cast<long long>(a_es) * strideA * i;
      const char* pb = static_cast<const char*>(B) + static_cast<long long>(a_es) * strideB * i;
      char* pc = static_cast<char*>(C) + static_cast<long long>(c_es) * strideC * i;
      const bool direct_inputs = Atype == CUDA_R_32F && rounding == InputRounding::kNone;
      std::vector<float> wa;
      std::vector<float> wb;
      const float* fa = reinterpret_cast<const float*>(pa);
      const float* fb = reinterpret_cast<const float*>(pb);
      int la = lda;
      int lb = ldb;
      if (!direct_inputs && k > 0) {
        wa = widen(a, pa, rounding);
        wb = widen(b, pb, rounding);
        fa = wa.data();
        fb = wb.data();
        la = std::max(1, a.rows);
        lb = std::max(1, b.rows);
      }
      if (Ctype == CUDA_R_32F) {
        cblas_sgemm(CblasColMajor, to_cblas(transa), to_cblas(transb), m, n, k, alpha, fa, la, fb,
                    lb, beta, reinterpret_cast<float*>(pc), ldc);
        continue;
      }
      // Low-precision output: accumulate in fp32, round once.
      std::vector<float> wc(static_cast<std::size_t>(m) * static_cast<std::size_t>(n), 0.0f);
      if (beta != 0.0f) {
        for (int col = 0; col < n; ++col) {
          for (int row = 0; row < m; ++row) {
            wc[static_cast<std::size_t>(col) * m + row] =
                load(Ctype, pc, static_cast<std::size_t>(col) * ldc + row);
          }
        }
      }
      cblas_sgemm(CblasColMajor, to_cblas(transa), to_cblas(transb), m, n, k, alpha, fa, la, fb, lb,
                  beta, wc.data(), m);
      for (int col = 0; col < n; ++col) {
        for (int row = 0; row < m; ++row) {
          store(Ctype, pc, static_cast<std::size_t>(col) * ldc + row,
                wc[static_cast<std::size_t>(col) * m + row]);
        }
      }
    }
  };
  if (capture::capturing(stream)) {
    capture::record(stream, run);
    return CUBLAS_STATUS_SUCCESS;
  }
  run();
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

namespace blas {

bool is_32f_compute(cublasComputeType_t compute) {
  switch (compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_16F:
      return true;
    default:
      return false;
  }
}

std::size_t element_size(cudaDataType type) {
  return type_size(type);
}
float load_element(cudaDataType type, const void* base, std::size_t index) {
  return load(type, base, index);
}
void store_element(cudaDataType type, void* base, std::size_t index, float value) {
  store(type, base, index, value);
}

std::string device_range_problem(const void* p, std::size_t bytes, const char* role) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  return check_range(r, p, bytes, Side::kDevice, role);
}

void begin_gemm() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  land_deferred_copies(r);
  g_gemm_calls.fetch_add(1, std::memory_order_relaxed);
}

cublasStatus_t fail(cublasStatus_t status, std::string detail) {
  return blas_failed(status, std::move(detail));
}

void product_fp32(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                  const void* A, int lda, const void* B, int ldb, cudaDataType type,
                  cublasComputeType_t compute, float* out) {
  std::fill(out, out + static_cast<std::size_t>(m) * static_cast<std::size_t>(n), 0.0f);
  if (m == 0 || n == 0 || k == 0) return;
  const InputRounding rounding = input_rounding(type, compute, CUBLAS_DEFAULT_MATH);
  const Operand a{type, A, transa == CUBLAS_OP_N ? m : k, transa == CUBLAS_OP_N ? k : m, lda, 0};
  const Operand b{type, B, transb == CUBLAS_OP_N ? k : n, transb == CUBLAS_OP_N ? n : k, ldb, 0};
  const std::vector<float> wa = widen(a, A, rounding);
  const std::vector<float> wb = widen(b, B, rounding);
  cblas_sgemm(CblasColMajor, to_cblas(transa), to_cblas(transb), m, n, k, 1.0f, wa.data(),
              std::max(1, a.rows), wb.data(), std::max(1, b.rows), 0.0f, out, m);
}

}  // namespace blas

cudaError_t runtime_failure(cudaError_t error, std::string detail) {
  return failed(error, std::move(detail));
}

bool live_stream(cudaStream_t stream) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  return valid_stream(r, stream);
}

void note_graph_launch() {
  g_graph_launches.fetch_add(1, std::memory_order_relaxed);
}

void land_pending_copies() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  land_deferred_copies(r);
}

RuntimeStats runtime_stats() {
  RuntimeStats s;
  s.malloc_calls = g_malloc_calls.load();
  s.free_calls = g_free_calls.load();
  s.host_alloc_calls = g_host_alloc_calls.load();
  s.host_free_calls = g_host_free_calls.load();
  s.memcpy_calls = g_memcpy_calls.load();
  s.memset_calls = g_memset_calls.load();
  s.gemm_calls = g_gemm_calls.load();
  s.sync_calls = g_sync_calls.load();
  s.graph_launches = g_graph_launches.load();
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  s.live_allocations = r.device.size();
  s.live_bytes = r.live_bytes;
  s.peak_bytes = r.peak_bytes;
  return s;
}

void reset_runtime_stats() {
  for (auto* c :
       {&g_malloc_calls, &g_free_calls, &g_host_alloc_calls, &g_host_free_calls, &g_memcpy_calls,
        &g_memset_calls, &g_gemm_calls, &g_sync_calls, &g_graph_launches}) {
    c->store(0);
  }
}

std::string last_error_detail() {
  return t_detail;
}

}  // namespace sp::emu

namespace sp::cuda_emu {

using emu::failed;
using emu::registry;

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError:
      return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection:
      return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported:
      return "cudaErrorNotSupported";
    case cudaErrorIllegalState:
      return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureIsolation:
      return "cudaErrorStreamCaptureIsolation";
    case cudaErrorCapturedEvent:
      return "cudaErrorCapturedEvent";
    case cudaErrorStreamCaptureWrongThread:
      return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorUnknown:
      return "cudaErrorUnknown";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInitializationError:
      return "initialization error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection:
      return "invalid copy direction for memcpy";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorNotSupported:
      return "operation not supported";
    case cudaErrorIllegalState:
      return "the resource is not in a valid state to perform the requested operation";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureIsolation:
      return "dependency created on uncaptured work in another stream";
    case cudaErrorCapturedEvent:
      return "operation not permitted on an event last recorded in a capturing stream";
    case cudaErrorStreamCaptureWrongThread:
      return "attempt to terminate a thread-local capture sequence from another thread";
    case cudaErrorUnknown:
      return "unknown error";
  }
  return "unrecognized error code";
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::t_last_error;
  emu::t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  return emu::t_last_error;
}

cudaError_t cudaMalloc(void** ptr, std::size_t size) {
  if (!ptr) return failed(cudaErrorInvalidValue, "cudaMalloc: null output pointer");
  *ptr = nullptr;
  if (const cudaError_t refused = emu::refused_by_capture("cudaMalloc")) return refused;
  if (size == 0) {
    emu::g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
    return cudaSuccess;
  }
  void* p = ::operator new (size, std::align_val_t{emu::kDeviceAlignment}, std::nothrow);
  if (!p) return failed(cudaErrorMemoryAllocation, "cudaMalloc: cannot allocate ", size, " bytes");
  auto& r = registry();
  {
    std::lock_guard lock(r.mu);
    r.device.emplace(reinterpret_cast<std::uintptr_t>(p), size);
    r.live_bytes += size;
    r.peak_bytes = std::max(r.peak_bytes, r.live_bytes);
  }
  emu::g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (const cudaError_t refused = emu::refused_by_capture("cudaFree")) return refused;
  if (!ptr) return cudaSuccess;
  auto& r = registry();
  {
    std::lock_guard lock(r.mu);
    const auto it = r.device.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == r.device.end()) {
      return failed(cudaErrorInvalidValue, "cudaFree(", ptr,
                    "): not a pointer returned by cudaMalloc, or already freed");
    }
    land_deferred_copies(r);  // cudaFree waits for the device
    r.live_bytes -= it->second;
    r.device.erase(it);
  }
  ::operator delete (ptr, std::align_val_t{emu::kDeviceAlignment});
  emu::g_free_calls.fetch_add(1, std::memory_order_relaxed);
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, std::size_t size, unsigned int flags) {
  if (!ptr) return failed(cudaErrorInvalidValue, "cudaHostAlloc: null output pointer");
  *ptr = nullptr;
  if (const cudaError_t refused = emu::refused_by_capture("cudaHostAlloc")) return refused;
  (void)flags;
  void* p = ::operator new (std::max<std::size_t>(size, 1), std::align_val_t{emu::kDeviceAlignment},
                            std::nothrow);
  if (!p) {
    return failed(cudaErrorMemoryAllocation, "cudaMallocHost: cannot allocate ", size, " bytes");
  }
  {
    auto& r = registry();
    std::lock_guard lock(r.mu);
    r.host.emplace(p, size);
  }
  emu::g_host_alloc_calls.fetch_add(1, std::memory_order_relaxed);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, std::size_t size) {
  return cudaHostAlloc(ptr, size, cudaHostAllocDefault);
}

cudaError_t cudaFreeHost(void* ptr) {
  if (const cudaError_t refused = emu::refused_by_capture("cudaFreeHost")) return refused;
  if (!ptr) return cudaSuccess;
  {
    auto& r = registry();
    std::lock_guard lock(r.mu);
    land_deferred_copies(r);  // cudaFreeHost waits for the device
    if (r.host.erase(ptr) == 0) {
      return failed(cudaErrorInvalidValue, "cudaFreeHost(", ptr,
                    "): not a pointer returned by cudaMallocHost/cudaHostAlloc, or already freed");
    }
  }
  ::operator delete (ptr, std::align_val_t{emu::kDeviceAlignment});
  emu::g_host_free_calls.fetch_add(1, std::memory_order_relaxed);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
  if (!attributes) return failed(cudaErrorInvalidValue, "cudaPointerGetAttributes: null output");
  *attributes = {cudaMemoryTypeUnregistered, -1, nullptr, nullptr};
  const auto address = reinterpret_cast<std::uintptr_t>(ptr);
  auto& r = registry();
  std::lock_guard lock(r.mu);
  auto device = r.device.upper_bound(address);
  if (device != r.device.begin() &&
      address < std::prev(device)->first + std::prev(device)->second) {
    *attributes = {cudaMemoryTypeDevice, 0, const_cast<void*>(ptr), nullptr};
    return cudaSuccess;
  }
  if (emu::is_page_locked(r, ptr))
    *attributes = {cudaMemoryTypeHost, 0, const_cast<void*>(ptr), const_cast<void*>(ptr)};
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return failed(cudaErrorInvalidValue, "cudaMemGetInfo: null");
  const std::size_t total = emu::physical_memory();
  std::size_t used = 0;
  {
    auto& r = registry();
    std::lock_guard lock(r.mu);
    used = r.live_bytes;
  }
  *total_bytes = total;
  *free_bytes = used < total ? total - used : 0;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind) {
  return emu::copy("cudaMemcpy", dst, src, count, kind, nullptr, false);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return emu::copy("cudaMemcpyAsync", dst, src, count, kind, stream, true);
}

cudaError_t cudaMemset(void* dst, int value, std::size_t count) {
  return emu::set("cudaMemset", dst, value, count, nullptr, false);
}

cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t count, cudaStream_t stream) {
  return emu::set("cudaMemsetAsync", dst, value, count, stream, true);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (!stream) return failed(cudaErrorInvalidValue, "cudaStreamCreate: null output pointer");
  auto* s = new CUstream_st{flags};
  auto& r = registry();
  std::lock_guard lock(r.mu);
  r.streams.insert(s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  auto& r = registry();
  {
    std::lock_guard lock(r.mu);
    if (!stream || r.streams.erase(stream) == 0) {
      return failed(cudaErrorInvalidResourceHandle, "cudaStreamDestroy(", emu::addr(stream),
                    "): not a live stream");
    }
  }
  delete stream;
  return cudaSuccess;
}

namespace {

// Kernels and cuBLAS calls finish before they return; only copies from page-locked memory may
// still be pending. Synchronising lands them; querying reports them (cudaErrorNotReady, which,
// as the real runtime may, the emulator also leaves for cudaGetLastError: callers must clear it).
cudaError_t check_live_stream(cudaStream_t stream, const char* call, bool synchronize) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  if (!emu::valid_stream(r, stream))
    return failed(cudaErrorInvalidResourceHandle, call, "(", emu::addr(stream),
                  "): not a live stream");
  if (auto why = emu::capture::on_capturing_stream(call, stream); !why.empty())
    return failed(cudaErrorStreamCaptureUnsupported, why);
  if (synchronize) emu::land_deferred_copies(r);
  if (r.deferred.empty()) return cudaSuccess;
  return failed(cudaErrorNotReady, call, "(", emu::addr(stream), "): copies still pending");
}

}  // namespace

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  emu::g_sync_calls.fetch_add(1, std::memory_order_relaxed);
  return check_live_stream(stream, "cudaStreamSynchronize", true);
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return check_live_stream(stream, "cudaStreamQuery", false);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  if (!emu::valid_stream(r, stream) || !event || !r.events.count(event)) {
    return failed(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: stream ", emu::addr(stream),
                  " or event ", emu::addr(event), " is not live");
  }
  if (emu::capture::event_captured(event)) {
    const void* capture = emu::capture::capture_of_event(event);
    if (capture == stream) return cudaSuccess;  // stream order already implies it
    if (capture != nullptr) {
      return failed(cudaErrorNotSupported, "cudaStreamWaitEvent: joining stream ",
                    emu::addr(stream), " to the capture of stream ", capture,
                    " (a fork) is not emulated");
    }
    return emu::refused_for_captured_event("cudaStreamWaitEvent", event);
  }
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (!event) return failed(cudaErrorInvalidValue, "cudaEventCreate: null output pointer");
  auto* e = new CUevent_st{};
  e->flags = flags;
  auto& r = registry();
  std::lock_guard lock(r.mu);
  r.events.insert(e);
  *event = e;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  if (!event || !r.events.count(event) || !emu::valid_stream(r, stream)) {
    return failed(cudaErrorInvalidResourceHandle, "cudaEventRecord: event ", emu::addr(event),
                  " or stream ", emu::addr(stream), " is not live");
  }
  emu::capture::note_event_record(event, stream);
  if (emu::capture::capturing(stream)) return cudaSuccess;  // a dependency inside the graph
  event->recorded = true;
  event->when = std::chrono::steady_clock::now();
  event->copies_before = r.deferred_queued;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  if (!event || !r.events.count(event)) {
    return failed(cudaErrorInvalidResourceHandle, "cudaEventSynchronize(", emu::addr(event),
                  "): not a live event");
  }
  if (const cudaError_t refused = emu::refused_for_captured_event("cudaEventSynchronize", event))
    return refused;
  if (r.deferred_landed < event->copies_before) emu::land_deferred_copies(r);
  return cudaSuccess;
}

// Complete once every copy queued before the event was recorded has landed.
cudaError_t cudaEventQuery(cudaEvent_t event) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  if (!event || !r.events.count(event)) {
    return failed(cudaErrorInvalidResourceHandle, "cudaEventQuery(", emu::addr(event),
                  "): not a live event");
  }
  if (const cudaError_t refused = emu::refused_for_captured_event("cudaEventQuery", event))
    return refused;
  if (r.deferred_landed >= event->copies_before) return cudaSuccess;
  // Left for cudaGetLastError too, as the real runtime may: callers must clear it.
  return failed(cudaErrorNotReady, "cudaEventQuery(", emu::addr(event), "): copies still pending");
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return failed(cudaErrorInvalidValue, "cudaEventElapsedTime: null output pointer");
  auto& r = registry();
  std::lock_guard lock(r.mu);
  for (cudaEvent_t e : {start, end}) {
    if (!e || !r.events.count(e)) {
      return failed(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event ", emu::addr(e),
                    " is not live");
    }
    if (const cudaError_t refused = emu::refused_for_captured_event("cudaEventElapsedTime", e))
      return refused;
    if (!e->recorded || (e->flags & cudaEventDisableTiming)) {
      return failed(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event ", emu::addr(e),
                    " was never recorded or has timing disabled");
    }
  }
  *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  auto& r = registry();
  {
    std::lock_guard lock(r.mu);
    if (!event || r.events.erase(event) == 0) {
      return failed(cudaErrorInvalidResourceHandle, "cudaEventDestroy(", emu::addr(event),
                    "): not a live event");
    }
  }
  emu::capture::forget_event(event);
  delete event;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return failed(cudaErrorInvalidValue, "cudaGetDeviceCount: null output pointer");
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device != 0) {
    return failed(cudaErrorInvalidDevice, "cudaSetDevice(", device,
                  "): the emulator has one device, 0");
  }
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (!device) return failed(cudaErrorInvalidValue, "cudaGetDevice: null output pointer");
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop) return failed(cudaErrorInvalidValue, "cudaGetDeviceProperties: null output pointer");
  if (device != 0) {
    return failed(cudaErrorInvalidDevice, "cudaGetDeviceProperties: no device ", device);
  }
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "%s", "softprompt CUDA emulator");
  prop->totalGlobalMem = emu::physical_memory();
  prop->sharedMemPerBlock = 48 * 1024;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->memPitch = 2147483647;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->totalConstMem = 65536;
  prop->major = 8;
  prop->minor = 0;
  prop->textureAlignment = 512;
  prop->multiProcessorCount = 108;
  prop->integrated = 0;
  prop->canMapHostMemory = 1;
  prop->concurrentKernels = 1;
  prop->ECCEnabled = 0;
  prop->asyncEngineCount = 2;
  prop->unifiedAddressing = 1;
  prop->memoryBusWidth = 5120;
  prop->l2CacheSize = 40 * 1024 * 1024;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->sharedMemPerMultiprocessor = 228 * 1024;
  prop->regsPerMultiprocessor = 65536;
  prop->managedMemory = 1;
  prop->sharedMemPerBlockOptin = emu::kSmemOptInLimit;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->reservedSharedMemPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!value) return failed(cudaErrorInvalidValue, "cudaDeviceGetAttribute: null output pointer");
  cudaDeviceProp p;
  if (const cudaError_t e = cudaGetDeviceProperties(&p, device); e != cudaSuccess) return e;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = p.maxThreadsPerBlock;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(p.sharedMemPerBlock);
      break;
    case cudaDevAttrWarpSize:
      *value = p.warpSize;
      break;
    case cudaDevAttrMultiProcessorCount:
      *value = p.multiProcessorCount;
      break;
    case cudaDevAttrL2CacheSize:
      *value = p.l2CacheSize;
      break;
    case cudaDevAttrMaxThreadsPerMultiProcessor:
      *value = p.maxThreadsPerMultiProcessor;
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *value = p.major;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *value = p.minor;
      break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = static_cast<int>(p.sharedMemPerMultiprocessor);
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(p.sharedMemPerBlockOptin);
      break;
    default:
      return failed(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute ",
                    static_cast<int>(attr), " is not emulated");
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  emu::g_sync_calls.fetch_add(1, std::memory_order_relaxed);
  if (const cudaError_t refused = emu::refused_by_capture("cudaDeviceSynchronize")) return refused;
  emu::land_pending_copies();
  return cudaSuccess;
}
cudaError_t cudaDeviceReset() {
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (!version) return failed(cudaErrorInvalidValue, "cudaDriverGetVersion: null output pointer");
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (!version) return failed(cudaErrorInvalidValue, "cudaRuntimeGetVersion: null output pointer");
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func) return failed(cudaErrorInvalidValue, "cudaFuncSetAttribute: null function");
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      if (value < 0 || value > emu::kSmemOptInLimit) {
        return failed(cudaErrorInvalidValue, "cudaFuncSetAttribute: MaxDynamicSharedMemorySize ",
                      value, " outside 0..", emu::kSmemOptInLimit);
      }
      emu::detail::note_smem_opt_in(static_cast<std::size_t>(value));
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      if (value < -1 || value > 100) {
        return failed(cudaErrorInvalidValue, "cudaFuncSetAttribute: carveout ", value,
                      " outside -1..100");
      }
      return cudaSuccess;
  }
  return failed(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute ", static_cast<int>(attr),
                " is not emulated");
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* func,
                                                          int block_size,
                                                          std::size_t dynamic_smem_bytes) {
  if (!blocks || !func || block_size <= 0 || block_size > 1024) {
    return failed(cudaErrorInvalidValue,
                  "cudaOccupancyMaxActiveBlocksPerMultiprocessor: bad "
                  "argument (block size ",
                  block_size, ")");
  }
  int n = std::min(32, 2048 / block_size);
  if (dynamic_smem_bytes > 0) {
    n = std::min<int>(n, static_cast<int>(228 * 1024 / (dynamic_smem_bytes + 1024)));
  }
  *blocks = n;
  return cudaSuccess;
}

// ---- cuBLAS ----

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (!handle) return emu::blas_failed(CUBLAS_STATUS_INVALID_VALUE, "cublasCreate: null");
  auto* h = new cublasContext{};
  auto& r = registry();
  std::lock_guard lock(r.mu);
  r.handles.insert(h);
  *handle = h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  auto& r = registry();
  {
    std::lock_guard lock(r.mu);
    if (!handle || r.handles.erase(handle) == 0) {
      return emu::blas_failed(CUBLAS_STATUS_NOT_INITIALIZED, "cublasDestroy(", emu::addr(handle),
                              "): not a live handle");
    }
  }
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

namespace {
// Runs f(handle) under the registry lock if the handle is live.
template <class F>
cublasStatus_t with_handle(const char* fn, cublasHandle_t handle, F&& f) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  if (!handle || !r.handles.count(handle)) {
    return emu::blas_failed(CUBLAS_STATUS_NOT_INITIALIZED, fn, ": handle ", emu::addr(handle),
                            " is not live");
  }
  return f(r);
}
}  // namespace

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  return with_handle("cublasSetStream", handle, [&](emu::Registry& r) {
    if (!emu::valid_stream(r, stream)) {
      return emu::blas_failed(CUBLAS_STATUS_INVALID_VALUE, "cublasSetStream: stream ",
                              emu::addr(stream), " is not live");
    }
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
  });
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  return with_handle("cublasGetStream", handle, [&](emu::Registry&) {
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
  });
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  return with_handle("cublasSetMathMode", handle, [&](emu::Registry&) {
    const int base = mode & 0xf;
    if (base > CUBLAS_TF32_TENSOR_OP_MATH || (mode & ~0x1f) != 0) {
      return emu::blas_failed(CUBLAS_STATUS_INVALID_VALUE, "cublasSetMathMode: unknown mode ",
                              static_cast<int>(mode));
    }
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
  });
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  return with_handle("cublasGetMathMode", handle, [&](emu::Registry&) {
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
  });
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
  return with_handle("cublasSetPointerMode", handle, [&](emu::Registry&) {
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) {
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
  });
}

cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t* mode) {
  return with_handle("cublasGetPointerMode", handle, [&](emu::Registry&) {
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
  });
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void*, std::size_t) {
  return with_handle("cublasSetWorkspace", handle,
                     [&](emu::Registry&) { return CUBLAS_STATUS_SUCCESS; });
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
  }
  return "unknown error";
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc) {
  return emu::gemm("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B,
                   CUDA_R_32F, ldb, 0, beta, C, CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F, true);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long int strideA, const float* B, int ldb,
                                         long long int strideB, const float* beta, float* C,
                                         int ldc, long long int strideC, int batchCount) {
  return emu::gemm("cublasSgemmStridedBatched", handle, transa, transb, m, n, k, alpha, A,
                   CUDA_R_32F, lda, strideA, B, CUDA_R_32F, ldb, strideB, beta, C, CUDA_R_32F, ldc,
                   strideC, batchCount, CUBLAS_COMPUTE_32F, true);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t) {
  return emu::gemm("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B,
                   Btype, ldb, 0, beta, C, Ctype, ldc, 0, 1, computeType, false);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B,
                                          cudaDataType Btype, int ldb, long long int strideB,
                                          const void* beta, void* C, cudaDataType Ctype, int ldc,
                                          long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return emu::gemm("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A, Atype,
                   lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount,
                   computeType, false);
}

}  // namespace sp::cuda_emu
