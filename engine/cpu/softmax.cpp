// CPU masked softmax over the last axis of attention scores [B, H, Tq, Tk] (the materialised
// reference that the fused attention is checked against).
#include <Eigen/Core>
#include <cmath>
#include <limits>

#include "engine/cpu/attention_mask.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

using Row = Eigen::Map<Eigen::ArrayXf>;
using ConstRow = Eigen::Map<const Eigen::ArrayXf>;

}  // namespace

void CpuBackend::masked_softmax_forward(const Tensor& scores, const AttentionMask& mask,
                                        const Tensor& probs) {
  SP_ASSERT(scores.dim() == 4 && scores.is_contiguous() && probs.is_contiguous());
  const int64_t B = scores.size(0), H = scores.size(1), Tq = scores.size(2), Tk = scores.size(3);
  const float* in = scores.data<float>();
  float* out = probs.data<float>();
  parallel_for(0, B * H * Tq, std::max<int64_t>(1, 4096 / std::max<int64_t>(Tk, 1)),
               [&](int64_t lo, int64_t hi) {
                 for (int64_t row = lo; row < hi; ++row) {
                   const int64_t i = row % Tq, h = (row / Tq) % H, b = row / (Tq * H);
                   float* p = out + row * Tk;
                   std::copy(in + row * Tk, in + (row + 1) * Tk, p);
                   cpu::mask_scores_row(p, b, h, i, H, Tq, Tk, mask);
                   Row r(p, Tk);
                   float max = r.maxCoeff();
                   if (max == -std::numeric_limits<float>::infinity()) {  // no visible key
                     r.setZero();
                     continue;
                   }
                   // Eigen's vectorised exp returns ~3e-39 for -inf; masked keys must be 0.
                   r = (r == -std::numeric_limits<float>::infinity()).select(0.0f, (r - max).exp());
                   r /= r.sum();
                 }
               });
}

void CpuBackend::masked_softmax_backward(const Tensor& probs, const Tensor& d_probs, float scale,
                                         const Tensor& d_scores) {
  const int64_t Tk = probs.size(-1);
  const int64_t rows = probs.numel() / std::max<int64_t>(Tk, 1);
  const float* p = probs.data<float>();
  const float* dp = d_probs.data<float>();
  float* ds = d_scores.data<float>();
  parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(Tk, 1)),
               [&](int64_t lo, int64_t hi) {
                 for (int64_t row = lo; row < hi; ++row) {
                   ConstRow pr(p + row * Tk, Tk), dpr(dp + row * Tk, Tk);
                   float dot = (pr * dpr).sum();
                   Row(ds + row * Tk, Tk) = scale * pr * (dpr - dot);
                 }
               });
}

}  // namespace sp
