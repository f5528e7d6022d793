// Micro-benchmarks of the engine: GEMM GFLOP/s at GPT-2 small's shapes (OpenBLAS and Eigen) as a
// fraction of this machine's sgemm peak, and the op table's perf mode (forward + backward of
// every op case at benchmark size: layernorm, softmax, attention, ...).
#include <benchmark/benchmark.h>

#include <chrono>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/ops/ops.h"
#include "engine/thread_pool.h"
#include "tests/op_table/op_cases.h"

namespace sp {
namespace {

double g_peak_gflops = 0;

double measure_peak() {
  const int64_t n = 2048;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    auto t = std::chrono::steady_clock::now();
    cpu_sgemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n, false);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    best = std::max(best, 2.0 * double(n) * double(n) * double(n) / s / 1e9);
  }
  return best;
}

// C[M, N] = A[M, K] @ B[K, N] as GPT-2 small's projections run (x @ W with W [in, out]), and
// the tied LM head x @ wte^T (trans_b).
void BM_Gemm(benchmark::State& state, CpuBackend::GemmLibrary library) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const bool trans_b = state.range(3) != 0;
  CpuBackend::set_gemm_library(library);
  std::vector<float> a(size_t(M * K), 0.01f), b(size_t(K * N), 0.02f), c(size_t(M * N));
  GemmArgs g;  // through the backend, which sends one-row products to Eigen's GEMV
  g.m = M, g.n = N, g.k = K, g.lda = K, g.ldb = trans_b ? K : N, g.ldc = N, g.trans_b = trans_b;
  g.a = a.data(), g.b = b.data(), g.c = c.data();
  Backend& cpu = backend_for(Device::cpu());
  for (auto _ : state) {
    cpu.gemm(g);
    benchmark::DoNotOptimize(c.data());
  }
  CpuBackend::set_gemm_library(CpuBackend::default_gemm_library());
  const double flops = 2.0 * double(M) * double(N) * double(K);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_frac"] = benchmark::Counter(flops * 1e-9 / g_peak_gflops,
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

// The same shapes with bf16 operands and an fp32 result (the --dtype bf16 model's GEMMs), through
// the backend so the thread-pool split and the chosen path (oneDNN or widened sgemm) are timed.
void BM_GemmBf16(benchmark::State& state, CpuBackend::Bf16GemmPath path) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const bool trans_b = state.range(3) != 0;  // the tied LM head: x @ wte^T with wte [V, d]
  const CpuBackend::Bf16GemmPath saved = CpuBackend::bf16_gemm_path();
  CpuBackend::set_bf16_gemm_path(path);
  std::vector<uint16_t> a(size_t(M * K), float_to_bf16(0.01f)),
      b(size_t(K * N), float_to_bf16(0.02f));
  std::vector<float> c(size_t(M * N));
  GemmArgs g;
  g.dtype = DType::BF16;
  g.m = M, g.n = N, g.k = K, g.lda = K, g.ldb = trans_b ? K : N, g.ldc = N, g.trans_b = trans_b;
  g.a = a.data(), g.b = b.data(), g.c = c.data();
  Backend& cpu = backend_for(Device::cpu());
  for (auto _ : state) {
    cpu.gemm(g);
    benchmark::DoNotOptimize(c.data());
  }
  CpuBackend::set_bf16_gemm_path(saved);
  const double flops = 2.0 * double(M) * double(N) * double(K);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_frac"] = benchmark::Counter(flops * 1e-9 / g_peak_gflops,
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

void BM_PeakSgemm2048(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(g_peak_gflops = std::max(g_peak_gflops, measure_peak()));
  state.counters["GFLOP/s"] = g_peak_gflops;
}

void register_gemms() {
  benchmark::RegisterBenchmark("peak/sgemm_2048^3_best_of_3", BM_PeakSgemm2048)
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond);
  // GPT-2 small's projection and LM-head shapes at the given row counts.
  auto add_shapes = [](benchmark::internal::Benchmark* b, std::initializer_list<int64_t> rows,
                       bool with_head_transposed = false) {
    for (int64_t m : rows) {
      for (auto [k, n] : {std::pair<int64_t, int64_t>{768, 2304}, {768, 3072}, {768, 50257}})
        with_head_transposed ? b->Args({m, k, n, 0}) : b->Args({m, k, n});
      if (with_head_transposed) b->Args({m, 768, 50257, 1});
    }
    b->ArgNames(with_head_transposed ? std::vector<std::string>{"M", "K", "N", "trans_b"}
                                     : std::vector<std::string>{"M", "K", "N"});
    b->Unit(benchmark::kMillisecond)->MinTime(0.2)->UseRealTime();
  };
  for (auto [name, library] : {std::pair{"openblas", CpuBackend::GemmLibrary::kOpenBlas},
                               {"onednn", CpuBackend::GemmLibrary::kOneDnn},
                               {"eigen", CpuBackend::GemmLibrary::kEigen}})
    add_shapes(
        benchmark::RegisterBenchmark((std::string("gemm/") + name).c_str(), BM_Gemm, library),
        {1, 16, 1024, 2048, 4096}, /*with_head_transposed=*/true);
  for (auto [name, path] : {std::pair{"onednn", CpuBackend::Bf16GemmPath::kOneDnn},
                            {"widened_sgemm", CpuBackend::Bf16GemmPath::kWidenedSgemm}})
    add_shapes(
        benchmark::RegisterBenchmark((std::string("gemm_bf16/") + name).c_str(), BM_GemmBf16, path),
        {1, 16, 1024, 2048}, /*with_head_transposed=*/true);
}

// The op table's third mode: forward and backward of each case at benchmark size.
void register_op_cases() {
  for (const testing::OpCase& c : testing::op_cases()) {
    benchmark::RegisterBenchmark(("op/" + c.name).c_str(),
                                 [&c](benchmark::State& state) {
                                   std::vector<Tensor> inputs =
                                       c.make_inputs(testing::CaseSize::kPerf);
                                   for (size_t i : c.differentiable)
                                     inputs[i] = inputs[i].detach().set_requires_grad(true);
                                   int64_t bytes = 0;
                                   for (const Tensor& t : inputs) bytes += int64_t(t.nbytes());
                                   for (auto _ : state) {
                                     Tensor out = c.run(inputs);
                                     if (!c.differentiable.empty()) {
                                       Tensor loss = sum_all(out);
                                       loss.backward();
                                       for (size_t i : c.differentiable) inputs[i].zero_grad();
                                     }
                                   }
                                   state.SetBytesProcessed(state.iterations() * bytes);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.2);
  }
}

}  // namespace
}  // namespace sp

int main(int argc, char** argv) {
  sp::g_peak_gflops = sp::measure_peak();
  sp::register_gemms();
  sp::register_op_cases();
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("threads", std::to_string(sp::num_threads()));
  benchmark::AddCustomContext("sgemm_peak_gflops", std::to_string(sp::g_peak_gflops));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
