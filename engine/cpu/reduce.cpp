// CPU reductions: over the last axis, over leading rows, to a broadcast shape, sum of squares.
#include <Eigen/Core>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

using ConstVector = Eigen::Map<const Eigen::VectorXf>;

}  // namespace

void CpuBackend::sum_last(const Tensor& x, const Tensor& out) {
  SP_ASSERT(x.is_contiguous() && out.is_contiguous());
  const int64_t rows = out.numel();
  const int64_t cols = rows == 0 ? 0 : x.numel() / rows;
  const float* in = x.data<float>();
  float* o = out.data<float>();
  parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)),
               [&](int64_t lo, int64_t hi) {
                 for (int64_t r = lo; r < hi; ++r) o[r] = ConstVector(in + r * cols, cols).sum();
               });
}

void CpuBackend::sum_rows(const Tensor& x, const Tensor& out) {
  SP_ASSERT(x.is_contiguous() && out.is_contiguous());
  const int64_t cols = out.numel();
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  const float* in = x.data<float>();
  float* o = out.data<float>();
  // Parallel over columns: each output element sums its column in row order (deterministic).
  parallel_for(0, cols, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) o[c] = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = in + r * cols;
      for (int64_t c = lo; c < hi; ++c) o[c] += row[c];
    }
  });
}

void CpuBackend::sum_to(const Tensor& x, const Tensor& out) {
  SP_ASSERT(x.is_contiguous() && out.is_contiguous() && x.dim() == out.dim());
  const Shape& shape = x.shape();
  const size_t ndim = shape.size();
  Shape out_strides = contiguous_strides(out.shape());
  for (size_t axis = 0; axis < ndim; ++axis)
    if (out.shape()[axis] == 1) out_strides[axis] = 0;
  const float* in = x.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < out.numel(); ++i) o[i] = 0.0f;
  std::vector<int64_t> index(ndim, 0);
  for (int64_t e = 0; e < x.numel(); ++e) {
    int64_t target = 0;
    for (size_t axis = 0; axis < ndim; ++axis) target += index[axis] * out_strides[axis];
    o[target] += in[e];
    for (size_t axis = ndim; axis-- > 0;) {
      if (++index[axis] < shape[axis]) break;
      index[axis] = 0;
    }
  }
}

double CpuBackend::sum_squares(const Tensor& x) {
  SP_ASSERT(x.is_contiguous() && x.dtype() == DType::F32);
  const float* in = x.data<float>();
  const int64_t grain = 1 << 16;
  std::vector<double> partial(size_t(parallel_chunks(0, x.numel(), grain)), 0.0);
  parallel_for_chunks(0, x.numel(), grain, [&](int64_t chunk, int64_t lo, int64_t hi) {
    double sum = 0.0;
    for (int64_t i = lo; i < hi; ++i) sum += double(in[i]) * double(in[i]);
    partial[size_t(chunk)] = sum;
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace sp
