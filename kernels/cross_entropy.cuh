// kernels/cross_entropy.cuh: cross-entropy fused with log-softmax, a block per row (rows `ld`
// elements apart: the LM head pads them so that every row starts 16-byte aligned). The forward
// keeps an online (max, sum of exp) per thread so logits are read once; the backward writes
// grad_scale * (softmax - onehot) in place (d_logits may alias logits) from the saved
// log-sum-exp, never materialising probabilities. Rows whose target is ignore_index give zeros.
// The mean loss is reduced on the device too, so reading it is the caller's choice, not a sync.
#pragma once

#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

// A running softmax normaliser: sum = sum of exp(x - max) over the values seen.
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float max = fmaxf(a.max, b.max);
  if (max == -INFINITY) return {max, 0.0f};
  return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
}

__device__ __forceinline__ MaxSum warp_combine(MaxSum v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    MaxSum other{__shfl_xor_sync(kFullWarp, v.max, offset),
                 __shfl_xor_sync(kFullWarp, v.sum, offset)};
    v = combine(v, other);
  }
  return v;
}

// This thread's share of a row's (max, sum of exp), accumulated online in one read.
template <class T>
__device__ __forceinline__ MaxSum thread_row_max_sum(bool vectorized, int64_t vocab, const T* row) {
  const T* in[1] = {row};
  MaxSum acc{-INFINITY, 0.0f};
  for_each_column(vectorized, vocab, in, [&](int64_t, const float(&v)[1]) {
    if (v[0] > acc.max) {
      acc.sum = acc.sum * expf(acc.max - v[0]) + 1.0f;
      acc.max = v[0];
    } else if (v[0] != -INFINITY) {  // a -inf logit adds nothing (and -inf - -inf is NaN)
      acc.sum += expf(v[0] - acc.max);
    }
  });
  return acc;
}

// The row's log-sum-exp from every thread's share, through 32-entry shared scratch; every thread
// gets it. Starts with a barrier, so the scratch may be reused row after row.
__device__ __forceinline__ float block_row_lse(MaxSum acc, float* scratch_max, float* scratch_sum) {
  const int lane = thread_index() % 32, warp = thread_index() / 32;
  acc = warp_combine(acc);
  __syncthreads();  // the previous row's readers of the scratch are done
  if (lane == 0) {
    scratch_max[warp] = acc.max;
    scratch_sum[warp] = acc.sum;
  }
  __syncthreads();
  MaxSum total{-INFINITY, 0.0f};
  if (lane < block_threads() / 32) total = MaxSum{scratch_max[lane], scratch_sum[lane]};
  total = warp_combine(total);
  return total.max + logf(total.sum);
}

// out[j] = grad_scale * (exp(row[j] - lse) - [j == target]); each element is read and then
// written by the same thread, so out may be row.
template <class T>
__device__ __forceinline__ void write_row_gradient(bool vectorized, int64_t vocab, const T* row,
                                                   int64_t target, float row_lse, float grad_scale,
                                                   T* out) {
  const T* in[1] = {row};
  for_each_column(vectorized, vocab, in, [&](int64_t j, const float(&v)[1]) {
    float d = expf(v[0] - row_lse) * grad_scale;
    if (j == target) d -= grad_scale;
    out[j] = from_float<T>(d);
  });
}

// loss[r] = lse - logits[r, t] and lse[r] (both 0 for ignored rows).
template <class T>
__global__ void cross_entropy_forward_kernel(const T* logits, const void* targets,
                                             bool targets_are_64bit, int64_t ignore_index,
                                             int64_t rows, int64_t vocab, int64_t ld, float* loss,
                                             float* lse, bool vectorized) {
  __shared__ float scratch_max[32];
  __shared__ float scratch_sum[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t target = load_index(targets, targets_are_64bit, row);
    if (target == ignore_index) {  // uniform across the block
      if (thread_index() == 0) loss[row] = lse[row] = 0.0f;
      continue;
    }
    const T* in = logits + row * ld;
    const float row_lse =
        block_row_lse(thread_row_max_sum(vectorized, vocab, in), scratch_max, scratch_sum);
    if (thread_index() == 0) {
      lse[row] = row_lse;
      loss[row] = row_lse - to_float(in[target]);
    }
  }
}

// d_logits[r] = grad_scale * (exp(logits[r] - lse[r]) - onehot(target)), zeros for ignored
// rows. Each element is read and then written by the same thread, so d_logits may alias logits.
template <class T>
__global__ void cross_entropy_backward_kernel(const T* logits, const void* targets,
                                              bool targets_are_64bit, int64_t ignore_index,
                                              const float* lse, float grad_scale, int64_t rows,
                                              int64_t vocab, int64_t ld, T* d_logits,
                                              bool vectorized) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t target = load_index(targets, targets_are_64bit, row);
    T* out = d_logits + row * ld;
    if (target == ignore_index) {
      for (int64_t j = thread_index(); j < vocab; j += block_threads())
        out[j] = from_float<T>(0.0f);
      continue;
    }
    write_row_gradient(vectorized, vocab, logits + row * ld, target, lse[row], grad_scale, out);
  }
}

// The forward and the backward above in one kernel: a block reads its row for the (max, sum of
// exp), then again, while it is still in cache, to write the gradient (in place when d_logits
// aliases logits: the target's logit is read before any thread writes).
template <class T>
__global__ void cross_entropy_forward_backward_kernel(const T* logits, const void* targets,
                                                      bool targets_are_64bit, int64_t ignore_index,
                                                      float grad_scale, int64_t rows, int64_t vocab,
                                                      int64_t ld, float* loss, float* lse,
                                                      T* d_logits, bool vectorized) {
  __shared__ float scratch_max[32];
  __shared__ float scratch_sum[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t target = load_index(targets, targets_are_64bit, row);
    T* out = d_logits + row * ld;
    if (target == ignore_index) {  // uniform across the block
      if (thread_index() == 0) loss[row] = lse[row] = 0.0f;
      for (int64_t j = thread_index(); j < vocab; j += block_threads())
        out[j] = from_float<T>(0.0f);
      continue;
    }
    const T* in = logits + row * ld;
    const MaxSum share = thread_row_max_sum(vectorized, vocab, in);
    // Read before block_row_lse's barriers, after which threads overwrite the row.
    const float target_logit = thread_index() == 0 ? to_float(in[target]) : 0.0f;
    const float row_lse = block_row_lse(share, scratch_max, scratch_sum);
    if (thread_index() == 0) {
      lse[row] = row_lse;
      loss[row] = row_lse - target_logit;
    }
    write_row_gradient(vectorized, vocab, in, target, row_lse, grad_scale, out);
  }
}

// *mean = float(sum of row_loss[0..n) in double / count), 0 when count is 0: the host's formula
// (engine/cpu/cross_entropy.cpp) in one block, in a fixed order, so the value is deterministic.
template <class Unused = void>
__global__ void cross_entropy_mean_kernel(const float* row_loss, int64_t n, int64_t count,
                                          float* mean) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (int64_t i = thread_index(); i < n; i += block_threads()) sum += double(row_loss[i]);
  sum = block_sum(sum, scratch);
  if (thread_index() == 0) *mean = count == 0 ? 0.0f : float(sum / double(count));
}

}  // namespace sp::SP_CUDA_NS
