// CPU RMS norm over the last axis (T5LayerNorm): y = w * x / sqrt(mean(x^2) + eps), no mean, no
// bias; forward saves 1/rms per row for backward.
#include <Eigen/Core>
#include <cmath>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/dropout_span.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

using ConstRow = Eigen::Map<const Eigen::ArrayXf>;
using Row = Eigen::Map<Eigen::ArrayXf>;

// One row: y = w * (x * rstd); returns rstd.
float rmsnorm_row(const float* x, int64_t cols, const ConstRow& w, float eps, float* y) {
  ConstRow in(x, cols);
  const float inv = 1.0f / std::sqrt(in.square().sum() / float(cols) + eps);
  Row(y, cols) = w * (in * inv);
  return inv;
}

}  // namespace

void CpuBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                                 const Tensor& rstd) {
  const int64_t cols = x.size(-1);
  const int64_t rows = x.numel() / cols;
  const float* px = x.data<float>();
  float* py = y.data<float>();
  float* pr = rstd.data<float>();
  ConstRow w(weight.data<float>(), cols);
  parallel_for(0, rows, std::max<int64_t>(1, 4096 / cols), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      pr[r] = rmsnorm_row(px + r * cols, cols, w, eps, py + r * cols);
  });
}

void CpuBackend::residual_rmsnorm_forward(const Tensor& residual, const Tensor& x,
                                          const Tensor& bias, float p, uint64_t seed,
                                          uint64_t offset, const Tensor& weight, float eps,
                                          const Tensor& sum, const Tensor& y, const Tensor& rstd) {
  ConstRow w(weight.data<float>(), x.size(-1));
  float* py = y.data<float>();
  float* pr = rstd.data<float>();
  cpu::for_each_residual_row(residual, x, bias, p, seed, offset, sum,
                             [&](int64_t r, const float* row, int64_t n) {
                               pr[r] = rmsnorm_row(row, n, w, eps, py + r * n);
                             });
}

void CpuBackend::rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                  const Tensor& dy, const Tensor& dx, bool add_into_dx,
                                  const Tensor& d_weight) {
  const int64_t cols = x.size(-1);
  const int64_t rows = x.numel() / cols;
  const float* px = x.data<float>();
  const float* pdy = dy.data<float>();
  const float* pr = rstd.data<float>();
  ConstRow w(weight.data<float>(), cols);
  const int64_t grain = std::max<int64_t>(1, 4096 / cols);
  std::vector<Eigen::ArrayXf> dw_parts(d_weight.defined() ? size_t(parallel_chunks(0, rows, grain))
                                                          : 0);
  parallel_for_chunks(0, rows, grain, [&](int64_t chunk, int64_t lo, int64_t hi) {
    Eigen::ArrayXf dw_acc;
    if (d_weight.defined()) dw_acc = Eigen::ArrayXf::Zero(cols);
    for (int64_t r = lo; r < hi; ++r) {
      ConstRow in(px + r * cols, cols), g_out(pdy + r * cols, cols);
      Eigen::ArrayXf xhat = in * pr[r];
      if (dx.defined()) {
        Eigen::ArrayXf g = g_out * w;
        float mean_gx = (g * xhat).sum() / float(cols);
        // Rounded to float before any add, as a separate accumulation would see it.
        Eigen::ArrayXf d = pr[r] * (g - xhat * mean_gx);
        if (add_into_dx)
          Row(dx.data<float>() + r * cols, cols) += d;
        else
          Row(dx.data<float>() + r * cols, cols) = d;
      }
      if (d_weight.defined()) dw_acc += g_out * xhat;
    }
    if (d_weight.defined()) dw_parts[size_t(chunk)] = std::move(dw_acc);
  });
  if (d_weight.defined()) {
    Row out(d_weight.data<float>(), cols);
    for (const auto& p : dw_parts) out += p;
  }
}

}  // namespace sp
