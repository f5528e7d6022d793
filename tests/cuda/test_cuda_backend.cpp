// The CUDA backend's host side on the emulated device: the caching allocator (and that a
// steady-state training step makes no cudaMalloc), the TF32 GEMM mode, error reporting, the
// GPT-2 tiny model forward and backward against the CPU, and the README's kernel -> test list.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "engine/autograd.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/capability_policy.h"
#include "engine/cuda/cuda_check.h"
#include "engine/error.h"
#include "engine/optim/adamw.h"
#include "engine/safetensors.h"
#include "kernels/emu/cuda_runtime_emu.h"
#include "models/gpt2.h"
#include "models/lm_loss.h"
#include "models/t5.h"
#include "tests/cuda/cuda_test_util.h"

namespace sp::cuda_test {
namespace {

namespace fs = std::filesystem;
const std::string kFixtures = SOFTPROMPT_FIXTURES;

// ---- caching allocator ----

TEST(CudaAllocator, SizeClassesWasteAtMostAQuarter) {
  using cuda_emu::CachingAllocator;
  size_t previous = 0;
  for (size_t n :
       {size_t(0), size_t(1), size_t(511), size_t(512), size_t(513), size_t(4096), size_t(4097),
        size_t(6000), size_t(1) << 20, (size_t(1) << 20) + 1, size_t(123456789)}) {
    const size_t c = CachingAllocator::size_class(n);
    EXPECT_GE(c, n);
    EXPECT_GE(c, previous) << "classes grow with the request";
    EXPECT_EQ(c % 512, 0u) << n;
    if (n > 4096) {
      EXPECT_LE(double(c - n), 0.25 * double(n)) << n;
    }
    EXPECT_EQ(CachingAllocator::size_class(c), c) << "a class serves itself";
    previous = c;
  }
}

TEST(CudaAllocator, FreedBlocksAreReusedWithoutCudaMalloc) {
  cuda_emu::CachingAllocator allocator(0);
  void* a = allocator.allocate(1000);
  void* b = allocator.allocate(70000);
  const auto mallocs = emu::runtime_stats().malloc_calls;
  allocator.deallocate(a, 1000);
  allocator.deallocate(b, 70000);
  void* c = allocator.allocate(900);    // same 1 KiB class as a
  void* d = allocator.allocate(69000);  // same class as b
  EXPECT_EQ(c, a);
  EXPECT_EQ(d, b);
  EXPECT_EQ(emu::runtime_stats().malloc_calls, mallocs);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c) % 256, 0u);
  EXPECT_EQ(allocator.cache_stats().cache_hits, 2u);
  EXPECT_EQ(allocator.stats().bytes_in_use, 900u + 69000u);
  allocator.deallocate(c, 900);
  allocator.deallocate(d, 69000);
  const auto frees = emu::runtime_stats().free_calls;
  allocator.release_cached();
  EXPECT_EQ(emu::runtime_stats().free_calls, frees + 2);
  EXPECT_EQ(allocator.cache_stats().reserved_bytes, 0u);
}

// A prompt-tuning training step on GPT-2 tiny: prompt concat, forward, loss, backward, AdamW.
float train_step(Gpt2Model& model, const Tensor& prompt, const Tensor& ids, const Tensor& labels,
                 AdamW& optimizer) {
  Tensor embeds = concat({prompt, model.embed(ids)}, 1);
  Tensor hidden = model.hidden_states(embeds, Tensor(), Tensor(), nullptr, {});
  Tensor loss = causal_lm_loss(model, hidden, labels).loss;
  loss.backward();
  optimizer.step();
  optimizer.zero_grad();
  return loss.item();
}

TEST(CudaAllocator, SteadyStateTrainingStepMakesNoCudaMalloc) {
  auto model = Gpt2Model::load(kFixtures + "/gpt2_tiny_a", emu_device());
  auto golden = SafetensorsFile::open(kFixtures + "/golden/gpt2_tiny_a.safetensors");
  Tensor ids = golden->get("input_ids").to(emu_device());
  Tensor labels =
      concat({Tensor::full({ids.size(0), 4}, -100.0f).to(DType::I64), golden->get("labels")}, 1);
  Tensor prompt = randn({ids.size(0), 4, 64}, 7).to(emu_device()).detach().set_requires_grad(true);
  AdamW optimizer({prompt}, AdamWOptions{});
  std::vector<uint64_t> mallocs, frees;
  for (int step = 0; step < 4; ++step) {
    train_step(*model, prompt, ids, labels, optimizer);
    mallocs.push_back(emu::runtime_stats().malloc_calls);
    frees.push_back(emu::runtime_stats().free_calls);
  }
  // The first step fills the cache (and AdamW creates its moments); later steps reuse blocks.
  EXPECT_EQ(mallocs[1], mallocs[2]);
  EXPECT_EQ(mallocs[2], mallocs[3]);
  EXPECT_EQ(frees[1], frees[3]);
  EXPECT_GT(emu_backend().caching_allocator().cache_stats().cache_hits, 100u);
}

// ---- the step's budget: launches, host syncs, allocations ----

// A steady-state train step (forward with dropout, backward, AdamW) only queues work: no host
// sync and no device allocation until the loss is read, and that read is the one sync. The
// backend's counters are checked against the emulated runtime's, which count the calls
// themselves (cudaStreamSynchronize, cudaMalloc, kernel launches).
TEST(CudaStepBudget, TrainStepNeverWaitsForTheDeviceUntilTheLossIsRead) {
  if (cuda_emu::sync_after_every_launch().load())
    GTEST_SKIP() << "SOFTPROMPT_CUDA_SYNC=1 synchronises after every launch on purpose";
  auto model = Gpt2Model::load(kFixtures + "/gpt2_tiny_a", emu_device());
  auto golden = SafetensorsFile::open(kFixtures + "/golden/gpt2_tiny_a.safetensors");
  Tensor ids = golden->get("input_ids");  // on the host, as the trainer has them
  Tensor labels =
      concat({Tensor::full({ids.size(0), 4}, -100.0f).to(DType::I64), golden->get("labels")}, 1);
  Tensor prompt = randn({ids.size(0), 4, 64}, 7).to(emu_device()).detach().set_requires_grad(true);
  AdamW optimizer({prompt}, AdamWOptions{});
  ForwardOptions train;
  train.train = true;
  auto step = [&](uint64_t seed) {
    train.dropout_seed = seed;
    Tensor embeds = concat({prompt, model->embed(ids)}, 1);
    Tensor hidden = model->hidden_states(embeds, Tensor(), Tensor(), nullptr, train);
    Tensor loss = causal_lm_loss(*model, hidden, labels).loss;
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    return loss;
  };
  step(0).item();  // fills the allocator's cache and creates AdamW's moments
  Backend& backend = emu_backend();
  backend.reset_stats();
  emu::reset_runtime_stats();
  const uint64_t launches_before = emu::exec_stats().launches;
  Tensor loss = step(1);
  const BackendStats s = backend.stats();
  EXPECT_EQ(s.host_syncs, 0u);
  EXPECT_EQ(emu::runtime_stats().sync_calls, 0u);
  EXPECT_EQ(s.device_allocations, 0u);
  EXPECT_EQ(emu::runtime_stats().malloc_calls, 0u);
  uint64_t listed = 0, kernels = 0;
  for (const auto& [name, count] : s.launches_by_kernel) {
    listed += count;
    if (name.rfind("cudaMem", 0) != 0) kernels += count;  // copies and memsets run no kernel
  }
  EXPECT_EQ(listed, s.kernel_launches);
  EXPECT_EQ(kernels, emu::exec_stats().launches - launches_before);
  // Every LayerNorm but the first block's ln_1 runs in the pass of the residual add before it
  // (ln_2, the next ln_1, ln_f): two per block.
  const int64_t layers = model->config().n_layer;
  EXPECT_EQ(s.launches_of("layernorm_forward_kernel"), 1u);
  EXPECT_EQ(s.launches_of("residual_layernorm_forward_kernel"), uint64_t(2 * layers));
  EXPECT_EQ(s.launches_of("residual_dropout_add_kernel"), 0u);
  // Fused away: attention dropout (no materialised softmax), the residual stream's gradient sums
  // (added inside the layernorm backward), the q/k/v gradient assembly (written into one buffer)
  // and c_attn's bias (added by the attention kernels): no standalone softmax or dense add is left
  // in a step. The one broadcast add left is the position embeddings'. backward()'s seed of one
  // stays on the host, where the loss's backward reads it: no fill, no multiply by it.
  for (const char* kernel :
       {"masked_softmax_forward_kernel", "binary_contiguous_kernel", "fill_kernel"})
    EXPECT_EQ(s.launches_of(kernel), 0u) << kernel;
  EXPECT_EQ(s.launches_of("binary_strided_kernel"), 1u);
  // Two gathers: the token embeddings and the loss's labelled rows. The position embeddings of
  // positions 0 .. T - 1 are a view of wpe, neither uploaded nor gathered.
  EXPECT_EQ(s.launches_of("gather_rows_kernel"), 2u);
  EXPECT_GT(s.gemm_calls, 0u);
  EXPECT_TRUE(std::isfinite(loss.item()));
  EXPECT_EQ(backend.stats().host_syncs, 1u);
  EXPECT_EQ(emu::runtime_stats().sync_calls, 1u);
}

// backward()'s seed for a loss stays on the host: the loss's backward reads it there for free
// (no fill kernel, no device scalar to multiply by), with the gradients of a device seed. A
// host seed for any other root is uploaded; a seed on a third device is one clear error. The
// seeds are powers of two, so every product is exact and the gradients compare bit for bit.
TEST(CudaStepBudget, ALossTakesItsSeedOnTheHost) {
  const Tensor hidden_values = randn({6, 8}, 21), weight = randn({11, 8}, 22).to(emu_device());
  const Tensor targets = Tensor::from_ints({3, -100, 0, 10, 7, 3}, {6});
  // The hidden states' gradient for backward(seed) from the loss, or from 2 * loss; `kernels`
  // counts the kernels the backward launched (the seed is made before counting starts).
  auto gradient = [&](const Tensor& seed, bool doubled = false, uint64_t* kernels = nullptr) {
    Tensor hidden = hidden_values.to(emu_device()).detach().set_requires_grad(true);
    Tensor loss = linear_cross_entropy(hidden, weight, targets).loss;
    if (doubled) loss = scale(loss, 2.0f);
    emu_backend().reset_stats();
    loss.backward(seed);
    if (kernels) {  // copies and memsets run no kernel
      *kernels = 0;
      for (const auto& [name, count] : emu_backend().stats().launches_by_kernel)
        if (name.rfind("cudaMem", 0) != 0) *kernels += count;
    }
    return hidden.grad().to_floats();
  };
  uint64_t default_kernels = 0, device_kernels = 0;
  const auto by_default = gradient(Tensor(), false, &default_kernels);
  const auto on_device = gradient(Tensor::full({}, 1.0f).to(emu_device()), false, &device_kernels);
  EXPECT_EQ(by_default, on_device);
  // The device seed costs a multiply kernel; the default one no kernel, not even a fill. (Here
  // the gradient goes straight to a leaf, which copies it into a buffer of its own.)
  EXPECT_EQ(default_kernels, 0u);
  EXPECT_EQ(device_kernels, 1u);

  const auto half_on_host = gradient(Tensor::full({}, 0.5f));
  const auto half_on_device = gradient(Tensor::full({}, 0.5f).to(emu_device()));
  EXPECT_EQ(half_on_host, half_on_device);
  for (size_t i = 0; i < by_default.size(); ++i) EXPECT_EQ(half_on_host[i], 0.5f * by_default[i]);

  // A root whose backward wants its gradient on the device gets the host seed uploaded.
  EXPECT_EQ(gradient(Tensor::full({}, 0.25f), /*doubled=*/true), half_on_host);

  Tensor on_host = randn({3}, 23).set_requires_grad(true);
  EXPECT_THROW(sum_all(on_host).backward(Tensor::full({}, 1.0f).to(emu_device())), Error);
}

// The traffic counters behind bench's roofline figures: an elementwise kernel moves its input and
// output once; a GEMM its operands and result; causal attention computes exactly the visible
// (query, key) scores, counted here by brute force.
TEST(CudaStepBudget, TrafficCountersSayWhatKernelsMoveAndCompute) {
  Backend& backend = emu_backend();
  Tensor x = randn({1000}, 1).to(emu_device()), y = Tensor::empty({1000}, DType::F32, emu_device());
  backend.reset_stats();
  backend.dropout(x, 0.1f, 1, 0, y);
  EXPECT_EQ(backend.stats().traffic_by_kernel.at("dropout_kernel").bytes, 8000.0);

  Tensor a = randn({5, 7}, 2).to(emu_device()), b = randn({7, 3}, 3).to(emu_device());
  backend.reset_stats();
  Tensor c = matmul(a, b);
  EXPECT_EQ(backend.stats().gemm_flops, 2.0 * 5 * 7 * 3);
  EXPECT_EQ(backend.stats().gemm_bytes, 4.0 * (5 * 7 + 7 * 3 + 5 * 3));

  const int64_t B = 2, T = 37, H = 3, D = 8;
  Tensor q = randn({B, T, H, D}, 4).to(emu_device()), k = randn({B, T, H, D}, 5).to(emu_device());
  AttentionMask mask;
  mask.causal = true;
  mask.query_offset = 0;
  NoGradGuard no_grad;
  backend.reset_stats();
  attention(q, k, k, mask);
  double visible = 0;
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) visible += j <= i ? 1.0 : 0.0;
  // 4 D flops (q.k and p.v) and 12 more (softmax, dropout) per score.
  EXPECT_EQ(backend.stats().traffic_by_kernel.at("attention_forward_kernel").flops,
            double(B * H) * visible * (4.0 * D + 12.0));
}

// Uploads go through the backend's page-locked staging ring: none waits for the device, from
// pageable or page-locked memory, and the caller may rewrite its buffer as soon as the call
// returns. (The emulator reads page-locked sources late, as a DMA engine does, so handing the
// caller's page-locked buffer to cudaMemcpyAsync without waiting would deliver the rewrite.)
TEST(CudaStepBudget, UploadsNeverWaitAndTheCallerMayReuseItsBuffer) {
  cuda_emu::CudaBackend& backend = emu_backend();
  std::vector<float> pageable(64, 1.0f);
  float* pinned = nullptr;
  ASSERT_EQ(cuda_emu::cudaMallocHost(&pinned, 64 * sizeof(float)), cuda_emu::cudaSuccess);
  std::fill(pinned, pinned + 64, 2.0f);
  Tensor from_pageable = Tensor::empty({64}, DType::F32, emu_device());
  Tensor from_pinned = Tensor::empty({16}, DType::F32, emu_device());
  backend.reset_stats();
  backend.copy_from_host(from_pageable.raw_data(), pageable.data(), 64 * sizeof(float));
  std::fill(pageable.begin(), pageable.end(), -1.0f);
  backend.copy_from_host(from_pinned.raw_data(), pinned + 16, 16 * sizeof(float));
  std::fill(pinned, pinned + 64, -2.0f);
  EXPECT_EQ(backend.stats().host_syncs, 0u);
  EXPECT_EQ(backend.stats().launches_of("cudaMemcpyAsync (host to device)"), 2u);
  EXPECT_EQ(from_pageable.to_floats(), std::vector<float>(64, 1.0f));
  EXPECT_EQ(from_pinned.to_floats(), std::vector<float>(16, 2.0f));
  EXPECT_EQ(cuda_emu::cudaFreeHost(pinned), cuda_emu::cudaSuccess);
}

// Uploads queued faster than the device takes them wrap the ring onto staged bytes it has not
// read yet: then, and only then, the host waits for that upload. Three uploads of 3/8 of the
// ring with no other work between them (the emulator lands none of them early): the third wraps
// onto the first.
TEST(CudaStepBudget, TheStagingRingWaitsOnlyWhenItWrapsOntoAPendingUpload) {
  cuda_emu::CudaBackend& backend = emu_backend();
  backend.synchronize();  // nothing of earlier tests pending
  const size_t n = cuda_emu::CudaBackend::kUploadStagingBytes * 3 / 8 / sizeof(float);
  std::vector<Tensor> destinations;
  std::vector<float> source(n);
  backend.reset_stats();
  for (int upload = 0; upload < 3; ++upload) {
    std::fill(source.begin(), source.end(), float(upload + 1));
    destinations.push_back(Tensor::empty({int64_t(n)}, DType::F32, emu_device()));
    backend.copy_from_host(destinations.back().raw_data(), source.data(), n * sizeof(float));
    EXPECT_EQ(backend.stats().host_syncs, upload < 2 ? 0u : 1u) << "upload " << upload;
  }
  // Finding the first upload pending (cudaErrorNotReady) is no error for the next launch's check.
  Tensor launched = Tensor::empty({4}, DType::F32, emu_device());
  EXPECT_NO_THROW(backend.fill(launched, 1.0f));
  for (int upload = 0; upload < 3; ++upload)
    EXPECT_EQ(destinations[upload].to_floats(), std::vector<float>(n, float(upload + 1)))
        << "upload " << upload;
  // Larger than the ring: straight from the caller's memory (pageable here, so no wait).
  std::vector<float> large(cuda_emu::CudaBackend::kUploadStagingBytes / sizeof(float) + 1, 4.0f);
  Tensor large_destination = Tensor::empty({int64_t(large.size())}, DType::F32, emu_device());
  backend.reset_stats();
  backend.copy_from_host(large_destination.raw_data(), large.data(), large.size() * sizeof(float));
  EXPECT_EQ(backend.stats().host_syncs, 0u);
  EXPECT_EQ(large_destination.to_floats(), large);
}

// The ring is shared by every thread that uploads (the server's workers): uploads from several
// threads at once, through the wraps, each arrive whole (and ThreadSanitizer, which runs this
// suite in CI, sees no race on the ring).
TEST(CudaStepBudget, UploadsFromSeveralThreadsEachArriveWhole) {
  cuda_emu::CudaBackend& backend = emu_backend();
  constexpr int kThreads = 3, kUploads = 40;
  // A fifth of the ring each, so the threads' uploads wrap it many times over.
  const size_t n = cuda_emu::CudaBackend::kUploadStagingBytes / 5 / sizeof(float);
  std::vector<std::vector<Tensor>> destinations(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<float> source(n);
      for (int u = 0; u < kUploads; ++u) {
        std::fill(source.begin(), source.end(), float(t * kUploads + u));
        Tensor d = Tensor::empty({int64_t(n)}, DType::F32, emu_device());
        backend.copy_from_host(d.raw_data(), source.data(), n * sizeof(float));
        destinations[size_t(t)].push_back(d);
      }
    });
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t)
    for (int u = 0; u < kUploads; ++u) {
      const std::vector<float> got = destinations[size_t(t)][size_t(u)].to_floats();
      ASSERT_EQ(std::count(got.begin(), got.end(), float(t * kUploads + u)), int64_t(n))
          << "thread " << t << " upload " << u;
    }
}

// ---- TF32 ----

// The start-up default: TF32 on real sm_80+ GPUs, exact fp32 on older ones and under the
// emulator (whose fp32 must equal the CPU), SOFTPROMPT_CUDA_TF32 overriding either way.
TEST(CudaGemm, Tf32DefaultsOnForRealSm80AndOffUnderTheEmulator) {
  EXPECT_TRUE(tf32_by_default(8, false, nullptr));
  EXPECT_TRUE(tf32_by_default(9, false, nullptr));
  EXPECT_FALSE(tf32_by_default(7, false, nullptr));
  EXPECT_FALSE(tf32_by_default(8, true, nullptr));
  EXPECT_FALSE(tf32_by_default(9, false, "0"));
  EXPECT_FALSE(tf32_by_default(9, false, "false"));
  EXPECT_TRUE(tf32_by_default(7, false, "1"));
  EXPECT_TRUE(tf32_by_default(8, true, "true"));
  EXPECT_TRUE(tf32_by_default(8, false, "yes"));  // unrecognised: the default
}

// SOFTPROMPT_CUDA_SYNC=1: every launch is followed by a device synchronisation (counted by the
// emulated runtime), so a fault names its kernel; without it an op launches and never waits.
TEST(CudaDiagnosis, SyncAfterEveryLaunchOnlyWhenAsked) {
  EXPECT_TRUE(cuda_emu::sync_requested("1"));
  EXPECT_TRUE(cuda_emu::sync_requested("true"));
  EXPECT_FALSE(cuda_emu::sync_requested("0"));
  EXPECT_FALSE(cuda_emu::sync_requested(nullptr));
  std::atomic<bool>& flag = cuda_emu::sync_after_every_launch();
  const bool saved = flag.load();
  Tensor x = randn({64, 33}, 1).to(Device::cuda_emu());
  for (bool on : {false, true}) {
    flag.store(on);
    emu::reset_runtime_stats();
    Tensor y = gelu_tanh(x);
    EXPECT_EQ(emu::runtime_stats().sync_calls > 0, on);
    EXPECT_TRUE(y.defined());
  }
  flag.store(saved);
}

// --dtype auto picks bf16 only where the backend says its bf16 GEMMs are native: sm_80+, not the
// emulator (whose backend must say no). The CPU's rule is CpuGemmPolicy's, in tests/engine: it
// runs oneDNN, which this suite (also run under ThreadSanitizer) keeps out of.
TEST(CudaGemm, NativeBf16GemmNeedsSm80AndRealHardware) {
  EXPECT_TRUE(native_bf16_gemm_for(8, false));
  EXPECT_TRUE(native_bf16_gemm_for(9, false));
  EXPECT_FALSE(native_bf16_gemm_for(7, false));
  EXPECT_FALSE(native_bf16_gemm_for(9, true));
  EXPECT_FALSE(backend_for(Device::cuda_emu()).native_bf16_gemm());
}

TEST(CudaGemm, DefaultFp32IsExactAndTf32StaysWithinItsRoundingBound) {
  const int64_t m = 9, n = 7, k = 300;
  Tensor a = data({m, k}, 1), b = data({k, n}, 2);
  // The emulated cuBLAS runs OpenBLAS's sgemm, so exact mode equals the CPU backend's OpenBLAS
  // path bit for bit (the CPU's default may be oneDNN where OpenBLAS misjudges the CPU).
  const CpuBackend::GemmLibrary saved = CpuBackend::gemm_library();
  CpuBackend::set_gemm_library(CpuBackend::GemmLibrary::kOpenBlas);
  Tensor want = matmul(a, b);
  CpuBackend::set_gemm_library(saved);
  auto& backend = emu_backend();
  ASSERT_FALSE(backend.allow_tf32()) << "fp32 GEMMs default to exact fp32";
  Tensor exact = matmul(on_emu(a), on_emu(b));
  EXPECT_TRUE(bitwise_equal(want, exact)) << "the emulated cuBLAS runs OpenBLAS's sgemm";
  backend.set_allow_tf32(true);
  Tensor tf32 = matmul(on_emu(a), on_emu(b));
  backend.set_allow_tf32(false);
  // TF32 rounds each input to 10 explicit mantissa bits: relative error u = 2^-11 per operand,
  // so each product is off by at most (2u + u^2)|a b| and the sum by that times sum |a_i b_i|,
  // plus fp32 accumulation (k * 2^-24 sum |a_i b_i|). That bound is checked per element.
  std::vector<float> av = a.to_floats(), bv = b.to_floats(), w = want.to_floats(),
                     g = tf32.to_floats();
  const double u = std::ldexp(1.0, -11);
  double max_diff = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double magnitude = 0;
      for (int64_t x = 0; x < k; ++x)
        magnitude += std::abs(double(av[size_t(i * k + x)]) * bv[size_t(x * n + j)]);
      const double bound = (2 * u + u * u + double(k) * std::ldexp(1.0, -24)) * magnitude;
      const double diff = std::abs(double(w[size_t(i * n + j)]) - g[size_t(i * n + j)]);
      EXPECT_LE(diff, bound) << i << "," << j;
      max_diff = std::max(max_diff, diff);
    }
  }
  EXPECT_GT(max_diff, 0.0) << "TF32 mode must actually round (the emulator rounds like the GPU)";
}

// ---- errors ----

TEST(CudaErrors, UnsupportedDtypesNameTheOp) {
  Tensor x = Tensor::zeros({2, 3}, DType::F16, emu_device());
  try {
    emu().affine(x, 1.0f, 0.0f, x);
    FAIL() << "F16 affine accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("affine"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("F16"), std::string::npos) << e.what();
  }
  GemmArgs g;
  g.dtype = DType::I32;
  g.m = g.n = g.k = 1;
  try {
    emu().gemm(g);
    FAIL() << "I32 gemm accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gemm"), std::string::npos) << e.what();
  }
}

TEST(CudaErrors, FailedRuntimeCallsNameOpAndCall) {
  // A copy from a host pointer posing as device memory: the emulated runtime rejects it as
  // CUDA would fault, and the backend reports op and call.
  std::vector<float> host(4, 1.0f), back(4);
  try {
    emu().copy_to_host(back.data(), host.data(), sizeof(float) * 4);
    FAIL() << "host pointer accepted as device memory";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("copy_to_host"), std::string::npos) << what;
    EXPECT_NE(what.find("cudaMemcpyAsync"), std::string::npos) << what;
  }
}

TEST(CudaBackendDevice, DeviceAndAvailability) {
  EXPECT_TRUE(backend_available(emu_device()));
  EXPECT_EQ(emu().device(), emu_device());
  bool listed = false;
  for (Device d : available_devices()) listed = listed || d == emu_device();
  EXPECT_TRUE(listed);
}

TEST(CudaBackendDevice, KernelsRunOnTheEmulatedExecutionModel) {
  Tensor x = on_emu(data({3, 33}, 1)), w = on_emu(data({33}, 2)), b = on_emu(data({33}, 3));
  const emu::ExecStats before = emu::exec_stats();
  Tensor y = layernorm(x, w, b, 1e-5f);
  const emu::ExecStats after = emu::exec_stats();
  EXPECT_EQ(after.launches - before.launches, 1u);
  EXPECT_EQ(after.blocks - before.blocks, 3u);         // a block per row
  EXPECT_EQ(after.threads - before.threads, 3u * 64);  // 33 columns: two warps per row
  EXPECT_GT(after.switches - before.switches, 3u * 64);
}

// ---- the GPT-2 tiny model ----

// Forward and backward through every layer (embedding, layer norms, fused attention with a
// padding mask, GELU MLP, LM head, cross-entropy) on cuda-emu against the CPU. fp32 kernels
// differ from the CPU only in summation order; through two layers that stays below 1e-4 on
// logits and gradients of magnitude <= ~10 (the same bound the transformers parity tests use).
TEST(CudaModel, Gpt2TinyForwardBackwardMatchesCpu) {
  auto golden = SafetensorsFile::open(kFixtures + "/golden/gpt2_tiny_a.safetensors");
  Tensor ids = golden->get("input_ids"), labels = golden->get("labels");
  Tensor mask = golden->get("attention_mask").to(DType::F32);
  struct Run {
    std::vector<float> logits, grad;
    float loss;
  };
  auto run = [&](Device device) {
    auto model = Gpt2Model::load(kFixtures + "/gpt2_tiny_a", device);
    Tensor embeds = model->embed(ids.to(device)).detach().set_requires_grad(true);
    Tensor hidden = model->hidden_states(embeds, mask.to(device), Tensor(), nullptr, {});
    Run r;
    {
      NoGradGuard no_grad;
      r.logits = model->logits(hidden).to_floats();
    }
    Tensor loss = causal_lm_loss(*model, hidden, labels.to(device)).loss;
    r.loss = loss.item();
    loss.backward();
    r.grad = embeds.grad().to_floats();
    return r;
  };
  Run want = run(Device::cpu()), got = run(emu_device());
  EXPECT_NEAR(got.loss, want.loss, 1e-5f * std::abs(want.loss));
  ASSERT_EQ(want.logits.size(), got.logits.size());
  for (size_t i = 0; i < want.logits.size(); ++i)
    ASSERT_NEAR(got.logits[i], want.logits[i], 1e-4f) << "logit " << i;
  ASSERT_EQ(want.grad.size(), got.grad.size());
  for (size_t i = 0; i < want.grad.size(); ++i)
    ASSERT_NEAR(got.grad[i], want.grad[i], 1e-4f) << "grad " << i;
  // And against transformers' own goldens, as the CPU is.
  std::vector<float> golden_logits = golden->get("logits").to_floats();
  for (size_t i = 0; i < golden_logits.size(); ++i)
    ASSERT_NEAR(got.logits[i], golden_logits[i], 1e-4f) << "golden logit " << i;
}

// T5 v1.0's feed-forward (ReLU, no dropout in inference) runs its activation in the first GEMM's
// cuBLASLt epilogue: no activation kernel in an encoder pass, and the same hidden states as the CPU
// model (1e-5: fp32 GEMMs that differ in summation order only, through a few layers).
TEST(CudaModel, T5V10InferenceRunsItsReluInTheGemm) {
  auto cpu_model = T5Model::load(kFixtures + "/t5_tiny_v10", Device::cpu());
  auto emu_model = T5Model::load(kFixtures + "/t5_tiny_v10", emu_device());
  const Tensor ids = Tensor::from_ints({5, 17, 3, 42, 8, 1}, {1, 6});
  const Tensor mask = Tensor::full({1, 6}, 1.0f);
  NoGradGuard inference;
  const Tensor want = cpu_model->encode(cpu_model->embed(ids), mask, {});
  emu_backend().reset_stats();
  const Tensor got = emu_model->encode(emu_model->embed(ids), mask.to(emu_device()), {});
  EXPECT_EQ(emu_backend().stats().launches_of("activation_forward_kernel"), 0u);
  EXPECT_TRUE(all_close(want, got.to(Device::cpu()), 1e-5f, 1e-4f));
}

// T5 v1.1 on cuda-emu: loss and both embedding gradients match transformers' goldens (1e-4
// absolute, as the CPU model's test), and every RMS norm that follows a residual add runs in that
// add's kernel: two an encoder block (before the feed-forward, and the next block's first norm or
// the final norm after it), three a decoder block (before cross attention too). Plain RMS norms
// are left only at each stack's first block.
TEST(CudaModel, T5TinyMatchesTheGoldensAndNormsItsResidualSumsInTheirPass) {
  auto golden = SafetensorsFile::open(kFixtures + "/golden/t5_tiny_v11.safetensors");
  auto model = T5Model::load(kFixtures + "/t5_tiny_v11", emu_device());
  Tensor mask = golden->get("attention_mask").to(DType::F32).to(emu_device());
  Tensor labels = golden->get("labels");
  Tensor embeds = model->embed(golden->get("input_ids")).detach().set_requires_grad(true);
  Tensor decoder_embeds = model->embed(model->shift_right(labels)).detach().set_requires_grad(true);
  Backend& backend = emu_backend();
  backend.reset_stats();
  Tensor encoder_hidden = model->encode(embeds, mask, {});
  Tensor hidden = model->decode(decoder_embeds, encoder_hidden, mask, Tensor(), nullptr, {});
  const BackendStats forward = backend.stats();
  Tensor loss = seq2seq_lm_loss(*model, hidden, labels.to(emu_device())).loss;
  EXPECT_NEAR(loss.item(), golden->get("loss").item(),
              1e-5f * std::abs(golden->get("loss").item()));
  loss.backward();
  auto expect_close = [](const std::vector<float>& want, const std::vector<float>& got,
                         const char* what) {
    ASSERT_EQ(want.size(), got.size()) << what;
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-4f) << what << " " << i;
  };
  expect_close(golden->get("grad_inputs_embeds").to_floats(), embeds.grad().to_floats(),
               "grad_inputs_embeds");
  expect_close(golden->get("grad_decoder_inputs_embeds").to_floats(),
               decoder_embeds.grad().to_floats(), "grad_decoder_inputs_embeds");
  const T5Config& c = model->config();
  EXPECT_EQ(forward.launches_of("residual_rmsnorm_forward_kernel"),
            uint64_t(2 * c.num_layers + 3 * c.num_decoder_layers));
  EXPECT_EQ(forward.launches_of("rmsnorm_forward_kernel"), 2u);
  // Packed projections are attended in place and their gradients written whole (q|k|v, the
  // cross-attention's k|v, wi_0|wi_1): no slice of a gradient is zero-filled, copied or added.
  // The adds left: each leaf embedding takes its first block's norm and residual gradients apart
  // (2), and the encoder output sums the cross-attention gradients of the decoder blocks.
  const BackendStats step = backend.stats();
  EXPECT_EQ(step.launches_of("strided_copy_kernel"), 0u);
  EXPECT_EQ(step.launches_of("binary_contiguous_kernel"), uint64_t(2 + c.num_decoder_layers - 1));
}

// The same model with bf16 weights and activations on cuda-emu (fp32 math inside every kernel
// and GEMM): logits and loss stay close to the fp32 CPU model. Every layer rounds its output to
// 8 significant bits (2^-9 relative); through two blocks and the tied LM head that compounds to
// a few percent of the activations' scale, so logits (|logit| <= ~10) get 0.15 absolute and the
// mean loss 2% relative, while a broken op in bf16 (wrong mask, scale or layout) moves them by
// O(1).
TEST(CudaModel, Gpt2TinyInBf16StaysCloseToFp32Cpu) {
  auto golden = SafetensorsFile::open(kFixtures + "/golden/gpt2_tiny_a.safetensors");
  Tensor ids = golden->get("input_ids"), labels = golden->get("labels");
  Tensor mask = golden->get("attention_mask").to(DType::F32);
  NoGradGuard no_grad;
  auto run = [&](Device device, DType dtype, float& loss) {
    auto model = Gpt2Model::load(kFixtures + "/gpt2_tiny_a", device, dtype);
    Tensor hidden =
        model->hidden_states(model->embed(ids.to(device)), mask.to(device), Tensor(), nullptr, {});
    loss = causal_lm_loss(*model, hidden, labels.to(device)).loss.item();
    return model->logits(hidden).to_floats();
  };
  float want_loss = 0, got_loss = 0;
  std::vector<float> want = run(Device::cpu(), DType::F32, want_loss);
  std::vector<float> got = run(emu_device(), DType::BF16, got_loss);
  ASSERT_EQ(want.size(), got.size());
  float worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(want[i] - got[i]));
  EXPECT_LE(worst, 0.15f);
  EXPECT_NEAR(got_loss, want_loss, 0.02f * std::abs(want_loss));
}

// ---- the README's kernel -> test list covers every kernel ----

TEST(CudaReadme, EveryKernelIsListedWithATest) {
  const fs::path root = fs::path(kFixtures).parent_path().parent_path();
  std::ifstream readme_file(root / "engine/cuda/README.md");
  ASSERT_TRUE(readme_file) << "engine/cuda/README.md";
  std::stringstream readme;
  readme << readme_file.rdbuf();
  const std::regex kernel_decl(R"(__global__\s+void\s+(?:__launch_bounds__\(\w+\)\s+)?(\w+)\s*\()");
  int kernels = 0;
  for (const auto& entry : fs::directory_iterator(root / "kernels")) {
    if (entry.path().extension() != ".cuh") continue;
    std::ifstream source(entry.path());
    std::stringstream text;
    text << source.rdbuf();
    const std::string s = text.str();
    for (std::sregex_iterator it(s.begin(), s.end(), kernel_decl), end; it != end; ++it) {
      const std::string name = (*it)[1];
      ++kernels;
      const std::regex row("\\|\\s*`" + name + "`\\s*\\|[^\\n]*Cuda");
      EXPECT_TRUE(std::regex_search(readme.str(), row))
          << name << " (" << entry.path().filename().string()
          << ") has no row naming a test in engine/cuda/README.md";
    }
  }
  EXPECT_GE(kernels, 30);
}

}  // namespace
}  // namespace sp::cuda_test
