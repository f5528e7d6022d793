// CPU activations (gelu_new, exact GELU, ReLU, SiLU) and the gated form act(gate) * up, vectorised
// with Eigen arrays; the formulas are those of kernels/activation_math.h.
#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"
#include "kernels/activation_math.h"

namespace sp {

namespace {

using Array = Eigen::ArrayXf;
using ConstMap = Eigen::Map<const Array>;
using Map = Eigen::Map<Array>;
constexpr int64_t kGrain = 1 << 14;

Array apply(Activation act, const ConstMap& x) {
  switch (act) {
    case Activation::kGeluTanh: {
      Array inner = act::kSqrt2OverPi * (x + act::kGeluCubic * x * x * x);
      return 0.5f * x * (1.0f + inner.tanh());
    }
    case Activation::kGeluErf:
      return 0.5f * x * (1.0f + (x * act::kInvSqrt2).erf());
    case Activation::kRelu:
      return x.max(0.0f);
    case Activation::kSilu:
      return x / (1.0f + (-x).exp());
  }
  return Array();
}

Array derivative(Activation act, const ConstMap& x) {
  switch (act) {
    case Activation::kGeluTanh: {
      Array inner = act::kSqrt2OverPi * (x + act::kGeluCubic * x * x * x);
      Array t = inner.tanh();
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * act::kSqrt2OverPi *
                                     (1.0f + 3.0f * act::kGeluCubic * x * x);
    }
    case Activation::kGeluErf:
      return 0.5f * (1.0f + (x * act::kInvSqrt2).erf()) +
             x * act::kInvSqrt2Pi * (-0.5f * x * x).exp();
    case Activation::kRelu:
      return (x > 0.0f).cast<float>();
    case Activation::kSilu: {
      Array s = 1.0f / (1.0f + (-x).exp());
      return s * (1.0f + x * (1.0f - s));
    }
  }
  return Array();
}

void check_f32_contiguous(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    SP_ASSERT(!t->defined() || (t->dtype() == DType::F32 && t->is_contiguous()));
}

}  // namespace

void CpuBackend::activation_forward(Activation act, const Tensor& x, const Tensor& y) {
  check_f32_contiguous({&x, &y});
  const float* in = x.data<float>();
  float* out = y.data<float>();
  parallel_for(0, x.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    Map(out + lo, hi - lo) = apply(act, ConstMap(in + lo, hi - lo));
  });
}

void CpuBackend::activation_backward(Activation act, const Tensor& x, const Tensor& dy,
                                     const Tensor& dx) {
  check_f32_contiguous({&x, &dy, &dx});
  const float* in = x.data<float>();
  const float* g = dy.data<float>();
  float* out = dx.data<float>();
  parallel_for(0, x.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    Map(out + lo, hi - lo) =
        ConstMap(g + lo, hi - lo) * derivative(act, ConstMap(in + lo, hi - lo));
  });
}

void CpuBackend::gated_forward(Activation act, const Tensor& gate, const Tensor& up,
                               const Tensor& y) {
  check_f32_contiguous({&gate, &up, &y});
  const float* pg = gate.data<float>();
  const float* pu = up.data<float>();
  float* out = y.data<float>();
  parallel_for(0, y.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    Map(out + lo, hi - lo) = apply(act, ConstMap(pg + lo, hi - lo)) * ConstMap(pu + lo, hi - lo);
  });
}

void CpuBackend::gated_backward(Activation act, const Tensor& gate, const Tensor& up,
                                const Tensor& dy, const Tensor& d_gate, const Tensor& d_up) {
  check_f32_contiguous({&gate, &up, &dy, &d_gate, &d_up});
  const float* pg = gate.data<float>();
  const float* pu = up.data<float>();
  const float* g = dy.data<float>();
  parallel_for(0, dy.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    ConstMap gate_chunk(pg + lo, hi - lo), up_chunk(pu + lo, hi - lo), grad(g + lo, hi - lo);
    if (d_gate.defined())
      Map(d_gate.data<float>() + lo, hi - lo) = grad * up_chunk * derivative(act, gate_chunk);
    if (d_up.defined()) Map(d_up.data<float>() + lo, hi - lo) = grad * apply(act, gate_chunk);
  });
}

}  // namespace sp
