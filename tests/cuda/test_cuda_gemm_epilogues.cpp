// The feed-forward's cuBLASLt epilogues on the CUDA backend (GELU_AUX_BIAS forward, DGELU on the
// backward's first GEMM): which path runs, and that it agrees with the unfused kernels and with
// the fp32 CPU, in fp32 and bf16.
#include <gtest/gtest.h>

#include "engine/autograd.h"
#include "engine/error.h"
#include "tests/cuda/cuda_test_util.h"

namespace sp::cuda_test {
namespace {

struct FeedForwardInputs {
  Tensor x, w_in, b_in, w_out, loss_weights;
};

// x [2, 5, d] and the weights, bf16-representable when the run is bf16 (data() rounds them), so
// the CPU reference computes on exactly the device's inputs.
FeedForwardInputs make_inputs(int64_t d, int64_t inner, DType dtype) {
  return {data({2, 5, d}, 1, dtype), data({d, inner}, 2, dtype, 0.3f),
          data({inner}, 3, dtype, 0.5f), data({inner, d}, 4, dtype, 0.3f),
          data({2, 5, d}, 5, dtype)};
}

struct FeedForwardResult {
  Tensor out, dx;  // on the host, F32
};

// loss = sum(feed_forward(x) * loss_weights); the weights are frozen, x is trainable. With
// `linear_layout` the weights are stored [out, in] (nn.Linear) and passed as transposed views, so
// both GEMMs read a transposed B.
FeedForwardResult run(const FeedForwardInputs& in, Device device, DType dtype,
                      Activation act = Activation::kGeluTanh, bool linear_layout = false) {
  const auto place = [&](const Tensor& t) {
    Tensor placed = t.to(device);
    return placed.dtype() == dtype ? placed : placed.to(dtype);
  };
  const auto weight = [&](const Tensor& w) {
    return linear_layout ? place(w.transpose(0, 1).contiguous()).transpose(0, 1) : place(w);
  };
  Tensor x = place(in.x).detach().clone();  // a leaf of its own, even on the CPU
  x.set_requires_grad(true);
  Tensor out = feed_forward(x, weight(in.w_in), place(in.b_in), act, weight(in.w_out));
  sum_all(mul(out, place(in.loss_weights))).backward();
  return {out.to(Device::cpu()).to(DType::F32), x.grad().to(Device::cpu()).to(DType::F32)};
}

uint64_t launches(const Backend& backend, const char* kernel) {
  const auto all = backend.stats().launches_by_kernel;
  const auto it = all.find(kernel);
  return it == all.end() ? 0 : uint64_t(it->second);
}

// Resets the emulated backend's epilogue switch to its default at scope exit.
struct EpilogueSwitch {
  ~EpilogueSwitch() { emu_backend().set_gemm_epilogues(true); }
};

// Tolerances against the fp32 CPU. fp32 under the emulator differs in summation order and in the
// tanh of its GELU: a few ulps of O(1) values (atol_for). A GPU's cuBLASLt does not document its
// GELU's accuracy; if it uses the hardware tanh.approx.f32 (relative error ~2^-11, PTX ISA), GELU
// moves by up to ~2.5e-4 |v| and 64-term sums with 0.3-scale weights by ~1e-3: 2e-3 there. bf16
// rounds x W + b, the GELU output, the backward's d(hidden) and both outputs to 8 significant bits
// (2^-9 each) and sums 32-64 such terms: 3e-2 absolute + relative, as the op table's bf16 cases.
// A wrong epilogue (no bias, GELU' at the wrong point, a transposed operand) moves values by O(1).
float tolerance(DType dtype) {
  if (dtype != DType::F32) return 3e-2f;
  return kernel_device_is_emulated() ? atol_for(DType::F32) : 2e-3f;
}

// On the kernel test device (cuda-emu, or the GPU scripts/gpu_check.sh names, where it checks
// the real cuBLASLt); the comparison with the unfused kernels needs the emulated backend's switch.
TEST(CudaGemmEpilogues, FeedForwardFusesTheGeluIntoBothGemmsAndMatchesTheKernels) {
  Backend& backend = kernel_backend();
  cuda_emu::CudaBackend* emulated = kernel_device_is_emulated() ? &emu_backend() : nullptr;
  EpilogueSwitch restore;
  for (DType dtype : {DType::F32, DType::BF16}) {
    // inner 64: the saved GELU input's row stride is a multiple of cuBLASLt's 8 elements; 60 is
    // not, so the backend runs GEMM + activation kernels. Both weight layouts: cuBLASLt's
    // operands are transposed or not accordingly.
    for (const auto& [inner, linear_layout] : {std::pair{64, false}, {60, false}, {64, true}}) {
      const FeedForwardInputs in = make_inputs(32, inner, dtype);
      const FeedForwardResult cpu_result = run(in, Device::cpu(), DType::F32);
      const std::string where = std::string(dtype_name(dtype)) + " inner " + std::to_string(inner) +
                                (linear_layout ? " [out, in]" : "");
      backend.reset_stats();
      const FeedForwardResult with =
          run(in, kernel_device(), dtype, Activation::kGeluTanh, linear_layout);
      const bool fused = inner % 8 == 0;
      EXPECT_EQ(launches(backend, "activation_forward_kernel"), fused ? 0u : 1u) << where;
      EXPECT_EQ(launches(backend, "activation_backward_kernel"), fused ? 0u : 1u) << where;
      EXPECT_EQ(backend.stats().gemm_calls, 4u) << where;  // two forward, two backward
      const float tol = tolerance(dtype);
      EXPECT_TRUE(all_close(cpu_result.out, with.out, tol, tol)) << where;
      EXPECT_TRUE(all_close(cpu_result.dx, with.dx, tol, tol)) << where;
      if (emulated == nullptr) continue;
      emulated->set_gemm_epilogues(false);
      backend.reset_stats();
      const FeedForwardResult without =
          run(in, emu_device(), dtype, Activation::kGeluTanh, linear_layout);
      emulated->set_gemm_epilogues(true);
      EXPECT_EQ(launches(backend, "activation_forward_kernel"), 1u) << where;
      EXPECT_EQ(launches(backend, "activation_backward_kernel"), 1u) << where;
      EXPECT_TRUE(all_close(cpu_result.out, without.out, tol, tol)) << where << " kernels";
      EXPECT_TRUE(all_close(cpu_result.dx, without.dx, tol, tol)) << where << " kernels";
      if (dtype == DType::F32) {
        EXPECT_TRUE(all_close(without.out, with.out, atol_for(dtype), rtol_for(dtype))) << where;
        EXPECT_TRUE(all_close(without.dx, with.dx, atol_for(dtype), rtol_for(dtype))) << where;
      }
    }
  }
}

// cuBLASLt's heuristic assumes 256-byte aligned matrices unless told less; the backend declares
// each operand's alignment, so x as a column slice of a wider buffer (16 bytes past a boundary,
// rows 40 floats apart) still takes the epilogue, with the CPU's results.
TEST(CudaGemmEpilogues, OperandsLessAlignedThanTheDefaultStillFuse) {
  Backend& backend = kernel_backend();
  const FeedForwardInputs in = make_inputs(32, 64, DType::F32);
  const Tensor wide = data({10, 40}, 6);
  const auto run_on = [&](Device device) {
    Tensor leaf = wide.to(device).detach().clone();
    leaf.set_requires_grad(true);
    const Tensor x = leaf.slice(1, 4, 36);  // [10, 32], row stride 40, offset 16 bytes
    Tensor out = feed_forward(x, in.w_in.to(device), in.b_in.to(device), Activation::kGeluTanh,
                              in.w_out.to(device));
    sum_all(mul(out, out)).backward();
    return std::pair{out.to(Device::cpu()), leaf.grad().to(Device::cpu())};
  };
  const auto [want_out, want_grad] = run_on(Device::cpu());
  backend.reset_stats();
  const auto [got_out, got_grad] = run_on(kernel_device());
  EXPECT_EQ(launches(backend, "activation_forward_kernel"), 0u);
  EXPECT_EQ(launches(backend, "activation_backward_kernel"), 0u);
  EXPECT_TRUE(all_close(want_out, got_out, tolerance(DType::F32), tolerance(DType::F32)));
  EXPECT_TRUE(all_close(want_grad, got_grad, tolerance(DType::F32), tolerance(DType::F32)));
}

// The forward decides what it saves: with the epilogue, x W + b (bias included); without, x W and
// the bias apart. A backward on the other path (the switch flipped in between) must read it
// accordingly: DGELU only after a fused forward, the activation backward with or without the bias.
TEST(CudaGemmEpilogues, EachBackwardReadsWhatItsForwardSaved) {
  cuda_emu::CudaBackend& backend = emu_backend();
  EpilogueSwitch restore;
  const FeedForwardInputs in = make_inputs(16, 32, DType::F32);
  backend.set_gemm_epilogues(true);
  const FeedForwardResult fused = run(in, emu_device(), DType::F32);
  for (const bool forward_fused : {true, false}) {
    const auto place = [](const Tensor& t) { return t.to(emu_device()); };
    Tensor x = place(in.x);
    x.set_requires_grad(true);
    backend.set_gemm_epilogues(forward_fused);
    Tensor out =
        feed_forward(x, place(in.w_in), place(in.b_in), Activation::kGeluTanh, place(in.w_out));
    backend.set_gemm_epilogues(!forward_fused);
    backend.reset_stats();
    sum_all(mul(out, place(in.loss_weights))).backward();
    // Neither crossing may run DGELU: after a fused forward it is switched off; after an unfused
    // one the saved input lacks the bias.
    EXPECT_EQ(launches(backend, "activation_backward_kernel"), 1u) << forward_fused;
    const Tensor dx = x.grad().to(Device::cpu());
    EXPECT_TRUE(all_close(fused.dx, dx, atol_for(DType::F32), rtol_for(DType::F32)))
        << "forward fused: " << forward_fused;
  }
}

// cublasLtMatmul may still refuse a problem its heuristic offered an algorithm for (it checks its
// arguments before running anything): the op then runs the kernels. Any other failure is an error
// that names the call, not a silent fallback over a half-written result.
TEST(CudaGemmEpilogues, ARefusedMatmulRunsTheKernelsAndAFailedOneIsAnError) {
  cuda_emu::CudaBackend& backend = emu_backend();
  const FeedForwardInputs in = make_inputs(16, 32, DType::F32);
  const FeedForwardResult cpu_result = run(in, Device::cpu(), DType::F32);
  emu::fail_next_lt_matmul(cuda_emu::CUBLAS_STATUS_NOT_SUPPORTED);
  backend.reset_stats();
  const FeedForwardResult got = run(in, emu_device(), DType::F32);
  EXPECT_EQ(launches(backend, "activation_forward_kernel"), 1u);
  EXPECT_EQ(launches(backend, "activation_backward_kernel"), 1u);  // its forward saved x W alone
  EXPECT_TRUE(all_close(cpu_result.out, got.out, atol_for(DType::F32), rtol_for(DType::F32)));
  EXPECT_TRUE(all_close(cpu_result.dx, got.dx, atol_for(DType::F32), rtol_for(DType::F32)));
  emu::fail_next_lt_matmul(cuda_emu::CUBLAS_STATUS_EXECUTION_FAILED);
  try {
    run(in, emu_device(), DType::F32);
    FAIL() << "a failed cublasLtMatmul was ignored";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cublasLtMatmul failed"), std::string::npos) << e.what();
  }
}

// In inference nothing is saved, so ReLU takes cuBLASLt's RELU epilogue too (T5 v1.0's evaluation
// and generation); with a gradient to compute it would need DRELU's bit mask, and runs the kernels.
TEST(CudaGemmEpilogues, ReluFusesWhereNothingIsSaved) {
  Backend& backend = kernel_backend();
  for (DType dtype : {DType::F32, DType::BF16}) {
    const FeedForwardInputs in = make_inputs(16, 32, dtype);
    const auto place = [&](const Tensor& t, Device device, DType as) {
      Tensor placed = t.to(device);
      return placed.dtype() == as ? placed : placed.to(as);
    };
    NoGradGuard inference;
    const Tensor want = feed_forward(in.x, in.w_in, in.b_in, Activation::kRelu, in.w_out);
    backend.reset_stats();
    const Device d = kernel_device();
    const Tensor got =
        feed_forward(place(in.x, d, dtype), place(in.w_in, d, dtype), place(in.b_in, d, dtype),
                     Activation::kRelu, place(in.w_out, d, dtype));
    EXPECT_EQ(launches(backend, "activation_forward_kernel"), 0u) << dtype_name(dtype);
    EXPECT_EQ(backend.stats().gemm_calls, 2u);
    EXPECT_TRUE(
        all_close(want, got.to(Device::cpu()).to(DType::F32), tolerance(dtype), tolerance(dtype)))
        << dtype_name(dtype);
  }
}

// Activations cuBLASLt has no epilogue for (and ReLU with a gradient to compute) run the kernels
// inside the same node.
TEST(CudaGemmEpilogues, OtherActivationsRunTheKernels) {
  Backend& backend = kernel_backend();
  const FeedForwardInputs in = make_inputs(16, 32, DType::F32);
  for (Activation act : {Activation::kGeluErf, Activation::kRelu, Activation::kSilu}) {
    const FeedForwardResult cpu_result = run(in, Device::cpu(), DType::F32, act);
    backend.reset_stats();
    const FeedForwardResult got = run(in, kernel_device(), DType::F32, act);
    EXPECT_EQ(launches(backend, "activation_forward_kernel"), 1u);
    EXPECT_TRUE(all_close(cpu_result.out, got.out, atol_for(DType::F32), rtol_for(DType::F32)));
    EXPECT_TRUE(all_close(cpu_result.dx, got.dx, atol_for(DType::F32), rtol_for(DType::F32)));
  }
}

}  // namespace
}  // namespace sp::cuda_test
