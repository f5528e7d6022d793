// kernels/activation.cuh: elementwise activations (gelu_new, exact GELU, ReLU, SiLU) of x + bias
// and the gated form act(gate) * up, forward and backward; the formulas are activation_math.h's.
#pragma once

#include "kernels/activation_math.h"
#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

enum class ActivationKind : int { kGeluTanh = 0, kGeluErf = 1, kRelu = 2, kSilu = 3 };

__device__ __forceinline__ float activation_value(ActivationKind kind, float x) {
  switch (kind) {
    case ActivationKind::kGeluTanh:
      return act::gelu_tanh(x);
    case ActivationKind::kGeluErf:
      return act::gelu_erf(x);
    case ActivationKind::kRelu:
      return act::relu(x);
    case ActivationKind::kSilu:
      return act::silu(x);
  }
  return 0.0f;
}

__device__ __forceinline__ float activation_derivative(ActivationKind kind, float x) {
  switch (kind) {
    case ActivationKind::kGeluTanh:
      return act::gelu_tanh_grad(x);
    case ActivationKind::kGeluErf:
      return act::gelu_erf_grad(x);
    case ActivationKind::kRelu:
      return act::relu_grad(x);
    case ActivationKind::kSilu:
      return act::silu_grad(x);
  }
  return 0.0f;
}

// x[i] + bias[i % width] in fp32 (no bias: null).
template <class T>
__device__ __forceinline__ float plus_bias(float x, const T* bias, int64_t width, int64_t i) {
  return bias ? x + to_float(bias[i % width]) : x;
}

// y = act(x + bias)
template <class T>
__global__ void activation_forward_kernel(ActivationKind kind, const T* x, const T* bias,
                                          int64_t width, T* y, int64_t n, bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        Pack<T> px, py;
        load_pack(px, x + i);
        for (int e = 0; e < kPack; ++e)
          py.v[e] = from_float<T>(
              activation_value(kind, plus_bias(to_float(px.v[e]), bias, width, i + e)));
        store_pack(y + i, py);
      },
      [&](int64_t i) {
        y[i] = from_float<T>(activation_value(kind, plus_bias(to_float(x[i]), bias, width, i)));
      });
}

// dx = dy * act'(x + bias)
template <class T>
__global__ void activation_backward_kernel(ActivationKind kind, const T* x, const T* bias,
                                           int64_t width, const T* dy, T* dx, int64_t n,
                                           bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        Pack<T> px, pg, pd;
        load_pack(px, x + i);
        load_pack(pg, dy + i);
        for (int e = 0; e < kPack; ++e)
          pd.v[e] = from_float<T>(
              to_float(pg.v[e]) *
              activation_derivative(kind, plus_bias(to_float(px.v[e]), bias, width, i + e)));
        store_pack(dx + i, pd);
      },
      [&](int64_t i) {
        dx[i] =
            from_float<T>(to_float(dy[i]) *
                          activation_derivative(kind, plus_bias(to_float(x[i]), bias, width, i)));
      });
}

// Element i of a dense [rows, width] tensor sits at gated_offset(i) of a view with row stride ld
// (the gate or up half of a packed projection); a pack never crosses a row (the host vectorises
// a strided view only when width and ld are whole packs).
__device__ __forceinline__ int64_t gated_offset(int64_t i, int64_t width, int64_t ld) {
  return ld == width ? i : i + (i / width) * (ld - width);
}

// y = act(gate) * up; gate and up have row stride ld, y is dense.
template <class T>
__global__ void gated_forward_kernel(ActivationKind kind, const T* gate, const T* up, int64_t width,
                                     int64_t ld, T* y, int64_t n, bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        const int64_t at = gated_offset(i, width, ld);
        Pack<T> pg, pu, py;
        load_pack(pg, gate + at);
        load_pack(pu, up + at);
        for (int e = 0; e < kPack; ++e)
          py.v[e] = from_float<T>(activation_value(kind, to_float(pg.v[e])) * to_float(pu.v[e]));
        store_pack(y + i, py);
      },
      [&](int64_t i) {
        const int64_t at = gated_offset(i, width, ld);
        y[i] = from_float<T>(activation_value(kind, to_float(gate[at])) * to_float(up[at]));
      });
}

// d_gate = dy * up * act'(gate), d_up = dy * act(gate); either output may be null. gate, up,
// d_gate and d_up have row stride ld, dy is dense.
template <class T>
__global__ void gated_backward_kernel(ActivationKind kind, const T* gate, const T* up, const T* dy,
                                      int64_t width, int64_t ld, T* d_gate, T* d_up, int64_t n,
                                      bool vectorized) {
  constexpr int kPack = Pack<T>::kSize;
  auto compute = [&](float g, float u, float grad, float& dg, float& du) {
    dg = grad * u * activation_derivative(kind, g);
    du = grad * activation_value(kind, g);
  };
  grid_stride_elements<kPack>(
      n, vectorized,
      [&](int64_t i) {
        const int64_t at = gated_offset(i, width, ld);
        Pack<T> pg, pu, pd, out_gate, out_up;
        load_pack(pg, gate + at);
        load_pack(pu, up + at);
        load_pack(pd, dy + i);
        for (int e = 0; e < kPack; ++e) {
          float dg, du;
          compute(to_float(pg.v[e]), to_float(pu.v[e]), to_float(pd.v[e]), dg, du);
          out_gate.v[e] = from_float<T>(dg);
          out_up.v[e] = from_float<T>(du);
        }
        if (d_gate) store_pack(d_gate + at, out_gate);
        if (d_up) store_pack(d_up + at, out_up);
      },
      [&](int64_t i) {
        const int64_t at = gated_offset(i, width, ld);
        float dg, du;
        compute(to_float(gate[at]), to_float(up[at]), to_float(dy[i]), dg, du);
        if (d_gate) d_gate[at] = from_float<T>(dg);
        if (d_up) d_up[at] = from_float<T>(du);
      });
}

}  // namespace sp::SP_CUDA_NS
