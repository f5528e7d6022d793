// The kernels at the shapes of a GPT-2 small step (attention B=8 H=12 T=1024 D=64, layernorm
// 8192 x 768, the LM head's cross-entropy 8192 x 50257) against the CPU, on a real GPU when
// SOFTPROMPT_CUDA_TEST_DEVICE names one (scripts/gpu_check.sh), at reduced shapes on cuda-emu.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace sp::cuda_test {
namespace {

struct Grads {
  Tensor out;
  std::vector<Tensor> grads;
};

// Runs fn on copies of the host inputs on `device` (float inputs in `dtype`, trainable), then
// backward from sum(out * weights) with fixed bf16-representable weights.
template <class Fn>
Grads forward_backward(const std::vector<Tensor>& host, Device device, DType dtype, Fn fn) {
  std::vector<Tensor> inputs;
  for (const Tensor& h : host) {
    Tensor t = h.to(device);
    if (dtype_is_float(t.dtype())) t = (t.dtype() == dtype ? t : t.to(dtype)).detach();
    if (dtype_is_float(t.dtype())) t.set_requires_grad(true);
    inputs.push_back(t);
  }
  Tensor out = fn(inputs);
  Tensor weights = data(out.shape(), 99, DType::BF16).to(device).to(out.dtype());
  sum_all(mul(out, weights)).backward();
  Grads g{out.detach(), {}};
  for (const Tensor& t : inputs)
    if (t.requires_grad()) g.grads.push_back(t.grad());
  return g;
}

void expect_close(const Grads& want, const Grads& got, float atol, float rtol) {
  EXPECT_TRUE(all_close(want.out, got.out, atol, rtol)) << "output";
  ASSERT_EQ(want.grads.size(), got.grads.size());
  for (size_t i = 0; i < want.grads.size(); ++i)
    EXPECT_TRUE(all_close(want.grads[i], got.grads[i], atol, rtol)) << "gradient " << i;
}

// GPT-2 small's causal attention with dropout on the packed qkv projection, in fp32 (the scalar
// kernels; tolerance as CudaAttention's fp32 cases: summation order over 1024 keys) and bf16
// (the tensor-core kernels on sm_80+; CudaAttention's bf16 allowance at D = 64).
TEST(CudaLargeShapes, Gpt2SmallAttention) {
  const int64_t B = on_gpu_or_emu(8, 1), T = on_gpu_or_emu(1024, 80), H = on_gpu_or_emu(12, 2);
  const int64_t D = 64;
  const std::vector<Tensor> host = {data({B, T, 3 * H * D}, 1, DType::BF16)};
  auto fn = [&](const std::vector<Tensor>& in) {
    AttentionMask mask;
    mask.scale = 1.0f / std::sqrt(float(D));
    mask.causal = true;
    return attention_packed(in[0], H, mask, {0.1f, 7, 0});
  };
  const Grads want = forward_backward(host, Device::cpu(), DType::F32, fn);
  expect_close(want, forward_backward(host, kernel_device(), DType::F32, fn), 2e-5f, 1e-4f);
  const Grads bf16 = forward_backward(host, kernel_device(), DType::BF16, fn);
  EXPECT_TRUE(all_close(want.out, bf16.out, 3e-2f, 3e-2f));
  const float grad_tol = 3e-2f * std::sqrt(float(D) / 16.0f) / (1.0f - 0.1f);
  EXPECT_TRUE(all_close(want.grads[0], bf16.grads[0], grad_tol, 3e-2f));
}

// One layernorm over a step's rows (tolerance: fp32 sums over 768 in another order).
TEST(CudaLargeShapes, LayernormOverAStepsRows) {
  const int64_t rows = on_gpu_or_emu(8192, 64), d = 768;
  const std::vector<Tensor> host = {data({rows, d}, 2), data({d}, 3), data({d}, 4)};
  auto fn = [](const std::vector<Tensor>& in) { return layernorm(in[0], in[1], in[2], 1e-5f); };
  expect_close(forward_backward(host, Device::cpu(), DType::F32, fn),
               forward_backward(host, kernel_device(), DType::F32, fn), 1e-4f, 1e-4f);
}

// The LM head's loss: cross-entropy over GPT-2's vocabulary for a step's rows, some ignored
// (tolerance: log-sum-exp over 50257 logits summed in another order, relative 1e-5).
TEST(CudaLargeShapes, CrossEntropyOverTheVocabulary) {
  const int64_t rows = on_gpu_or_emu(8192, 64), vocab = on_gpu_or_emu(50257, 1031);
  std::vector<int64_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[size_t(r)] = r % 7 == 3 ? -100 : (r * 7919) % vocab;
  const Tensor host_targets = Tensor::from_ints(targets, {rows});
  const std::vector<Tensor> host = {data({rows, vocab}, 5, DType::F32, 3.0f)};
  auto fn = [&](const std::vector<Tensor>& in) {
    return cross_entropy(in[0], host_targets).loss.reshape({1});
  };
  const Grads want = forward_backward(host, Device::cpu(), DType::F32, fn);
  const Grads got = forward_backward(host, kernel_device(), DType::F32, fn);
  EXPECT_NEAR(got.out.item(), want.out.item(), 1e-5f * std::abs(want.out.item()));
  EXPECT_TRUE(all_close(want.grads[0], got.grads[0], 1e-8f, 1e-4f));
}

}  // namespace
}  // namespace sp::cuda_test
