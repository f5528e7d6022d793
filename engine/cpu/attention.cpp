// CPU attention: per (batch, head) GEMMs through Eigen on strided views of q/k/v (grouped-query:
// a query head reads its group's key/value head), the masked softmax of attention_mask.h, and a
// backward that recomputes the probabilities from the saved log-sum-exp instead of storing them.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/cpu/attention_mask.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/dropout_span.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMap = Eigen::Map<Matrix, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;

// The [T, D] matrix of head h in batch b of a [B, T, H, D] tensor with unit stride on D.
ConstStridedMap head_view(const Tensor& t, int64_t b, int64_t h) {
  const float* base = t.data<float>() + b * t.stride(0) + h * t.stride(2);
  return ConstStridedMap(base, t.size(1), t.size(3), Eigen::OuterStride<>(t.stride(1)));
}

StridedMap head_view_mut(const Tensor& t, int64_t b, int64_t h) {
  float* base = t.data<float>() + b * t.stride(0) + h * t.stride(2);
  return StridedMap(base, t.size(1), t.size(3), Eigen::OuterStride<>(t.stride(1)));
}

// Scores -> probabilities in place for one (b, h); returns each row's log-sum-exp.
void softmax_rows(Matrix& s, int64_t b, int64_t h, int64_t H, const AttentionMask& mask,
                  float* lse) {
  const int64_t tq = s.rows(), tk = s.cols();
  for (int64_t i = 0; i < tq; ++i) {
    float* row = s.data() + i * tk;
    cpu::mask_scores_row(row, b, h, i, H, tq, tk, mask);
    Eigen::Map<Eigen::ArrayXf> r(row, tk);
    float max = r.maxCoeff();
    if (max == -std::numeric_limits<float>::infinity()) {  // no visible key: an all-zero row
      r.setZero();
      lse[i] = -std::numeric_limits<float>::infinity();
      continue;
    }
    // Eigen's vectorised exp returns ~3e-39 for -inf; masked keys must get exactly 0.
    r = (r == -std::numeric_limits<float>::infinity()).select(0.0f, (r - max).exp());
    float sum = r.sum();
    r /= sum;
    lse[i] = max + std::log(sum);
  }
}

// Applies attention dropout in place to the [Tq, Tk] rows of (b, h): the stream element of
// (b, h, i, j) is ((b H + h) Tq + i) Tk + j, as for the dropout op on materialised probabilities.
void drop_rows(Matrix& m, int64_t b, int64_t h, int64_t H, const AttentionDropout& dropout) {
  const int64_t tq = m.rows(), tk = m.cols();
  const uint64_t first = dropout.offset + uint64_t((b * H + h) * tq * tk);
  cpu::dropout_span(m.data(), m.data(), tq * tk, dropout.p, dropout.seed, first);
}

// Query heads per key/value head.
int64_t check_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  SP_ASSERT(q.dim() == 4 && k.dim() == 4 && v.dim() == 4);
  SP_ASSERT(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1);
  SP_ASSERT(k.size(2) > 0 && q.size(2) % k.size(2) == 0 && v.size(2) == k.size(2));
  return q.size(2) / k.size(2);
}

// Head h of batch b of x [B, T, H, D] plus the head's slice of `bias` ([H * D], or undefined for
// none), as the per-head GEMMs read it: a view of x when there is no bias, else the sum in
// `scratch`. One head's [T, D] block is still in cache for the GEMM that follows, where adding
// the bias to the whole tensor first wrote and re-read all of it, in the forward and again in the
// backward (the CUDA kernels add it as they load tiles).
ConstStridedMap head_rows(const Tensor& x, const Tensor& bias, int64_t b, int64_t h,
                          Matrix& scratch) {
  if (!bias.defined()) return head_view(x, b, h);
  const int64_t T = x.size(1), D = x.size(3);
  SP_ASSERT(bias.numel() == x.size(2) * D && bias.is_contiguous());
  scratch.resize(T, D);
  scratch.noalias() = head_view(x, b, h).rowwise() +
                      Eigen::Map<const Eigen::RowVectorXf>(bias.data<float>() + h * D, D);
  return ConstStridedMap(scratch.data(), T, D, Eigen::OuterStride<>(D));
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const AttentionInputBias& bias, const AttentionMask& mask,
                                   const AttentionDropout& dropout, const Tensor& out,
                                   const Tensor& lse) {
  const int64_t group = check_qkv(q, k, v);
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2);
  const int64_t Tk = k.size(1);
  float* plse = lse.data<float>();
  parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
    Matrix s, q_rows, k_rows, v_rows;
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      auto Q = head_rows(q, bias.q, b, h, q_rows);
      auto K = head_rows(k, bias.k, b, h / group, k_rows);
      auto V = head_rows(v, bias.v, b, h / group, v_rows);
      s.resize(Tq, Tk);
      s.noalias() = Q * K.transpose();
      softmax_rows(s, b, h, H, mask, plse + (b * H + h) * Tq);
      if (dropout.p > 0.0f) drop_rows(s, b, h, H, dropout);
      head_view_mut(out, b, h).noalias() = s * V;
    }
  });
}

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionInputBias& bias, const AttentionMask& mask,
                                    const AttentionDropout& dropout, const Tensor& out,
                                    const Tensor& lse, const Tensor& d_out, const Tensor& dq,
                                    const Tensor& dk, const Tensor& dv) {
  const int64_t group = check_qkv(q, k, v);
  for (const Tensor* grad : {&dq, &dk, &dv}) SP_ASSERT(!grad->defined() || grad->stride(3) == 1);
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), Hkv = k.size(2);
  const int64_t Tk = k.size(1);
  const float* plse = lse.data<float>();
  // A task per (batch, key/value head): the query heads of its group add into the same dK/dV
  // rows, one after another, so no two threads write them.
  parallel_for(0, B * Hkv, 1, [&](int64_t lo, int64_t hi) {
    Matrix p, dp, dropped_p, q_rows, k_rows, v_rows;
    for (int64_t bg = lo; bg < hi; ++bg) {
      const int64_t b = bg / Hkv, hk = bg % Hkv;
      auto K = head_rows(k, bias.k, b, hk, k_rows);
      auto V = head_rows(v, bias.v, b, hk, v_rows);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const bool first_in_group = h == hk * group;
        auto Q = head_rows(q, bias.q, b, h, q_rows);
        auto dO = head_view(d_out, b, h);
        // Recompute P = exp(masked scores - lse) exactly as the forward produced it.
        p.resize(Tq, Tk);
        p.noalias() = Q * K.transpose();
        const float* row_lse = plse + (b * H + h) * Tq;
        for (int64_t i = 0; i < Tq; ++i) {
          float* row = p.data() + i * Tk;
          cpu::mask_scores_row(row, b, h, i, H, Tq, Tk, mask);
          Eigen::Map<Eigen::ArrayXf> r(row, Tk);
          if (row_lse[i] != -std::numeric_limits<float>::infinity())
            r = (r == -std::numeric_limits<float>::infinity()).select(0.0f, (r - row_lse[i]).exp());
          else
            r.setZero();
        }
        if (dv.defined()) {
          // out = dropout(P) V, so dV = dropout(P)^T dO.
          const Matrix* kept_p = &p;
          if (dropout.p > 0.0f) {
            dropped_p = p;
            drop_rows(dropped_p, b, h, H, dropout);
            kept_p = &dropped_p;
          }
          if (first_in_group)
            head_view_mut(dv, b, hk).noalias() = kept_p->transpose() * dO;
          else
            head_view_mut(dv, b, hk).noalias() += kept_p->transpose() * dO;
        }
        if (!dq.defined() && !dk.defined()) continue;
        dp.resize(Tq, Tk);
        dp.noalias() = dO * V.transpose();
        // The gradient reaching P passes back through the same dropout.
        if (dropout.p > 0.0f) drop_rows(dp, b, h, H, dropout);
        // dS = P * (dP - rowsum(P * dP)), then the scale of the forward's q.k.
        for (int64_t i = 0; i < Tq; ++i) {
          Eigen::Map<Eigen::ArrayXf> pr(p.data() + i * Tk, Tk), dpr(dp.data() + i * Tk, Tk);
          float dot = (pr * dpr).sum();
          dpr = mask.scale * pr * (dpr - dot);
        }
        if (dq.defined()) head_view_mut(dq, b, h).noalias() = dp * K;
        if (dk.defined()) {
          if (first_in_group)
            head_view_mut(dk, b, hk).noalias() = dp.transpose() * Q;
          else
            head_view_mut(dk, b, hk).noalias() += dp.transpose() * Q;
        }
      }
    }
  });
}

}  // namespace sp
