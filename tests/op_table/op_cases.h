// The op-test table: one description per op case (inputs, which are differentiable, how to run
// it), shared by three modes: backend consistency, finite-difference gradients, and benchmarks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace sp::testing {

enum class CaseSize { kTest, kPerf };

struct OpCase {
  std::string name;  // "<op>/<variant>", e.g. "attention/causal_packed_qkv"
  // Host inputs for the given size; float inputs at the indices in `differentiable` get grads.
  std::function<std::vector<Tensor>(CaseSize)> make_inputs;
  std::vector<size_t> differentiable;
  // Runs the op on inputs already on the target device (float ones marked trainable).
  std::function<Tensor(const std::vector<Tensor>&)> run;
  // Cross-backend tolerance on outputs and gradients (fp32 reference vs fp32 kernels).
  float atol = 1e-5f;
  float rtol = 1e-4f;
  // Finite-difference step and tolerance; 0 step disables the gradient check for the case.
  float fd_step = 1e-2f;
  float fd_tol = 2e-2f;
  // Whether the CUDA backends run this case in bf16 as well (checked against fp32 CPU): the
  // differentiable inputs are cast to bf16 on the device; other inputs (masks, ids) keep their
  // types.
  bool bf16 = true;
  // bf16 tolerance against the fp32 CPU result. bf16 keeps 8 significant bits, so every rounding
  // (of an input, of an output, of an intermediate a backward re-reads) costs up to 2^-9 = 0.2%
  // relative. The cases' data are O(1): an output is a few roundings of O(1) values (~1% worst
  // case) plus, for sums over k terms, absolute error ~ 2^-9 sqrt(k) max|term|; gradients chain
  // a forward and a backward of such values. 3e-2 absolute + 3e-2 relative admits that with
  // margin, while a wrong formula, mask or index moves values by O(1) and still fails.
  float bf16_atol = 3e-2f;
  float bf16_rtol = 3e-2f;
};

const std::vector<OpCase>& op_cases();

// Deterministic test data.
Tensor random_tensor(const Shape& shape, uint64_t seed, float std = 1.0f);
// Values with |x| >= margin (keeps ReLU-like kinks away from finite differences).
Tensor random_away_from_zero(const Shape& shape, uint64_t seed, float margin = 0.1f);
Tensor random_ids(const Shape& shape, int64_t vocab, uint64_t seed);

}  // namespace sp::testing
