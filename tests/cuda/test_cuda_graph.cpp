// CudaBackend::capture on the emulated device (whose graphs follow the runtime's capture rules,
// tests/emu/test_emu_graph.cpp): the caching allocator's private pools; a GPT-2 prompt-tuning
// forward and backward, then a whole step with its inputs refilled per batch, captured once and
// replayed as the eager computation, new dropout masks at each replay; and work that needs the
// host refused with one clear error and the backend left as it was.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/cuda/cuda_check.h"
#include "engine/error.h"
#include "engine/ops/attention.h"
#include "engine/ops/dropout.h"
#include "engine/ops/layernorm.h"
#include "engine/optim/adamw.h"
#include "engine/safetensors.h"
#include "kernels/emu/cuda_graph_emu.h"
#include "kernels/emu/cuda_runtime_emu.h"
#include "models/gpt2.h"
#include "models/lm_loss.h"
#include "tests/cuda/cuda_test_util.h"

namespace sp::cuda_test {
namespace {

const std::string kFixtures = SOFTPROMPT_FIXTURES;

// SOFTPROMPT_CUDA_SYNC=1 (scripts/gpu_check.sh's suite run) synchronises after every launch, which
// no capture holds.
#define SKIP_WHERE_NOTHING_CAN_BE_CAPTURED()           \
  do {                                                 \
    if (cuda_emu::sync_after_every_launch().load())    \
      GTEST_SKIP() << "SOFTPROMPT_CUDA_SYNC=1 is set"; \
  } while (0)

// ---- private pools ----

// Blocks handed out or freed while a pool fills are the pool's: reused inside it, never handed to
// other work, even once freed after the capture, until the pool is released.
TEST(CudaAllocatorPools, APoolKeepsItsBlocksFromOtherWorkUntilReleased) {
  cuda_emu::CachingAllocator allocator(0);
  void* a = allocator.allocate(1000);
  void* b = allocator.allocate(1000);
  allocator.deallocate(a, 1000);
  allocator.deallocate(b, 1000);
  const uint64_t pool = allocator.begin_pool();
  void* scratch = allocator.allocate(1000);  // a cached block joins the pool
  allocator.deallocate(scratch, 1000);       // and, freed, stays there
  void* kept = allocator.allocate(900);      // reused inside the pool: e.g. a step's output
  EXPECT_EQ(kept, scratch);
  try {
    (void)allocator.allocate(5000);  // no cached block of that class
    ADD_FAILURE() << "a pool allocated device memory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inside a capture"), std::string::npos) << e.what();
  }
  allocator.end_pool();
  void* other = allocator.allocate(1000);  // outside the pool: the other cached block
  EXPECT_NE(other, kept);
  allocator.deallocate(kept, 1000);  // freed after the capture: still the pool's
  EXPECT_EQ(allocator.cache_stats().pooled_bytes, 1024u);
  const auto mallocs = emu::runtime_stats().malloc_calls;
  void* fresh = allocator.allocate(1000);  // the pool's block is not handed out
  EXPECT_NE(fresh, kept);
  EXPECT_EQ(emu::runtime_stats().malloc_calls, mallocs + 1);
  allocator.release_pool(pool);
  EXPECT_EQ(allocator.cache_stats().pooled_bytes, 0u);
  void* reused = allocator.allocate(1000);
  EXPECT_EQ(reused, kept);
  for (void* p : {other, fresh, reused}) allocator.deallocate(p, 1000);
  allocator.release_cached();
  EXPECT_EQ(allocator.cache_stats().reserved_bytes, 0u);
}

// ---- capturing model work ----

// GPT-2 tiny with a 4-token prompt; loss = sum(logits * weights), every input on the device. The
// token embeddings are looked up before the capture (AWholePromptTuningStepReplaysEachNewBatch
// looks them up inside, from CheckedIndices).
struct PromptStep {
  Device device;
  std::unique_ptr<Gpt2Model> model;
  Tensor ids, token_embeds, weights, seed;
  ForwardOptions train;
  explicit PromptStep(Device on = emu_device())
      : device(on), model(Gpt2Model::load(kFixtures + "/gpt2_tiny_a", on)) {
    auto golden = SafetensorsFile::open(kFixtures + "/golden/gpt2_tiny_a.safetensors");
    ids = golden->get("input_ids");  // on the host, as the trainer has them
    token_embeds = model->embed(ids).detach();
    const int64_t vocab = model->config().vocab_size;
    weights = randn({ids.size(0), ids.size(1) + 4, vocab}, 11).to(device);
    seed = Tensor::full({}, 1.0f).to(device);  // a host seed would be uploaded
    train.train = true;                        // dropout, from a fixed seed
    train.dropout_seed = 5;
  }
  Tensor prompt(uint64_t seed_value) const {
    return randn({ids.size(0), 4, model->config().n_embd}, seed_value)
        .to(device)
        .detach()
        .set_requires_grad(true);
  }
  // The loss; prompt.grad() receives its gradient.
  Tensor forward_backward(const Tensor& prompt) const {
    Tensor embeds = concat({prompt, token_embeds}, 1);
    Tensor hidden = model->hidden_states(embeds, Tensor(), Tensor(), nullptr, train);
    Tensor loss = sum_all(mul(model->logits(hidden), weights));
    loss.backward(seed);
    return loss;
  }
};

// Captured once, the forward and backward replay as the eager computation, bit for bit (the same
// kernels on the same data), for the prompt as it is at each replay: here after an AdamW step
// taken eagerly between replays, against an eager run on a copy of the updated prompt with the
// dropout seed the replay shifts to. Eager work between replays never gets the graph's blocks:
// tensors it leaves alive are intact after replay.
TEST(CudaGraphs, AReplayedPromptForwardBackwardIsTheEagerOne) {
  SKIP_WHERE_NOTHING_CAN_BE_CAPTURED();
  PromptStep step;
  Tensor prompt = step.prompt(7);
  const float eager_loss = step.forward_backward(prompt).item();  // also fills the cache
  const std::vector<float> eager_grad = prompt.grad().to_floats();
  prompt.zero_grad();

  Backend& backend = emu_backend();
  const uint64_t kernels_before = emu::exec_stats().launches;
  const uint64_t mallocs_before = emu::runtime_stats().malloc_calls;
  Tensor loss;
  backend.reset_stats();
  std::unique_ptr<CapturedWork> graph =
      backend.capture([&] { loss = step.forward_backward(prompt); });
  ASSERT_NE(graph, nullptr);
  EXPECT_EQ(emu::exec_stats().launches, kernels_before);  // nothing ran
  EXPECT_EQ(emu::runtime_stats().malloc_calls, mallocs_before);
  // The graph holds every launch, copy, memset and GEMM the backend queued while capturing.
  const BackendStats queued = backend.stats();
  EXPECT_EQ(graph->operations(), queued.kernel_launches + queued.gemm_calls);
  uint64_t kernels = 0;
  for (const auto& [name, count] : queued.launches_by_kernel)
    if (name.rfind("cudaMem", 0) != 0) kernels += count;  // copies and memsets run no kernel
  ASSERT_TRUE(prompt.grad().defined());

  graph->replay();
  EXPECT_EQ(emu::exec_stats().launches - kernels_before, kernels);
  EXPECT_EQ(loss.item(), eager_loss);
  EXPECT_EQ(prompt.grad().to_floats(), eager_grad);

  // An optimizer step between replays, and eager work on a copy of the updated prompt.
  AdamW optimizer({prompt}, AdamWOptions{});
  optimizer.step();
  Tensor copy = prompt.detach().clone().set_requires_grad(true);
  step.train.dropout_seed += 3;  // the next step's masks: the replay shifts the captured seed
  const float updated_loss = step.forward_backward(copy).item();
  const std::vector<float> updated_grad = copy.grad().to_floats();
  ASSERT_NE(updated_loss, eager_loss);
  std::vector<Tensor> bystanders;  // eager tensors alive across the replay, in every size class
  for (int64_t n = 64; n <= (int64_t(1) << 20); n *= 2)
    bystanders.push_back(Tensor::full({n}, float(n)).to(emu_device()));
  const uint64_t graph_launches = emu::runtime_stats().graph_launches;
  graph->replay(3);
  EXPECT_EQ(emu::runtime_stats().graph_launches, graph_launches + 1);
  EXPECT_EQ(loss.item(), updated_loss);
  EXPECT_EQ(prompt.grad().to_floats(), updated_grad);
  for (const Tensor& t : bystanders)
    EXPECT_EQ(t.to_floats(), std::vector<float>(size_t(t.numel()), float(t.numel())));

  auto& allocator = emu_backend().caching_allocator();
  EXPECT_GT(allocator.cache_stats().pooled_bytes, 0u);
  graph.reset();
  loss = Tensor();
  prompt.zero_grad();
  EXPECT_EQ(allocator.cache_stats().pooled_bytes, 0u);
}

// The same on the kernel device (scripts/gpu_check.sh runs it on cuda:0, where cuBLAS and
// cuBLASLt run inside a real capture): the replay is the eager computation. Exactly so under the
// emulator; on a GPU within 1e-5 of the largest value, should a library pick another algorithm
// inside a capture.
TEST(CudaGraphs, OnTheKernelDeviceAReplayIsTheEagerComputation) {
  SKIP_WHERE_NOTHING_CAN_BE_CAPTURED();
  PromptStep step(kernel_device());
  Tensor prompt = step.prompt(13);
  const float eager_loss = step.forward_backward(prompt).item();
  const std::vector<float> eager_grad = prompt.grad().to_floats();
  prompt.zero_grad();
  Tensor loss;
  std::unique_ptr<CapturedWork> graph =
      kernel_backend().capture([&] { loss = step.forward_backward(prompt); });
  ASSERT_NE(graph, nullptr);
  for (int replay = 0; replay < 2; ++replay) {
    graph->replay();
    const std::vector<float> grad = prompt.grad().to_floats();
    ASSERT_EQ(grad.size(), eager_grad.size());
    float largest = 0.0f;
    for (float g : eager_grad) largest = std::max(largest, std::abs(g));
    const float tolerance = kernel_device_is_emulated() ? 0.0f : 1e-5f * largest;
    for (size_t i = 0; i < grad.size(); ++i)
      ASSERT_NEAR(grad[i], eager_grad[i], tolerance) << "replay " << replay << ", grad " << i;
    EXPECT_NEAR(loss.item(), eager_loss,
                kernel_device_is_emulated() ? 0.0f : 1e-5f * std::abs(eager_loss));
  }
}

// Every kernel that draws random numbers takes a replay's seed shift: each random op (dropout,
// the fused residual adds and norms, fused attention forward and backward, fp32's scalar kernels
// and bf16's tensor-core ones) replayed with shift k is the op run eagerly with seed + k.
TEST(CudaGraphs, EveryRandomDrawOfAReplayFollowsItsSeedShift) {
  SKIP_WHERE_NOTHING_CAN_BE_CAPTURED();
  const Device device = emu_device();
  for (DType dtype : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const auto input = [&](const Shape& shape, uint64_t seed) {
      return data(shape, seed, dtype).to(dtype).to(device);
    };
    const Tensor residual = input({2, 5, 32}, 1), x = input({2, 5, 32}, 2), bias = input({32}, 3),
                 weight = input({32}, 4), norm_bias = input({32}, 5),
                 out_weight = input({2, 8, 2, 16}, 9);
    const Tensor one = Tensor::full({}, 1.0f).to(dtype).to(device);
    Tensor q = input({2, 8, 2, 16}, 6).set_requires_grad(true);
    Tensor k = input({2, 8, 2, 16}, 7).set_requires_grad(true);
    Tensor v = input({2, 8, 2, 16}, 8).set_requires_grad(true);
    const auto random_ops = [&](uint64_t seed) {
      const float p = 0.3f;
      std::vector<Tensor> outs = {dropout(x, p, seed, 1),
                                  residual_dropout_add(residual, x, bias, p, seed, 2)};
      const ResidualAndNorm ln =
          residual_dropout_add_layernorm(residual, x, bias, p, seed, 3, weight, norm_bias, 1e-5f);
      const ResidualAndNorm rms =
          residual_dropout_add_rms_norm(residual, x, bias, p, seed, 4, weight, 1e-6f);
      AttentionMask mask;
      mask.scale = 0.25f;
      mask.causal = true;
      const Tensor o = attention(q, k, v, mask, {p, seed, 5});
      sum_all(mul(o, out_weight)).backward(one);
      for (const Tensor& t :
           {ln.sum, ln.normed, rms.sum, rms.normed, o, q.grad(), k.grad(), v.grad()})
        outs.push_back(t);
      return outs;
    };
    const auto on_host = [](const std::vector<Tensor>& tensors) {
      std::vector<std::vector<float>> values;
      for (const Tensor& t : tensors) values.push_back(t.to_floats());
      return values;
    };
    const auto drop_grads = [&] {
      for (Tensor* t : {&q, &k, &v}) t->zero_grad();
    };
    const uint64_t seed = 21, shift = 1000003;
    const auto eager_shifted = on_host(random_ops(seed + shift));
    drop_grads();
    const auto eager = on_host(random_ops(seed));
    drop_grads();
    ASSERT_NE(eager_shifted[0], eager[0]) << "the shift changes no draw";
    std::vector<Tensor> outs;
    std::unique_ptr<CapturedWork> graph = emu_backend().capture([&] { outs = random_ops(seed); });
    ASSERT_NE(graph, nullptr);
    graph->replay(shift);
    const auto replayed_shifted = on_host(outs);
    graph->replay();
    const auto replayed = on_host(outs);
    ASSERT_EQ(replayed.size(), eager.size());
    for (size_t i = 0; i < eager.size(); ++i) {
      EXPECT_EQ(replayed_shifted[i], eager_shifted[i]) << "output " << i;
      EXPECT_EQ(replayed[i], eager[i]) << "output " << i;
    }
    outs.clear();
    drop_grads();
  }
}

// A whole prompt-tuning step as a trainer would capture it, with every input in device memory
// refilled between replays: token ids (CheckedIndices), the prompt, and the causal LM targets
// (LossTargets) over every position but each row's last, unlabelled ones ignored, so the shapes
// never change; forward with dropout, the loss, backward into the prompt. Each replay, after the
// next batch's refill and with the next step's seed shift, is the eager step on that batch with
// the host-label causal_lm_loss: the same loss and prompt gradient up to the device loss's
// roundings (1e-5 of the largest value: a few fp32 roundings through two layers).
TEST(CudaGraphs, AWholePromptTuningStepReplaysEachNewBatch) {
  SKIP_WHERE_NOTHING_CAN_BE_CAPTURED();
  const Device device = emu_device();
  auto model = Gpt2Model::load(kFixtures + "/gpt2_tiny_a", device);
  auto golden = SafetensorsFile::open(kFixtures + "/golden/gpt2_tiny_a.safetensors");
  const Tensor first_ids = golden->get("input_ids");
  const int64_t batch = first_ids.size(0), text = first_ids.size(1), virtual_tokens = 4;
  const int64_t positions = virtual_tokens + text, vocab = model->config().vocab_size;
  const Tensor first_labels = concat(
      {Tensor::full({batch, virtual_tokens}, -100.0f).to(DType::I64), golden->get("labels")}, 1);
  // The second batch: other ids, and labels on other positions.
  std::vector<int64_t> ids_values = first_ids.to_ints(), label_values = first_labels.to_ints();
  for (int64_t& id : ids_values) id = (id * 7 + 3) % vocab;
  for (size_t i = 0; i < label_values.size(); ++i)
    label_values[i] = i % 3 == 0 ? -100 : int64_t(i * 11 % size_t(vocab));
  const Tensor second_ids = Tensor::from_ints(ids_values, first_ids.shape());
  const Tensor second_labels = Tensor::from_ints(label_values, first_labels.shape());
  // Row r = b * positions + t predicts labels[b, t + 1], for t < positions - 1.
  std::vector<int64_t> row_values;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < positions; ++t) row_values.push_back(b * positions + t);
  const auto shifted_targets = [&](const Tensor& labels) {
    const std::vector<int64_t> v = labels.to_ints();
    std::vector<int64_t> targets;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t + 1 < positions; ++t)
        targets.push_back(v[size_t(b * positions + t + 1)]);
    return Tensor::from_ints(targets, {int64_t(targets.size())});
  };
  const CheckedIndices rows("loss rows",
                            Tensor::from_ints(row_values, {int64_t(row_values.size())}),
                            batch * positions, device);
  CheckedIndices ids("input ids", first_ids, vocab, device);
  LossTargets targets(shifted_targets(first_labels), vocab, -100, device);
  Tensor prompt = randn({batch, virtual_tokens, model->config().n_embd}, 17)
                      .to(device)
                      .detach()
                      .set_requires_grad(true);
  const Tensor one = Tensor::full({}, 1.0f).to(device);
  ForwardOptions train;
  train.train = true;
  train.dropout_seed = 40;

  // The eager step on host ids and labels, as the trainer runs it today.
  const auto eager_step = [&](const Tensor& host_ids, const Tensor& labels, uint64_t seed) {
    Tensor p = prompt.detach().clone().set_requires_grad(true);
    ForwardOptions options = train;
    options.dropout_seed = seed;
    Tensor embeds = concat({p, model->embed(host_ids)}, 1);
    Tensor hidden = model->hidden_states(embeds, Tensor(), Tensor(), nullptr, options);
    Tensor loss = causal_lm_loss(*model, hidden, labels).loss;
    loss.backward();
    return std::pair{loss.item(), p.grad().to_floats()};
  };
  Tensor loss;
  const auto captured_step = [&] {
    Tensor embeds = concat({prompt, model->embed(ids)}, 1);
    Tensor hidden = model->hidden_states(embeds, Tensor(), Tensor(), nullptr, train);
    Tensor selected = index_select(hidden.reshape({-1, hidden.size(2)}), rows);
    loss = linear_cross_entropy(selected, model->output_embeddings(), targets).loss;
    loss.backward(one);
  };
  captured_step();  // once eagerly: the cache then holds every block the capture needs
  loss = Tensor();
  prompt.zero_grad();
  std::unique_ptr<CapturedWork> graph = emu_backend().capture(captured_step);
  ASSERT_NE(graph, nullptr);

  struct Batch {
    const Tensor& ids;
    const Tensor& labels;
    uint64_t seed_shift;
  };
  for (const Batch& next : {Batch{first_ids, first_labels, 0}, Batch{second_ids, second_labels, 9},
                            Batch{first_ids, second_labels, 1}}) {
    ids.refill(next.ids);
    targets.refill(shifted_targets(next.labels));
    graph->replay(next.seed_shift);
    const auto [want_loss, want_grad] =
        eager_step(next.ids, next.labels, train.dropout_seed + next.seed_shift);
    EXPECT_NEAR(loss.item(), want_loss, 1e-5f * std::abs(want_loss));
    const std::vector<float> got_grad = prompt.grad().to_floats();
    ASSERT_EQ(got_grad.size(), want_grad.size());
    float largest = 0.0f;
    for (float g : want_grad) largest = std::max(largest, std::abs(g));
    for (size_t i = 0; i < got_grad.size(); ++i)
      ASSERT_NEAR(got_grad[i], want_grad[i], 1e-5f * largest) << "grad " << i;
  }
  graph.reset();
  loss = Tensor();
  prompt.zero_grad();
}

// Work a capture cannot hold fails with one error naming what it did, nothing is recorded, and
// the backend is as before: not capturing, no pool, and eager work runs.
TEST(CudaGraphs, WorkThatNeedsTheHostIsRefusedAndTheBackendStaysUsable) {
  SKIP_WHERE_NOTHING_CAN_BE_CAPTURED();
  PromptStep step;
  Tensor prompt = step.prompt(9);
  auto golden = SafetensorsFile::open(kFixtures + "/golden/gpt2_tiny_a.safetensors");
  Tensor labels =  // on the host, as the trainer has them: the loss uploads them
      concat({Tensor::full({step.ids.size(0), 4}, -100.0f).to(DType::I64), golden->get("labels")},
             1);
  auto lm_loss = [&] {
    Tensor embeds = concat({prompt, step.token_embeds}, 1);
    Tensor hidden = step.model->hidden_states(embeds, Tensor(), Tensor(), nullptr, step.train);
    return causal_lm_loss(*step.model, hidden, labels).loss;
  };
  const float eager = lm_loss().item();  // fills the cache
  Backend& backend = emu_backend();
  const Tensor device_ids = step.ids.to(emu_device());
  struct Refused {
    const char* what;
    std::function<void()> work;
    const char* message;
  };
  const Refused cases[] = {
      {"an upload", [&] { (void)lm_loss(); }, "copy_from_host"},
      {"a read on the host", [&] { (void)step.seed.item(); }, "copy_to_host"},
      {"a lookup of device ids (checked on the host)", [&] { (void)step.model->embed(device_ids); },
       "copy_to_host"},
      {"a synchronisation", [&] { backend.synchronize(); }, "synchronize"},
      {"an allocation the cache cannot serve",
       [&] {
         (void)Tensor::zeros({12345, 7}, DType::F32, emu_device());
       },
       "inside a capture"},
  };
  for (const Refused& refused : cases) {
    SCOPED_TRACE(refused.what);
    try {
      (void)backend.capture(refused.work);
      ADD_FAILURE() << "captured";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(refused.message), std::string::npos) << e.what();
    }
    EXPECT_FALSE(emu_backend().capturing());
    cuda_emu::cudaStreamCaptureStatus status = cuda_emu::cudaStreamCaptureStatusActive;
    ASSERT_EQ(cuda_emu::cudaStreamIsCapturing(emu_backend().stream(), &status),
              cuda_emu::cudaSuccess);
    EXPECT_EQ(status, cuda_emu::cudaStreamCaptureStatusNone);
    EXPECT_EQ(emu_backend().caching_allocator().cache_stats().pooled_bytes, 0u);
    EXPECT_EQ(lm_loss().item(), eager);
  }
}

TEST(CudaGraphs, SyncAfterEveryLaunchAndNestedCapturesAreRefusedUpFront) {
  SKIP_WHERE_NOTHING_CAN_BE_CAPTURED();
  Backend& backend = emu_backend();
  bool ran = false;
  cuda_emu::sync_after_every_launch().store(true);
  try {
    (void)backend.capture([&] { ran = true; });
    ADD_FAILURE() << "captured";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("SOFTPROMPT_CUDA_SYNC=1"), std::string::npos) << e.what();
  }
  cuda_emu::sync_after_every_launch().store(false);
  EXPECT_FALSE(ran);
  try {
    (void)backend.capture([&] { (void)backend.capture([] {}); });
    ADD_FAILURE() << "captured";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already capturing"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(emu_backend().capturing());
  EXPECT_NE(backend.capture([] {}), nullptr);  // and it captures again
}

TEST(CudaGraphs, TheCpuBackendCapturesNothing) {
  bool ran = false;
  EXPECT_EQ(cpu().capture([&] { ran = true; }), nullptr);
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace sp::cuda_test
