// CPU LayerNorm over the last axis (GPT-2): forward (alone, or after the residual add before it)
// saves mean and 1/std per row for backward.
#include <Eigen/Core>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/dropout_span.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

using ConstRow = Eigen::Map<const Eigen::ArrayXf>;
using Row = Eigen::Map<Eigen::ArrayXf>;

// Per-chunk partial sums of weight/bias gradients, added in chunk order: deterministic.
void reduce_partials(const std::vector<Eigen::ArrayXf>& partials, const Tensor& target) {
  if (!target.defined()) return;
  Row out(target.data<float>(), target.numel());
  for (const auto& p : partials) out += p;
}

// One row: y = (x - mean) * rstd * w + b; returns {mean, rstd}.
std::pair<float, float> layernorm_row(const float* x, int64_t cols, const ConstRow& w,
                                      const ConstRow& b, float eps, float* y) {
  ConstRow in(x, cols);
  const float mu = in.sum() / float(cols);
  const float var = (in - mu).square().sum() / float(cols);
  const float inv = 1.0f / std::sqrt(var + eps);
  Row(y, cols) = (in - mu) * inv * w + b;
  return {mu, inv};
}

}  // namespace

void CpuBackend::layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                   float eps, const Tensor& y, const Tensor& mean,
                                   const Tensor& rstd) {
  const int64_t cols = x.size(-1);
  const int64_t rows = x.numel() / cols;
  const float* px = x.data<float>();
  float* py = y.data<float>();
  ConstRow w(weight.data<float>(), cols), b(bias.data<float>(), cols);
  float* pm = mean.data<float>();
  float* pr = rstd.data<float>();
  parallel_for(0, rows, std::max<int64_t>(1, 4096 / cols), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      std::tie(pm[r], pr[r]) = layernorm_row(px + r * cols, cols, w, b, eps, py + r * cols);
  });
}

void CpuBackend::residual_layernorm_forward(const Tensor& residual, const Tensor& x,
                                            const Tensor& bias, float p, uint64_t seed,
                                            uint64_t offset, const Tensor& weight,
                                            const Tensor& norm_bias, float eps, const Tensor& sum,
                                            const Tensor& y, const Tensor& mean,
                                            const Tensor& rstd) {
  const int64_t cols = x.size(-1);
  ConstRow w(weight.data<float>(), cols), b(norm_bias.data<float>(), cols);
  float* py = y.data<float>();
  float* pm = mean.data<float>();
  float* pr = rstd.data<float>();
  cpu::for_each_residual_row(
      residual, x, bias, p, seed, offset, sum, [&](int64_t r, const float* row, int64_t n) {
        std::tie(pm[r], pr[r]) = layernorm_row(row, n, w, b, eps, py + r * n);
      });
}

void CpuBackend::layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                                    const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                                    bool add_into_dx, const Tensor& d_weight,
                                    const Tensor& d_bias) {
  const int64_t cols = x.size(-1);
  const int64_t rows = x.numel() / cols;
  const float* px = x.data<float>();
  const float* pdy = dy.data<float>();
  const float* pm = mean.data<float>();
  const float* pr = rstd.data<float>();
  ConstRow w(weight.data<float>(), cols);
  const int64_t grain = std::max<int64_t>(1, 4096 / cols);
  const int64_t chunks = parallel_chunks(0, rows, grain);
  std::vector<Eigen::ArrayXf> dw_parts(d_weight.defined() ? size_t(chunks) : 0);
  std::vector<Eigen::ArrayXf> db_parts(d_bias.defined() ? size_t(chunks) : 0);
  parallel_for_chunks(0, rows, grain, [&](int64_t chunk, int64_t lo, int64_t hi) {
    Eigen::ArrayXf dw_acc, db_acc;
    if (d_weight.defined()) dw_acc = Eigen::ArrayXf::Zero(cols);
    if (d_bias.defined()) db_acc = Eigen::ArrayXf::Zero(cols);
    for (int64_t r = lo; r < hi; ++r) {
      ConstRow in(px + r * cols, cols), g_out(pdy + r * cols, cols);
      Eigen::ArrayXf xhat = (in - pm[r]) * pr[r];
      if (dx.defined()) {
        Eigen::ArrayXf g = g_out * w;
        float mean_g = g.sum() / float(cols);
        float mean_gx = (g * xhat).sum() / float(cols);
        // Rounded to float before any add, as a separate accumulation would see it.
        Eigen::ArrayXf d = pr[r] * (g - mean_g - xhat * mean_gx);
        if (add_into_dx)
          Row(dx.data<float>() + r * cols, cols) += d;
        else
          Row(dx.data<float>() + r * cols, cols) = d;
      }
      if (d_weight.defined()) dw_acc += g_out * xhat;
      if (d_bias.defined()) db_acc += g_out;
    }
    if (d_weight.defined()) dw_parts[size_t(chunk)] = std::move(dw_acc);
    if (d_bias.defined()) db_parts[size_t(chunk)] = std::move(db_acc);
  });
  reduce_partials(dw_parts, d_weight);
  reduce_partials(db_parts, d_bias);
}

}  // namespace sp
