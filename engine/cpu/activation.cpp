// CPU activations (gelu_new, exact GELU, ReLU, SiLU) of x + bias and the gated form act(gate) * up,
// vectorised with Eigen arrays; the formulas are those of kernels/activation_math.h.
#include <Eigen/Core>
#include <algorithm>
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

template <class X>
Array apply(Activation act, const X& x) {
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

template <class X>
Array derivative(Activation act, const X& x) {
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
      return (x > 0.0f).template cast<float>();
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

// F32 tensors (or undefined), contiguous or row-strided views (gated_row_stride checks which).
void check_f32_dense(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) SP_ASSERT(!t->defined() || t->dtype() == DType::F32);
}

// f(i, offset, count) over the n elements of [rows, width] in parallel, a row segment at a time:
// elements [i, i + count) of a dense tensor are those at [offset, offset + count) of a view with
// row stride ld.
template <class F>
void for_each_row_segment(int64_t n, int64_t width, int64_t ld, F&& f) {
  parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi;) {
      const int64_t row = i / width, column = i % width, count = std::min(hi - i, width - column);
      f(i, row * ld + column, count);
      i += count;
    }
  });
}

// f(lo, hi, x) for the elements [lo, hi) of x + bias (bias over the last axis, or none), in row
// segments so that the bias is a contiguous run.
template <class F>
void for_each_biased_segment(const Tensor& x, const Tensor& bias, F&& f) {
  const float* in = x.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  const int64_t width = x.size(-1);
  parallel_for(0, x.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    if (!b) return f(lo, hi, ConstMap(in + lo, hi - lo));
    for (int64_t i = lo; i < hi;) {
      const int64_t column = i % width, count = std::min(hi - i, width - column);
      f(i, i + count, Array(ConstMap(in + i, count) + ConstMap(b + column, count)));
      i += count;
    }
  });
}

}  // namespace

void CpuBackend::activation_forward(Activation act, const Tensor& x, const Tensor& bias,
                                    const Tensor& y) {
  check_f32_contiguous({&x, &bias, &y});
  float* out = y.data<float>();
  for_each_biased_segment(x, bias, [&](int64_t lo, int64_t hi, const auto& v) {
    Map(out + lo, hi - lo) = apply(act, v);
  });
}

void CpuBackend::activation_backward(Activation act, const Tensor& x, const Tensor& bias,
                                     const Tensor& dy, const Tensor& dx) {
  check_f32_contiguous({&x, &bias, &dy, &dx});
  const float* g = dy.data<float>();
  float* out = dx.data<float>();
  for_each_biased_segment(x, bias, [&](int64_t lo, int64_t hi, const auto& v) {
    Map(out + lo, hi - lo) = ConstMap(g + lo, hi - lo) * derivative(act, v);
  });
}

void CpuBackend::gated_forward(Activation act, const Tensor& gate, const Tensor& up,
                               const Tensor& y) {
  const int64_t ld = gated_row_stride("gated_forward", gate, up);
  check_f32_dense({&gate, &up});
  check_f32_contiguous({&y});
  const float* pg = gate.data<float>();
  const float* pu = up.data<float>();
  float* out = y.data<float>();
  for_each_row_segment(y.numel(), y.size(-1), ld, [&](int64_t i, int64_t in, int64_t count) {
    Map(out + i, count) = apply(act, ConstMap(pg + in, count)) * ConstMap(pu + in, count);
  });
}

void CpuBackend::gated_backward(Activation act, const Tensor& gate, const Tensor& up,
                                const Tensor& dy, const Tensor& d_gate, const Tensor& d_up) {
  const int64_t ld = gated_row_stride("gated_backward", gate, up, d_gate, d_up);
  check_f32_dense({&gate, &up, &d_gate, &d_up});
  check_f32_contiguous({&dy});
  const float* pg = gate.data<float>();
  const float* pu = up.data<float>();
  const float* g = dy.data<float>();
  for_each_row_segment(dy.numel(), dy.size(-1), ld, [&](int64_t i, int64_t in, int64_t count) {
    ConstMap gate_chunk(pg + in, count), up_chunk(pu + in, count), grad(g + i, count);
    if (d_gate.defined())
      Map(d_gate.data<float>() + in, count) = grad * up_chunk * derivative(act, gate_chunk);
    if (d_up.defined()) Map(d_up.data<float>() + in, count) = grad * apply(act, gate_chunk);
  });
}

}  // namespace sp
