// CPU cross-entropy fused with log-softmax over rows that may be padded, ignore_index rows
// skipped; the backward writes softmax - onehot into d_logits (may alias logits); the mean loss.
#include <Eigen/Core>
#include <cmath>

#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

using ConstRow = Eigen::Map<const Eigen::ArrayXf>;
using Row = Eigen::Map<Eigen::ArrayXf>;

int64_t target_at(const Tensor& targets, int64_t r) {
  return targets.dtype() == DType::I64 ? targets.data<int64_t>()[r] : targets.data<int32_t>()[r];
}

}  // namespace

void CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                       int64_t ignore_index, const Tensor& loss,
                                       const Tensor& lse) {
  const int64_t V = logits.size(-1), ld = logits_row_stride("cross_entropy_forward", logits, {});
  const int64_t rows = logits.numel() / V;
  const float* pl = logits.data<float>();
  float* ploss = loss.data<float>();
  float* plse = lse.data<float>();
  parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t t = target_at(targets, r);
      if (t == ignore_index) {
        ploss[r] = 0.0f;
        plse[r] = 0.0f;
        continue;
      }
      ConstRow row(pl + r * ld, V);
      float max = row.maxCoeff();
      float lse_r = max + std::log((row - max).exp().sum());
      plse[r] = lse_r;
      ploss[r] = lse_r - row[t];
    }
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                        int64_t ignore_index, const Tensor& lse, float grad_scale,
                                        const Tensor& d_logits) {
  const int64_t V = logits.size(-1);
  const int64_t ld = logits_row_stride("cross_entropy_backward", logits, d_logits);
  const int64_t rows = logits.numel() / V;
  const float* pl = logits.data<float>();
  const float* plse = lse.data<float>();
  float* pd = d_logits.data<float>();
  parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t t = target_at(targets, r);
      Row d(pd + r * ld, V);
      if (t == ignore_index) {
        d.setZero();
        continue;
      }
      d = (ConstRow(pl + r * ld, V) - plse[r]).exp() * grad_scale;
      d[t] -= grad_scale;
    }
  });
}

void CpuBackend::cross_entropy_mean(const Tensor& row_loss, int64_t count, const Tensor& mean) {
  // In order, in double, so the mean does not depend on the thread count.
  double total = 0.0;
  const float* p = row_loss.data<float>();
  for (int64_t i = 0; i < row_loss.numel(); ++i) total += double(p[i]);
  mean.data<float>()[0] = count == 0 ? 0.0f : float(total / double(count));
}

}  // namespace sp
