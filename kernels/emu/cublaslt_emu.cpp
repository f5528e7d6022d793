// kernels/emu/cublaslt_emu.cpp: the emulated cuBLASLt subset of kernels/emu/cublaslt_emu.h. The
// product is the emulated cuBLAS's (OpenBLAS, fp32 accumulation); the epilogue runs on each fp32
// result before its single rounding to the output type (our model of a fused epilogue: the
// documentation gives the order of bias and activation, not where results are rounded).
#include "kernels/emu/cublaslt_emu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "kernels/emu/blas_internal.h"
#include "kernels/emu/capture_internal.h"

namespace sp::cuda_emu {

struct cublasLtContext {};

struct cublasLtMatmulDescOpaque_t {
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType scale_type = CUDA_R_32F;
  cublasOperation_t transa = CUBLAS_OP_N;
  cublasOperation_t transb = CUBLAS_OP_N;
  std::uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int bias_type = -1;  // -1: D's type
  void* aux = nullptr;
  std::int64_t aux_ld = 0;
};

struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType type = CUDA_R_32F;
  std::uint64_t rows = 0;
  std::uint64_t cols = 0;
  std::int64_t ld = 0;
};

struct cublasLtMatmulPreferenceOpaque_t {
  std::uint64_t max_workspace = 0;
  std::uint32_t min_alignment[4] = {256, 256, 256, 256};  // A, B, C, D
};

namespace {

namespace blas = ::sp::emu::blas;

struct Handles {
  std::mutex mu;
  std::unordered_set<const void*> live;
};
Handles& handles() {
  static Handles h;
  return h;
}
std::atomic<int> g_next_matmul_failure{CUBLAS_STATUS_SUCCESS};

bool live(cublasLtHandle_t handle) {
  std::lock_guard lock(handles().mu);
  return handle != nullptr && handles().live.count(handle) > 0;
}

template <class T>
cublasStatus_t read_attribute(const char* fn, int attr, const void* buf, std::size_t size, T* out) {
  if (!buf || size != sizeof(T)) {
    return blas::fail(CUBLAS_STATUS_INVALID_VALUE,
                      std::string(fn) + ": attribute " + std::to_string(attr) + " needs " +
                          std::to_string(sizeof(T)) + " bytes, got " + std::to_string(size) +
                          (buf ? "" : " (null buffer)"));
  }
  std::memcpy(out, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t not_emulated(const char* fn, int attr) {
  return blas::fail(CUBLAS_STATUS_NOT_SUPPORTED,
                    std::string(fn) + ": attribute " + std::to_string(attr) + " is not emulated");
}

bool is_emulated_epilogue(std::uint32_t e) {
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT:
    case CUBLASLT_EPILOGUE_RELU:
    case CUBLASLT_EPILOGUE_RELU_BIAS:
    case CUBLASLT_EPILOGUE_BIAS:
    case CUBLASLT_EPILOGUE_GELU:
    case CUBLASLT_EPILOGUE_GELU_AUX:
    case CUBLASLT_EPILOGUE_GELU_BIAS:
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
    case CUBLASLT_EPILOGUE_DGELU:
      return true;
    default:
      return false;
  }
}
bool has_bias(std::uint32_t e) {
  return e != CUBLASLT_EPILOGUE_DGELU && (e & CUBLASLT_EPILOGUE_BIAS) != 0;
}
bool has_aux(std::uint32_t e) {
  return (e & 128u) != 0;
}

struct Shape {
  int m = 0, n = 0, k = 0;
};

// Why the library would offer no algorithm for this problem ("" when it would), and its shape.
std::string unsupported(const cublasLtMatmulDescOpaque_t& desc,
                        const cublasLtMatrixLayoutOpaque_t& a,
                        const cublasLtMatrixLayoutOpaque_t& b,
                        const cublasLtMatrixLayoutOpaque_t& c,
                        const cublasLtMatrixLayoutOpaque_t& d, Shape* shape) {
  const auto str = [](auto v) { return std::to_string(v); };
  if (desc.scale_type != CUDA_R_32F) return "scale type must be CUDA_R_32F";
  if (!blas::is_32f_compute(desc.compute)) {
    return "compute type " + str(int(desc.compute)) + " is not emulated (only the 32F family)";
  }
  if (blas::element_size(a.type) == 0 || a.type != b.type || c.type != a.type || d.type != a.type) {
    return "types A=" + str(int(a.type)) + " B=" + str(int(b.type)) + " C=" + str(int(c.type)) +
           " D=" + str(int(d.type)) + " are not emulated (one of 32F, 16F, 16BF for all four)";
  }
  if (!is_emulated_epilogue(desc.epilogue))
    return "epilogue " + str(desc.epilogue) + " is not emulated";
  const std::uint64_t m = d.rows, n = d.cols;
  const std::uint64_t a_k = desc.transa == CUBLAS_OP_N ? a.cols : a.rows;
  const std::uint64_t a_m = desc.transa == CUBLAS_OP_N ? a.rows : a.cols;
  const std::uint64_t b_k = desc.transb == CUBLAS_OP_N ? b.rows : b.cols;
  const std::uint64_t b_n = desc.transb == CUBLAS_OP_N ? b.cols : b.rows;
  if (a_m != m || b_n != n || a_k != b_k || c.rows != m || c.cols != n) {
    return "layouts disagree: op(A) " + str(a_m) + "x" + str(a_k) + ", op(B) " + str(b_k) + "x" +
           str(b_n) + ", C " + str(c.rows) + "x" + str(c.cols) + ", D " + str(m) + "x" + str(n);
  }
  for (const auto* l : {&a, &b, &c, &d}) {
    if (l->ld < std::int64_t(std::max<std::uint64_t>(l->rows, 1)) || l->rows > 0x7fffffff ||
        l->cols > 0x7fffffff) {
      return "leading dimension " + str(l->ld) + " of a " + str(l->rows) + "x" + str(l->cols) +
             " layout is invalid";
    }
  }
  if (has_bias(desc.epilogue)) {
    if (desc.bias_type != -1 && desc.bias_type != int(d.type)) {
      return "bias type " + str(desc.bias_type) + " differs from D's (only D's is emulated)";
    }
    if (reinterpret_cast<std::uintptr_t>(desc.bias) % 16 != 0) {
      return "the bias pointer is not 16-byte aligned";
    }
  }
  if (has_aux(desc.epilogue)) {
    if (desc.aux_ld % 8 != 0 || desc.aux_ld < std::int64_t(m)) {
      return "EPILOGUE_AUX_LD " + str(desc.aux_ld) + " must be divisible by 8 and >= D's rows (" +
             str(m) + ")";
    }
    if (reinterpret_cast<std::uintptr_t>(desc.aux) % 16 != 0) {
      return "the epilogue aux pointer is not 16-byte aligned";
    }
  }
  if (shape) *shape = Shape{int(m), int(n), int(a_k)};
  return {};
}

float gelu_tanh(float v) {
  const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
  return 0.5f * v * (1.0f + std::tanh(inner));
}
float gelu_tanh_derivative(float v) {
  const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
  const float t = std::tanh(inner);
  const float d_inner = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * v * v);
  return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * d_inner;
}

std::size_t span(const cublasLtMatrixLayoutOpaque_t& l) {
  if (l.rows == 0 || l.cols == 0) return 0;
  return (std::size_t(l.ld) * (l.cols - 1) + l.rows) * blas::element_size(l.type);
}

}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (!handle) return blas::fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtCreate: null");
  auto* h = new cublasLtContext{};
  std::lock_guard lock(handles().mu);
  handles().live.insert(h);
  *handle = h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  {
    std::lock_guard lock(handles().mu);
    if (!handle || handles().live.erase(handle) == 0) {
      return blas::fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy: not a live handle");
    }
  }
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType scale_type) {
  if (!desc) return blas::fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescCreate: null");
  *desc = new cublasLtMatmulDescOpaque_t{};
  (*desc)->compute = compute;
  (*desc)->scale_type = scale_type;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              std::size_t size) {
  const char* fn = "cublasLtMatmulDescSetAttribute";
  if (!desc) return blas::fail(CUBLAS_STATUS_INVALID_VALUE, std::string(fn) + ": null descriptor");
  std::int32_t i32 = 0;
  cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
      if ((s = read_attribute(fn, attr, buf, size, &i32)) == CUBLAS_STATUS_SUCCESS)
        desc->compute = cublasComputeType_t(i32);
      return s;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
      if ((s = read_attribute(fn, attr, buf, size, &i32)) == CUBLAS_STATUS_SUCCESS)
        desc->scale_type = cudaDataType(i32);
      return s;
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
      if ((s = read_attribute(fn, attr, buf, size, &i32)) != CUBLAS_STATUS_SUCCESS) return s;
      if (i32 != CUBLAS_OP_N && i32 != CUBLAS_OP_T && i32 != CUBLAS_OP_C) {
        return blas::fail(CUBLAS_STATUS_INVALID_VALUE,
                          std::string(fn) + ": invalid cublasOperation_t " + std::to_string(i32));
      }
      (attr == CUBLASLT_MATMUL_DESC_TRANSA ? desc->transa : desc->transb) = cublasOperation_t(i32);
      return s;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return read_attribute(fn, attr, buf, size, &desc->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return read_attribute(fn, attr, buf, size, &desc->bias);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
      return read_attribute(fn, attr, buf, size, &desc->aux);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
      return read_attribute(fn, attr, buf, size, &desc->aux_ld);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      return read_attribute(fn, attr, buf, size, &desc->bias_type);
  }
  return not_emulated(fn, int(attr));
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          std::uint64_t rows, std::uint64_t cols, std::int64_t ld) {
  if (!layout) return blas::fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutCreate: null");
  *layout = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout,
                                                cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, std::size_t size) {
  const char* fn = "cublasLtMatrixLayoutSetAttribute";
  if (!layout) return blas::fail(CUBLAS_STATUS_INVALID_VALUE, std::string(fn) + ": null layout");
  std::int32_t count = 0;
  if (attr != CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT) {
    return not_emulated(fn, int(attr));
  }
  if (auto s = read_attribute(fn, attr, buf, size, &count); s != CUBLAS_STATUS_SUCCESS) return s;
  if (count != 1) {
    return blas::fail(
        CUBLAS_STATUS_NOT_SUPPORTED,
        std::string(fn) + ": only a batch count of 1 is emulated, got " + std::to_string(count));
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) return blas::fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceCreate: null");
  *pref = new cublasLtMatmulPreferenceOpaque_t{};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, std::size_t size) {
  const char* fn = "cublasLtMatmulPreferenceSetAttribute";
  if (!pref) return blas::fail(CUBLAS_STATUS_INVALID_VALUE, std::string(fn) + ": null preference");
  if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES &&
      attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
    return read_attribute(fn, attr, buf, size,
                          &pref->min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES]);
  }
  if (attr != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
    return not_emulated(fn, int(attr));
  }
  return read_attribute(fn, attr, buf, size, &pref->max_workspace);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned) {
  const char* fn = "cublasLtMatmulAlgoGetHeuristic";
  if (!live(handle)) return blas::fail(CUBLAS_STATUS_NOT_INITIALIZED, std::string(fn) + ": handle");
  if (!desc || !a || !b || !c || !d || !pref || requested < 1 || !results || !returned) {
    return blas::fail(CUBLAS_STATUS_INVALID_VALUE, std::string(fn) + ": null or bad argument");
  }
  *returned = 0;
  if (auto why = unsupported(*desc, *a, *b, *c, *d, nullptr); !why.empty()) {
    return blas::fail(CUBLAS_STATUS_NOT_SUPPORTED, std::string(fn) + ": no algorithm: " + why);
  }
  for (const std::uint32_t alignment : pref->min_alignment) {
    if (alignment < 16) {
      return blas::fail(CUBLAS_STATUS_NOT_SUPPORTED,
                        std::string(fn) + ": no algorithm for matrices aligned to less than 16 " +
                            "bytes (a minimum alignment of " + std::to_string(alignment) + ")");
    }
  }
  results[0] = cublasLtMatmulHeuristicResult_t{};
  results[0].algo.data[0] = 0x736f6674;  // any nonzero tag: the emulator has one algorithm
  // The algorithm assumes the alignments it was chosen for; cublasLtMatmul checks them.
  for (int i = 0; i < 4; ++i) results[0].algo.data[1 + i] = pref->min_alignment[i];
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                              const void* alpha_p, const void* A, cublasLtMatrixLayout_t a_layout,
                              const void* B, cublasLtMatrixLayout_t b_layout, const void* beta_p,
                              const void* C, cublasLtMatrixLayout_t c_layout, void* D,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo,
                              void*, std::size_t, cudaStream_t stream) {
  const std::string fn = "cublasLtMatmul";
  if (!live(handle)) return blas::fail(CUBLAS_STATUS_NOT_INITIALIZED, fn + ": handle");
  if (!desc || !a_layout || !b_layout || !c_layout || !d_layout || !alpha_p || !beta_p || !algo) {
    return blas::fail(CUBLAS_STATUS_INVALID_VALUE, fn + ": null argument");
  }
  Shape shape;
  if (auto why = unsupported(*desc, *a_layout, *b_layout, *c_layout, *d_layout, &shape);
      !why.empty()) {
    return blas::fail(CUBLAS_STATUS_NOT_SUPPORTED, fn + ": " + why);
  }
  const float alpha = *static_cast<const float*>(alpha_p);
  const float beta = *static_cast<const float*>(beta_p);
  const std::uint32_t epilogue = desc->epilogue;
  const auto& dl = *d_layout;
  const cudaDataType type = dl.type;
  // The algorithm the heuristic chose assumes the alignments its preference declared.
  const void* matrices[4] = {A, B, C, D};
  const char* names = "ABCD";
  for (int i = 0; i < 4; ++i) {
    const std::uint64_t alignment = algo->data[1 + i];
    if (alignment == 0 || reinterpret_cast<std::uintptr_t>(matrices[i]) % alignment != 0) {
      return blas::fail(CUBLAS_STATUS_INVALID_VALUE,
                        fn + ": matrix " + names[i] + " is not aligned to the " +
                            std::to_string(alignment) +
                            " bytes its algorithm was chosen for (set CUBLASLT_MATMUL_PREF_MIN_"
                            "ALIGNMENT_" +
                            names[i] + "_BYTES)");
    }
  }
  struct DeviceRange {
    const void* start;
    std::size_t bytes;
    const char* name;
  };
  std::vector<DeviceRange> ranges = {{D, span(dl), "D"}};
  if (shape.k > 0) {
    ranges.push_back({A, span(*a_layout), "A"});
    ranges.push_back({B, span(*b_layout), "B"});
  }
  if (beta != 0.0f) ranges.push_back({C, span(*c_layout), "C"});
  const std::size_t es = blas::element_size(type);
  const std::size_t aux_bytes =
      dl.cols == 0 ? 0 : (std::size_t(desc->aux_ld) * (dl.cols - 1) + dl.rows) * es;
  if (has_bias(epilogue)) ranges.push_back({desc->bias, dl.rows * es, "bias"});
  if (has_aux(epilogue)) ranges.push_back({desc->aux, aux_bytes, "epilogue aux"});
  for (const DeviceRange& range : ranges) {
    if (range.bytes == 0) continue;
    if (auto why = blas::device_range_problem(range.start, range.bytes, range.name); !why.empty()) {
      return blas::fail(CUBLAS_STATUS_EXECUTION_FAILED, fn + ": " + why);
    }
  }
  if (const int injected = g_next_matmul_failure.exchange(CUBLAS_STATUS_SUCCESS);
      injected != CUBLAS_STATUS_SUCCESS) {
    return blas::fail(cublasStatus_t(injected), fn + ": failure injected by the test");
  }
  blas::begin_gemm();
  // Captured into a graph, the matmul runs at each launch, from what memory holds then; the
  // descriptors may be destroyed before, so what they say is copied now.
  const int m = shape.m, n = shape.n, k = shape.k;
  const auto run = [=, transa = desc->transa, transb = desc->transb, compute = desc->compute,
                    bias = desc->bias, aux = desc->aux, aux_ld = desc->aux_ld,
                    lda = int(a_layout->ld), ldb = int(b_layout->ld), ldc = c_layout->ld,
                    ldd = dl.ld] {
    std::vector<float> product(std::size_t(m) * std::size_t(n));
    blas::product_fp32(transa, transb, m, n, k, A, lda, B, ldb, type, compute, product.data());
    const bool gelu = (epilogue & CUBLASLT_EPILOGUE_GELU) != 0;
    for (int col = 0; col < n; ++col) {
      for (int row = 0; row < m; ++row) {
        float v = alpha * product[std::size_t(col) * m + row];
        if (beta != 0.0f) v += beta * blas::load_element(type, C, std::size_t(col) * ldc + row);
        const std::size_t out = std::size_t(col) * ldd + row;
        const std::size_t at = std::size_t(col) * aux_ld + row;
        if (has_bias(epilogue)) v += blas::load_element(type, bias, row);
        if (epilogue == CUBLASLT_EPILOGUE_DGELU) {
          v *= gelu_tanh_derivative(blas::load_element(type, aux, at));
        } else if (gelu) {
          if (has_aux(epilogue)) blas::store_element(type, aux, at, v);
          v = gelu_tanh(v);
        } else if ((epilogue & CUBLASLT_EPILOGUE_RELU) != 0) {
          v = std::max(v, 0.0f);
        }
        blas::store_element(type, D, out, v);
      }
    }
  };
  if (emu::capture::capturing(stream)) {
    emu::capture::record(stream, run);
    return CUBLAS_STATUS_SUCCESS;
  }
  run();
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace sp::cuda_emu

namespace sp::emu {

void fail_next_lt_matmul(cuda_emu::cublasStatus_t status) {
  cuda_emu::g_next_matmul_failure.store(status);
}

}  // namespace sp::emu
