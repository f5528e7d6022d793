// CPU GEMM on bf16 operands with fp32 accumulation and an fp32 result: oneDNN's matmul (its
// AVX512-BF16 / AMX kernels) per thread-pool panel, or sgemm on operands widened to fp32.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <dnnl.hpp>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/gemm_panels.h"
#include "engine/cpu/onednn_thread.h"
#include "engine/dtype.h"
#include "engine/error.h"

namespace sp {

namespace {

using dnnl::memory;

bool detect_native_bf16() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;  // ISA values are nested bit sets; AMX includes AVX512-BF16
}

std::atomic<CpuBackend::Bf16GemmPath> g_path{detect_native_bf16()
                                                 ? CpuBackend::Bf16GemmPath::kOneDnn
                                                 : CpuBackend::Bf16GemmPath::kWidenedSgemm};

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One GEMM shape (including the layouts and scalars baked into the primitive).
struct PrimitiveKey {
  int64_t m, n, k, lda, ldb, ldc;
  bool trans_a, trans_b;
  float alpha, beta;
  bool packed_b = false;  // B in the layout oneDNN picks (see packed_weights), not strided
  bool operator==(const PrimitiveKey&) const = default;
};

struct PrimitiveKeyHash {
  size_t operator()(const PrimitiveKey& key) const {
    size_t h = 0;
    for (int64_t v : {key.m, key.n, key.k, key.lda, key.ldb, key.ldc})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    h = h * 31u + (key.trans_a ? 1 : 0) * 4 + (key.trans_b ? 1 : 0) * 2 + (key.packed_b ? 1 : 0);
    return h ^ std::hash<float>()(key.alpha) ^ (std::hash<float>()(key.beta) << 1);
  }
};

struct CachedMatmul {
  dnnl::matmul primitive;
  memory::desc a, b, c;
  std::string impl;
};

// B as stored: a transposed operand is the same bytes read with swapped strides.
memory::desc strided_b(const PrimitiveKey& key) {
  return memory::desc({key.k, key.n}, memory::data_type::bf16,
                      key.trans_b ? memory::dims{1, key.ldb} : memory::dims{key.ldb, 1});
}

CachedMatmul make_matmul(const PrimitiveKey& key) {
  using dt = memory::data_type;
  memory::desc a({key.m, key.k}, dt::bf16,
                 key.trans_a ? memory::dims{1, key.lda} : memory::dims{key.lda, 1});
  memory::desc b = key.packed_b ? memory::desc({key.k, key.n}, dt::bf16, memory::format_tag::any)
                                : strided_b(key);
  memory::desc c({key.m, key.n}, dt::f32, memory::dims{key.ldc, 1});
  dnnl::primitive_attr attr;
  if (key.alpha != 1.0f) attr.set_output_scales(0, {key.alpha});
  if (key.beta != 0.0f) {
    dnnl::post_ops accumulate;
    accumulate.append_sum(key.beta);
    attr.set_post_ops(accumulate);
  }
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, cpu_engine());
  return {dnnl::matmul(pd), a, pd.weights_desc(), c, pd.impl_info_str()};
}

// Primitives are per thread (a oneDNN stream and its scratchpad are not shared) and cached by
// shape, so a training step creates none after the first.
CachedMatmul& matmul_for(const PrimitiveKey& key) {
  thread_local std::unordered_map<PrimitiveKey, CachedMatmul, PrimitiveKeyHash> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 512) cache.clear();  // bounds memory when shapes keep changing (generate)
  return cache.emplace(key, make_matmul(key)).first->second;
}

dnnl::stream& thread_stream() {
  cpu_detail::keep_onednn_on_this_thread();
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// A frozen B panel reordered once into the blocked layout the kernel reads. Without it the
// kernel copies B into that layout on every call, which is most of a small-M call's time
// (a decode step: M = batch rows).
struct PackedWeights {
  memory::desc desc;
  memory packed;
};

std::shared_ptr<PackedWeights> packed_weights(const Storage& storage, const PrimitiveKey& key,
                                              const uint16_t* b, const memory::desc& layout) {
  const auto offset = reinterpret_cast<const char*>(b) - static_cast<const char*>(storage.data());
  const std::string name = "onednn-bf16-b:" + std::to_string(offset) + ":" + std::to_string(key.k) +
                           "x" + std::to_string(key.n) + ":" + std::to_string(key.ldb) +
                           (key.trans_b ? "t" : "n");
  auto made = storage.derived(name, [&]() -> std::shared_ptr<void> {
    memory source(strided_b(key), cpu_engine(), const_cast<uint16_t*>(b));
    auto weights =
        std::make_shared<PackedWeights>(PackedWeights{layout, memory(layout, cpu_engine())});
    dnnl::reorder(source, weights->packed).execute(thread_stream(), source, weights->packed);
    thread_stream().wait();
    return weights;
  });
  auto weights = std::static_pointer_cast<PackedWeights>(made);
  // The layout depends on k, n and the ISA only; should a primitive ever want another, the
  // strided path serves instead of a wrong read.
  return weights->desc == layout ? weights : nullptr;
}

void onednn_one_thread(const PrimitiveKey& key, const uint16_t* a, const uint16_t* b, float* c,
                       const Storage* b_storage) {
  dnnl::stream& stream = thread_stream();
  memory b_mem;
  CachedMatmul* mm = nullptr;
  // Packing pays where the per-call repack dominates: panels of few rows, a decode step's. In
  // training it bought 0-5% (noise-level) for another copy of each weight in each layout
  // (softprompt bench, GPT-2 small bf16: +150 MB for the LM head's 83-row chunks, +440 MB for
  // every GEMM), so training's panels, all longer than this, stay strided.
  constexpr int64_t kMaxPackedRows = 64;
  if (b_storage != nullptr && key.m <= kMaxPackedRows) {
    PrimitiveKey packed_key = key;
    packed_key.packed_b = true;
    mm = &matmul_for(packed_key);
    if (auto weights = packed_weights(*b_storage, key, b, mm->b))
      b_mem = memory(mm->b, cpu_engine(), weights->packed.get_data_handle());
    else
      mm = nullptr;
  }
  if (mm == nullptr) {
    mm = &matmul_for(key);
    b_mem = memory(mm->b, cpu_engine(), const_cast<uint16_t*>(b));
  }
  memory a_mem(mm->a, cpu_engine(), const_cast<uint16_t*>(a));
  memory c_mem(mm->c, cpu_engine(), c);
  mm->primitive.execute(stream,
                        {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
  stream.wait();
}

void onednn_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta,
                 float* c, int64_t ldc, const Storage* b_storage) {
  cpu_detail::split_gemm_into_panels(
      m, n, k, false, [&](int64_t row0, int64_t row1, int64_t col0, int64_t col1) {
        const int64_t rows = row1 - row0, cols = col1 - col0;
        const uint16_t* a_panel = trans_a ? a + row0 : a + row0 * lda;
        const uint16_t* b_panel = trans_b ? b + col0 * ldb : b + col0;
        float* c_panel = c + row0 * ldc + col0;
        if (cols == ldc) {
          const PrimitiveKey key{rows, cols, k, lda, ldb, ldc, trans_a, trans_b, alpha, beta};
          onednn_one_thread(key, a_panel, b_panel, c_panel, b_storage);
          return;
        }
        // oneDNN's fast (brgemm) kernels want a dense C; a column panel of a wider C would fall
        // back to its slower gemm:jit kernel (1.7x slower for a decode step's QKV, M = 16), so
        // the panel is computed densely and then merged: a copy of M x cols floats.
        thread_local std::vector<float> dense;
        dense.resize(size_t(rows * cols));
        const PrimitiveKey key{rows, cols, k, lda, ldb, cols, trans_a, trans_b, alpha, 0.0f};
        onednn_one_thread(key, a_panel, b_panel, dense.data(), b_storage);
        for (int64_t i = 0; i < rows; ++i) {
          const float* from = dense.data() + i * cols;
          float* to = c_panel + i * ldc;
          if (beta == 0.0f)
            std::copy(from, from + cols, to);
          else
            for (int64_t j = 0; j < cols; ++j) to[j] = from[j] + beta * to[j];
        }
      });
}

std::vector<float> widen(const uint16_t* data, int64_t rows, int64_t ld) {
  std::vector<float> out(size_t(rows * ld));
  for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_float(data[i]);
  return out;
}

}  // namespace

void CpuBackend::set_bf16_gemm_path(Bf16GemmPath path) {
  g_path.store(path);
}
CpuBackend::Bf16GemmPath CpuBackend::bf16_gemm_path() {
  return g_path.load();
}
bool CpuBackend::cpu_has_native_bf16() {
  static const bool native = detect_native_bf16();
  return native;
}

double CpuBackend::measured_bf16_speedup() {
  static const double speedup = [] {
    if (!cpu_has_native_bf16()) return 0.0;
    const int64_t m = 256, k = 768, n = 768;
    std::vector<float> a(size_t(m * k), 0.5f), b(size_t(k * n), 0.25f), c(size_t(m * n));
    std::vector<uint16_t> a16(a.size(), float_to_bf16(0.5f)), b16(b.size(), float_to_bf16(0.25f));
    GemmArgs g;
    g.dtype = DType::BF16, g.c_dtype = DType::F32;
    g.m = m, g.n = n, g.k = k, g.lda = k, g.ldb = n, g.ldc = n;
    g.a = a16.data(), g.b = b16.data(), g.c = c.data();
    auto& cpu = static_cast<CpuBackend&>(backend_for(Device::cpu()));
    // Best of three after a warm-up call (oneDNN creates its primitive on the first).
    auto best_seconds = [](const auto& run) {
      run();
      double best = 1e30;
      for (int i = 0; i < 3; ++i) {
        const auto start = std::chrono::steady_clock::now();
        run();
        best = std::min(
            best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      return best;
    };
    const double bf16 = best_seconds([&] { cpu.bf16_gemm(g); });
    const double fp32 = best_seconds([&] {
      cpu_sgemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n, false);
    });
    return bf16 > 0 ? fp32 / bf16 : 0.0;
  }();
  return speedup;
}

bool CpuBackend::native_bf16_gemm() const {
  return cpu_has_native_bf16() && bf16_pays_off(measured_bf16_speedup());
}

std::string CpuBackend::bf16_gemm_description() {
  if (bf16_gemm_path() == Bf16GemmPath::kWidenedSgemm)
    return "fp32 sgemm on widened bf16 operands (the CPU has no AVX512-BF16 or AMX)";
  return "oneDNN " + make_matmul({64, 64, 64, 64, 64, 64, false, false, 1.0f, 0.0f}).impl;
}

void CpuBackend::bf16_gemm(const GemmArgs& g) {
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  const auto* a = static_cast<const uint16_t*>(g.a);
  const auto* b = static_cast<const uint16_t*>(g.b);
  auto* c = static_cast<float*>(g.c);
  // Leading dimensions of a single stored row are irrelevant but must be valid strides.
  const int64_t lda = std::max(g.lda, g.trans_a ? g.m : g.k);
  const int64_t ldb = std::max(g.ldb, g.trans_b ? g.k : g.n);
  const int64_t ldc = std::max(g.ldc, g.n);
  for (int64_t i = 0; i < g.batch; ++i) {
    const uint16_t* a_i = a + i * g.stride_a;
    const uint16_t* b_i = b + i * g.stride_b;
    float* c_i = c + i * g.stride_c;
    if (g.k == 0 || bf16_gemm_path() == Bf16GemmPath::kWidenedSgemm) {
      // Widening is exact, so this computes the same products as oneDNN in fp32.
      const int64_t a_rows = g.trans_a ? g.k : g.m, b_rows = g.trans_b ? g.n : g.k;
      std::vector<float> wide_a = widen(a_i, g.k == 0 ? 0 : a_rows, lda);
      std::vector<float> wide_b = widen(b_i, g.k == 0 ? 0 : b_rows, ldb);
      cpu_sgemm(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, wide_a.data(), lda, wide_b.data(),
                ldb, g.beta, c_i, ldc, false);
    } else {
      onednn_gemm(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, a_i, lda, b_i, ldb, g.beta, c_i,
                  ldc, g.stride_b == 0 || g.batch == 1 ? g.b_storage : nullptr);
    }
  }
}

}  // namespace sp
