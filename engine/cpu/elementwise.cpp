// CPU binary elementwise ops with broadcasting, and the affine map x * scale + shift.
#include <Eigen/Core>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/strided_loop.h"
#include "engine/error.h"

namespace sp {

namespace {

template <class Op>
void binary_rows(const Tensor& a, const Tensor& b, const Tensor& out, Op op) {
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  cpu::for_each_row<3>(
      out.shape(), {out.strides(), a.strides(), b.strides()},
      [&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& st) {
        float* o = po + off[0];
        const float* x = pa + off[1];
        const float* y = pb + off[2];
        if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
          for (int64_t i = 0; i < n; ++i) o[i] = op(x[i], y[i]);
        } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
          const float scalar = *y;
          for (int64_t i = 0; i < n; ++i) o[i] = op(x[i], scalar);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * st[0]] = op(x[i * st[1]], y[i * st[2]]);
        }
      });
}

}  // namespace

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  SP_ASSERT(a.dtype() == DType::F32 && b.dtype() == DType::F32 && out.dtype() == DType::F32);
  SP_ASSERT(a.shape() == out.shape() && b.shape() == out.shape());
  if (out.numel() == 0) return;
  switch (op) {
    case BinaryOp::kAdd:
      binary_rows(a, b, out, [](float x, float y) { return x + y; });
      break;
    case BinaryOp::kSub:
      binary_rows(a, b, out, [](float x, float y) { return x - y; });
      break;
    case BinaryOp::kMul:
      binary_rows(a, b, out, [](float x, float y) { return x * y; });
      break;
  }
}

void CpuBackend::affine(const Tensor& x, float scale, float shift, const Tensor& out) {
  SP_ASSERT(x.is_contiguous() && out.is_contiguous() && x.numel() == out.numel());
  const float* in = x.data<float>();
  float* o = out.data<float>();
  parallel_for(0, x.numel(), 1 << 15, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) o[i] = in[i] * scale + shift;
  });
}

}  // namespace sp
