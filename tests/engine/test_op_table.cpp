// Runs the op table (tests/op_table) in two of its three modes: finite-difference gradient
// checks on the CPU reference, and consistency of every other available backend with the CPU
// (in fp32, and for CUDA backends also in bf16 against the same fp32 CPU reference).
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops/ops.h"
#include "tests/op_table/op_cases.h"

namespace sp::testing {
namespace {

struct RunResult {
  std::vector<float> output;
  std::vector<std::vector<float>> grads;  // per differentiable input
};

// loss = sum(out * w): w makes every output element matter with a different weight. With
// `dtype` BF16 the differentiable inputs are cast on the device (masks and ids keep their types)
// and the op runs, and differentiates, in bf16.
RunResult run_with_grads(const OpCase& c, Device device, const std::vector<Tensor>& host_inputs,
                         DType dtype = DType::F32) {
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < host_inputs.size(); ++i) {
    Tensor t = host_inputs[i].to(device);
    if (t.device() == host_inputs[i].device()) t = t.clone();
    bool diff =
        std::find(c.differentiable.begin(), c.differentiable.end(), i) != c.differentiable.end();
    if (diff && t.dtype() != dtype) t = t.to(dtype);
    if (diff) t.set_requires_grad(true);
    inputs.push_back(t);
  }
  Tensor out = c.run(inputs);
  RunResult result;
  result.output = out.to_floats();
  Tensor weights = random_tensor(out.shape(), 999).to(device).to(out.dtype());
  Tensor loss = sum_all(mul(out, weights));
  loss.backward();
  for (size_t i : c.differentiable) {
    Tensor g = inputs[i].grad();
    result.grads.push_back(g.defined() ? g.to_floats()
                                       : std::vector<float>(size_t(inputs[i].numel()), 0.0f));
  }
  return result;
}

double weighted_sum(const OpCase& c, const std::vector<Tensor>& inputs) {
  NoGradGuard no_grad;
  Tensor out = c.run(inputs);
  std::vector<float> values = out.to_floats();
  std::vector<float> weights = random_tensor(out.shape(), 999).to_floats();
  double total = 0.0;
  for (size_t i = 0; i < values.size(); ++i) total += double(values[i]) * double(weights[i]);
  return total;
}

class OpTable : public ::testing::TestWithParam<size_t> {};

TEST_P(OpTable, GradientMatchesFiniteDifferences) {
  const OpCase& c = op_cases()[GetParam()];
  if (c.fd_step == 0.0f || c.differentiable.empty()) GTEST_SKIP() << "no gradient check";
  std::vector<Tensor> inputs = c.make_inputs(CaseSize::kTest);
  RunResult analytic = run_with_grads(c, Device::cpu(), inputs);
  for (size_t d = 0; d < c.differentiable.size(); ++d) {
    size_t which = c.differentiable[d];
    std::vector<float> base = inputs[which].contiguous().to_floats();
    for (size_t e = 0; e < base.size(); ++e) {
      // Central differences in fp32 with the weighted sum accumulated in double: truncation
      // error ~ h^2 f''' ~ 1e-4 and rounding ~ 1e-7 * |out| * sqrt(n) / h ~ 1e-4 for these
      // O(1) inputs, so fd_tol (2e-2 relative to max(1, |grad|)) only admits real mistakes.
      auto perturbed = [&](float delta) {
        std::vector<float> values = base;
        values[e] += delta;
        std::vector<Tensor> shifted = inputs;
        shifted[which] = Tensor::from_floats(values, inputs[which].shape());
        return weighted_sum(c, shifted);
      };
      double fd = (perturbed(c.fd_step) - perturbed(-c.fd_step)) / (2.0 * c.fd_step);
      double got = analytic.grads[d][e];
      ASSERT_LE(std::abs(got - fd), c.fd_tol * std::max(1.0, std::abs(fd)))
          << c.name << ": input " << which << " element " << e << " analytic " << got << " vs FD "
          << fd;
    }
  }
}

void expect_matches(const OpCase& c, const RunResult& reference, const RunResult& other,
                    const std::string& where, float atol, float rtol) {
  auto expect_close = [&](const std::vector<float>& want, const std::vector<float>& got,
                          const std::string& what) {
    ASSERT_EQ(want.size(), got.size()) << c.name << " " << what;
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_LE(std::abs(want[i] - got[i]), atol + rtol * std::abs(want[i]))
          << c.name << " on " << where << ": " << what << "[" << i << "] cpu " << want[i] << " vs "
          << got[i];
  };
  expect_close(reference.output, other.output, "output");
  for (size_t d = 0; d < reference.grads.size(); ++d)
    expect_close(reference.grads[d], other.grads[d], "grad of input " + std::to_string(d));
}

TEST_P(OpTable, EveryBackendMatchesCpu) {
  const OpCase& c = op_cases()[GetParam()];
  std::vector<Tensor> inputs = c.make_inputs(CaseSize::kTest);
  RunResult reference = run_with_grads(c, Device::cpu(), inputs);
  int compared = 0;
  for (Device device : available_devices()) {
    if (device.is_cpu()) continue;
    RunResult other = run_with_grads(c, device, inputs);
    expect_matches(c, reference, other, device.str(), c.atol, c.rtol);
    ++compared;
  }
  if (compared == 0) GTEST_SKIP() << "only the cpu backend is available in this build";
}

// CUDA backends also compute in bf16 (the CPU refuses it): the same case with its differentiable
// inputs in bf16 must stay within the case's bf16 tolerance of the fp32 CPU result (see
// OpCase::bf16_atol for why those tolerances are what they are).
TEST_P(OpTable, Bf16OnCudaBackendsMatchesFp32Cpu) {
  const OpCase& c = op_cases()[GetParam()];
  if (!c.bf16) GTEST_SKIP() << c.name << " has no bf16 variant";
  std::vector<Tensor> inputs = c.make_inputs(CaseSize::kTest);
  RunResult reference = run_with_grads(c, Device::cpu(), inputs);
  int compared = 0;
  for (Device device : available_devices()) {
    if (device.kind != DeviceKind::CUDA && device.kind != DeviceKind::CUDA_EMU) continue;
    RunResult other = run_with_grads(c, device, inputs, DType::BF16);
    expect_matches(c, reference, other, device.str() + " in bf16", c.bf16_atol, c.bf16_rtol);
    ++compared;
  }
  if (compared == 0) GTEST_SKIP() << "no CUDA backend in this build";
}

const OpCase& find_case(const std::string& name) {
  for (const OpCase& c : op_cases())
    if (c.name == name) return c;
  throw std::runtime_error("no op-table case " + name);
}

// `fused` and `composed` (the same inputs, the ops the fused one replaces) give the same bits,
// forward and backward, in fp32 and bf16, on the CPU and under the emulator (a GPU may contract
// arithmetic differently; the kernel tests check it there).
void expect_same_bits(const OpCase& fused, const OpCase& composed) {
  const std::vector<Tensor> inputs = fused.make_inputs(CaseSize::kTest);
  for (Device device : available_devices())
    for (DType dtype : {DType::F32, DType::BF16}) {
      if ((dtype == DType::BF16 && device.is_cpu()) || device.kind == DeviceKind::CUDA) continue;
      const RunResult want = run_with_grads(composed, device, inputs, dtype);
      const RunResult got = run_with_grads(fused, device, inputs, dtype);
      const std::string where = fused.name + " on " + device.str() + " " + dtype_name(dtype);
      EXPECT_EQ(want.output, got.output) << where;
      ASSERT_EQ(want.grads.size(), got.grads.size());
      for (size_t d = 0; d < want.grads.size(); ++d)
        EXPECT_EQ(want.grads[d], got.grads[d]) << where << ": grad of input " << d;
    }
}

// The fused residual + norm ops are the two ops they replace, bit for bit: the CUDA kernel runs
// the same per-element and per-row code as the two kernels, and the backward is theirs.
// CudaKernels.ResidualNormForwardIsTheTwoKernelsInOnePass checks the kernel on a GPU.
TEST(FusedOps, ResidualDropoutAddNormIsTheTwoOpsItReplaces) {
  const OpCase& layernorm_case = find_case("residual_dropout_add_layernorm/bias_dropout");
  const OpCase& rms_case = find_case("residual_dropout_add_rms_norm/bias_dropout");
  OpCase layernorm_composed = layernorm_case, rms_composed = rms_case;
  layernorm_composed.run = [](const std::vector<Tensor>& in) {
    const Tensor sum = residual_dropout_add(in[0], in[1], in[2], 0.3f, 99, 5);
    return add(sum, layernorm(sum, in[3], in[4], 1e-5f));
  };
  rms_composed.run = [](const std::vector<Tensor>& in) {
    const Tensor sum = residual_dropout_add(in[0], in[1], in[2], 0.3f, 99, 5);
    return add(sum, rms_norm(sum, in[3], 1e-6f));
  };
  expect_same_bits(layernorm_case, layernorm_composed);
  expect_same_bits(rms_case, rms_composed);
}

// A packed gated activation reads the halves of its input in place and writes both halves of its
// gradient: the same bits as gated_activation over the two slices (whose backward zero-fills,
// copies and adds), for odd widths (scalar loads) and whole-pack ones (vector loads).
TEST(FusedOps, GatedActivationPackedIsTheSplitOpItReplaces) {
  for (const char* name :
       {"gated_activation_packed/swiglu_odd_width", "gated_activation_packed/gelu_whole_packs"}) {
    const OpCase& packed = find_case(name);
    OpCase split = packed;
    const Activation act = std::string(name).find("swiglu") != std::string::npos
                               ? Activation::kSilu
                               : Activation::kGeluTanh;
    split.run = [act](const std::vector<Tensor>& in) {
      const int64_t width = in[0].size(-1) / 2, last = in[0].dim() - 1;
      return gated_activation(in[0].slice(last, 0, width), in[0].slice(last, width, 2 * width),
                              act);
    };
    expect_same_bits(packed, split);
  }
}

// On the CPU, which has no fused epilogue, feed_forward is the ops it replaces bit for bit: the
// same GEMMs and activation kernels, in one node. (Under cuda-emu the GELU runs in cuBLASLt's
// epilogue, which rounds once where the kernels round twice: CudaGemmEpilogues compares them.)
TEST(FusedOps, FeedForwardIsTheComposedOpsOnTheCpu) {
  for (const char* name : {"feed_forward/gelu_tanh_bias", "feed_forward/relu"}) {
    const OpCase& fused = find_case(name);
    OpCase composed = fused;
    const Activation act = std::string(name).find("relu") != std::string::npos
                               ? Activation::kRelu
                               : Activation::kGeluTanh;
    composed.run = [act](const std::vector<Tensor>& in) {
      return matmul(activation(matmul(in[0], in[1]), act, in[2]), in[3]);
    };
    const std::vector<Tensor> inputs = fused.make_inputs(CaseSize::kTest);
    const RunResult want = run_with_grads(composed, Device::cpu(), inputs);
    const RunResult got = run_with_grads(fused, Device::cpu(), inputs);
    EXPECT_EQ(want.output, got.output) << name;
    ASSERT_EQ(want.grads.size(), got.grads.size());
    EXPECT_EQ(want.grads[0], got.grads[0]) << name;
  }
}

// Rotating q and k inside the attention op, from and into one packed buffer, gives the bits of
// rotary_embedding on the q and k slices and attention over them (whose backward assembles the
// packed gradient from three zero-filled slices).
TEST(FusedOps, RotaryAttentionPackedIsTheOpsItReplaces) {
  const OpCase& packed = find_case("rotary_attention_packed/gqa_causal_dropout_padding");
  OpCase split = packed;
  split.run = [](const std::vector<Tensor>& in) {
    const int64_t H = 4, Hkv = 2, D = in[1].size(2) * 2;
    auto heads = [&](int64_t first, int64_t count) { return packed_heads(in[0], first, count, D); };
    AttentionMask mask;
    mask.scale = 1.0f / std::sqrt(float(D));
    mask.causal = true;
    mask.key_padding = in[3];
    return attention(rotary_embedding(heads(0, H), in[1], in[2]),
                     rotary_embedding(heads(H, Hkv), in[1], in[2]), heads(H + Hkv, Hkv), mask,
                     {0.2f, 5, 1});
  };
  expect_same_bits(packed, split);
}

// Attending k and v in place in one packed projection, and writing their gradients into one
// packed gradient, gives the bits of attention over the two slices.
TEST(FusedOps, AttentionKvPackedIsTheOpItReplaces) {
  const OpCase& packed = find_case("attention_kv_packed/cross_padding_dropout");
  OpCase split = packed;
  split.run = [](const std::vector<Tensor>& in) {
    const int64_t H = in[0].size(2), D = in[0].size(3);
    AttentionMask mask;
    mask.key_padding = in[2];
    return attention(in[0], packed_heads(in[1], 0, H, D), packed_heads(in[1], H, H, D), mask,
                     {0.2f, 7, 3});
  };
  expect_same_bits(packed, split);
}

std::string case_name(const ::testing::TestParamInfo<size_t>& info) {
  std::string name = op_cases()[info.param].name;
  for (char& ch : name)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name;
}

INSTANTIATE_TEST_SUITE_P(Ops, OpTable, ::testing::Range<size_t>(0, op_cases().size()), case_name);

TEST(OpTableCoverage, EveryDifferentiableOpFamilyHasACase) {
  std::set<std::string> families;
  for (const OpCase& c : op_cases()) families.insert(c.name.substr(0, c.name.find('/')));
  for (const char* op : {"add",
                         "sub",
                         "mul",
                         "affine",
                         "matmul",
                         "embedding",
                         "index_select",
                         "concat",
                         "slice",
                         "view",
                         "sum",
                         "mean",
                         "layernorm",
                         "rms_norm",
                         "activation",
                         "gated_activation_packed",
                         "feed_forward",
                         "masked_softmax",
                         "attention",
                         "attention_kv_packed",
                         "rotary_attention_packed",
                         "cross_entropy",
                         "linear_cross_entropy",
                         "dropout",
                         "residual_dropout_add",
                         "residual_dropout_add_layernorm",
                         "residual_dropout_add_rms_norm"})
    EXPECT_TRUE(families.count(op)) << "no op-table case for " << op;
}

}  // namespace
}  // namespace sp::testing
