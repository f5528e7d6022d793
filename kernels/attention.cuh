// kernels/attention.cuh: fused scaled-dot-product attention that never materialises the Tq x Tk
// score matrix. The forward streams key tiles through shared memory with an online softmax and
// saves each row's log-sum-exp; the backward recomputes probabilities from it (FlashAttention-2
// style) in two deterministic kernels, one per query tile (dQ) and one per key tile (dK, dV).
// q is a strided [B, Tq, H, D] view and k/v [B, Tk, Hkv, D] views (grouped-query attention when
// Hkv < H: query head h reads key/value head h / (H / Hkv)), unit stride on D; out/dq/dk/dv are
// contiguous, dq/dk/dv strided like q/k/v. Attention dropout is drawn in the kernels from the
// Philox stream, element ((b H + h) Tq + i) Tk + j of the probabilities: the dropout op's mask on
// the materialised path.
#pragma once

#include "kernels/attention_mask.cuh"
#include "kernels/kernel_common.cuh"
#include "kernels/philox.h"

namespace sp::SP_CUDA_NS {

struct AttentionShape {
  int64_t batch = 0, heads = 0, q_len = 0, k_len = 0, head_dim = 0;
  int64_t kv_heads = 0;  // divides heads
  // Element strides of the batch, time and head axes of q, k and v, and (backward) of their
  // gradients, which may be views of one packed buffer.
  int64_t q_stride[3] = {}, k_stride[3] = {}, v_stride[3] = {};
  int64_t dq_stride[3] = {}, dk_stride[3] = {}, dv_stride[3] = {};
};

// Rows per query tile and keys per key tile; block_k <= 32 (a key per lane in the softmax step).
struct AttentionTiles {
  int block_q = 16;
  int block_k = 32;
};

constexpr int kAttentionThreads = 128;

// Dropout on the probabilities: kept ones are scaled by keep_scale = 1 / (1 - p); p = 0 is off.
// seed_shift: see replay_seed; each kernel resolves it once, at its start (resolve_seed).
struct AttentionDropoutArgs {
  float p = 0.0f, keep_scale = 1.0f;
  uint64_t seed = 0, offset = 0;
  const uint64_t* seed_shift = nullptr;
};

__device__ __forceinline__ void resolve_seed(AttentionDropoutArgs& dropout) {
  dropout.seed = replay_seed(dropout.seed, dropout.seed_shift);
  dropout.seed_shift = nullptr;
}

// Max and sum over aligned groups of `width` lanes (a power of two <= 32) of a whole warp.
__device__ __forceinline__ float lane_group_max(float v, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}
__device__ __forceinline__ float lane_group_sum(float v, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// The factors of probabilities (b, h, i, j0 .. j0 + 3), four consecutive elements of the stream:
// one or two Philox blocks instead of four (keys past k_len get factors too; callers ignore them).
__device__ __forceinline__ void attention_keep_factors4(const AttentionDropoutArgs& dropout,
                                                        const AttentionShape& shape, int64_t b,
                                                        int64_t h, int64_t i, int64_t j0,
                                                        float (&keep)[4]) {
  if (dropout.p <= 0.0f) {
    for (float& k : keep) k = 1.0f;
    return;
  }
  const uint64_t element = uint64_t(((b * shape.heads + h) * shape.q_len + i) * shape.k_len + j0);
  float uniform[4];
  philox::uniforms(dropout.seed, dropout.offset + element, uniform);
  for (int t = 0; t < 4; ++t) keep[t] = uniform[t] < dropout.p ? 0.0f : dropout.keep_scale;
}

// K and V tiles are stored with rows of d + 1 floats: the score loops read one key row per lane,
// and an odd row length puts those reads in different shared-memory banks.
__host__ __device__ inline int64_t attention_kv_ld(int64_t d) {
  return d + 1;
}

// Shared-memory floats each kernel needs for a tiling (the host sizes its launches with these).
__host__ __device__ inline int64_t attention_forward_smem_floats(AttentionTiles t, int64_t d) {
  return 2 * t.block_q * d + 2 * t.block_k * attention_kv_ld(d) + int64_t(t.block_q) * t.block_k +
         3 * t.block_q;
}
__host__ __device__ inline int64_t attention_backward_dq_smem_floats(AttentionTiles t, int64_t d) {
  return 3 * t.block_q * d + 2 * t.block_k * attention_kv_ld(d) + int64_t(t.block_q) * t.block_k +
         2 * t.block_q;
}
__host__ __device__ inline int64_t attention_backward_dkv_smem_floats(AttentionTiles t, int64_t d) {
  return 2 * t.block_q * d + 2 * t.block_k * d + 2 * t.block_k * attention_kv_ld(d) +
         2 * int64_t(t.block_q) * t.block_k + 2 * t.block_q;
}

// The biases added to q, k and v as tiles load them (Backend's AttentionInputBias): each
// [heads * D], head h's at h * D, or null.
template <class T>
struct QkvBias {
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
};

// value + bias[index] rounded to T, as the add op rounds it; value itself without a bias.
template <class T>
__device__ __forceinline__ T add_input_bias(T value, const T* bias, int64_t index) {
  return bias ? from_float<T>(to_float(value) + to_float(bias[index])) : value;
}

// Loads rows [first, first + count) of one head of a [B, T, H, D] view, plus the head's row of
// `bias` ([H * D] or null), into tile[rows][ld] as fp32; rows past `count` (up to tile_rows)
// become zeros.
template <class T>
__device__ __forceinline__ void load_head_tile(const T* base, const int64_t (&stride)[3], int64_t b,
                                               int64_t h, int64_t first, int count, int tile_rows,
                                               int64_t d, int64_t ld, float* tile,
                                               const T* bias = nullptr) {
  const T* head = base + b * stride[0] + h * stride[2];
  for (int64_t e = thread_index(); e < tile_rows * d; e += block_threads()) {
    const int64_t r = e / d, c = e % d;
    tile[r * ld + c] =
        r < count ? to_float(add_input_bias(head[(first + r) * stride[1] + c], bias, h * d + c))
                  : 0.0f;
  }
}

// Stores tile[count][d] (fp32) as rows [first, first + count) of one head of a [B, T, H, D] view
// strided as `stride` (load_head_tile's inverse): the gradients dQ, dK and dV.
template <class T>
__device__ __forceinline__ void store_head_tile(const float* tile, int count, int64_t d,
                                                const int64_t (&stride)[3], int64_t b, int64_t h,
                                                int64_t first, T* base) {
  T* head = base + b * stride[0] + h * stride[2];
  for (int64_t e = thread_index(); e < count * d; e += block_threads()) {
    const int64_t r = e / d, c = e % d;
    head[(first + r) * stride[1] + c] = from_float<T>(tile[e]);
  }
}

// Loads lse and delta of query rows [q0, q0 + rows) of (b, h) into tile_rows entries; rows past
// the end see no key (lse -inf).
__device__ __forceinline__ void load_row_statistics(const float* lse, const float* delta,
                                                    const AttentionShape& shape, int64_t b,
                                                    int64_t h, int64_t q0, int rows, int tile_rows,
                                                    float* s_lse, float* s_delta) {
  for (int r = thread_index(); r < tile_rows; r += block_threads()) {
    const int64_t row = (b * shape.heads + h) * shape.q_len + q0 + r;
    s_lse[r] = r < rows ? lse[row] : -INFINITY;
    s_delta[r] = r < rows ? delta[row] : 0.0f;
  }
}

// The forward's results for query rows [q0, q0 + rows) of (b, h) from its accumulators: out =
// O / sum and lse = max + log(sum), or 0 and -inf for rows that see no key (sum 0; a NaN sum
// stays NaN).
template <class T>
__device__ __forceinline__ void store_attention_rows(const float* s_o, const float* s_max,
                                                     const float* s_sum, int rows,
                                                     const AttentionShape& shape, int64_t b,
                                                     int64_t h, int64_t q0, T* out, float* lse) {
  const int64_t d = shape.head_dim, heads = shape.heads;
  for (int64_t e = thread_index(); e < rows * d; e += block_threads()) {
    const int64_t r = e / d, x = e % d;
    const float sum = s_sum[r];
    out[((b * shape.q_len + q0 + r) * heads + h) * d + x] =
        from_float<T>(sum != 0.0f ? s_o[e] / sum : 0.0f);
  }
  for (int r = thread_index(); r < rows; r += block_threads()) {
    const float sum = s_sum[r];
    lse[(b * heads + h) * shape.q_len + q0 + r] = sum != 0.0f ? s_max[r] + logf(sum) : -INFINITY;
  }
}

// The last key a tile of queries [q0, q0 + rows) can see, plus one (causal masks the rest).
__device__ __forceinline__ int64_t attention_key_end(const AttentionShape& shape,
                                                     const AttentionMaskArgs& mask, int64_t q0,
                                                     int rows) {
  if (!mask.causal) return shape.k_len;
  const int64_t visible = mask.query_offset + q0 + rows;
  return visible < shape.k_len ? visible : shape.k_len;
}

// The first query that can see key k0 (causal: query i sees key j iff j <= query_offset + i, so
// earlier queries never see a key tile starting at k0).
__device__ __forceinline__ int64_t attention_first_query(const AttentionMaskArgs& mask,
                                                         int64_t k0) {
  return mask.causal && k0 - mask.query_offset > 0 ? k0 - mask.query_offset : 0;
}

// ---- forward: a block per (query tile, batch * head) ----
template <class T>
__global__ void __launch_bounds__(kAttentionThreads)
    attention_forward_kernel(const T* q, const T* k, const T* v, QkvBias<T> bias,
                             AttentionShape shape, AttentionMaskArgs mask,
                             AttentionDropoutArgs dropout, AttentionTiles tiles, T* out,
                             float* lse) {
  resolve_seed(dropout);
  SP_DYNAMIC_SHARED(float, smem);
  const int64_t d = shape.head_dim, heads = shape.heads;
  const int bq = tiles.block_q, bk = tiles.block_k;
  const int64_t ld = attention_kv_ld(d);
  float* s_q = smem;              // [bq][d]
  float* s_o = s_q + bq * d;      // [bq][d] unnormalised output
  float* s_k = s_o + bq * d;      // [bk][ld]
  float* s_v = s_k + bk * ld;     // [bk][ld]
  float* s_p = s_v + bk * ld;     // [bq][bk] scores, then probabilities
  float* s_max = s_p + bq * bk;   // [bq] running max
  float* s_sum = s_max + bq;      // [bq] running sum of exp(score - max)
  float* s_rescale = s_sum + bq;  // [bq] exp(old max - new max) of the current tile

  const int tid = thread_index(), threads = block_threads();
  const int lane = tid % 32, warp = tid / 32, warps = threads / 32;
  const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int64_t hk = h / (heads / shape.kv_heads);
  const int64_t q0 = int64_t(blockIdx.x) * bq;
  const int rows = int(shape.q_len - q0 < bq ? shape.q_len - q0 : bq);

  load_head_tile(q, shape.q_stride, b, h, q0, rows, bq, d, d, s_q, bias.q);
  for (int64_t e = tid; e < bq * d; e += threads) s_o[e] = 0.0f;
  for (int r = tid; r < bq; r += threads) {
    s_max[r] = -INFINITY;
    s_sum[r] = 0.0f;
  }
  const int64_t key_end = attention_key_end(shape, mask, q0, rows);
  for (int64_t k0 = 0; k0 < key_end; k0 += bk) {
    const int cols = int(key_end - k0 < bk ? key_end - k0 : bk);
    __syncthreads();  // the previous tile's readers of s_k, s_v and s_p are done
    load_head_tile(k, shape.k_stride, b, hk, k0, cols, bk, d, ld, s_k, bias.k);
    load_head_tile(v, shape.v_stride, b, hk, k0, cols, bk, d, ld, s_v, bias.v);
    __syncthreads();
    for (int e = tid; e < bq * bk; e += threads) {
      const int r = e / bk, c = e % bk;
      float s = -INFINITY;
      if (r < rows && c < cols) {
        float dot = 0.0f;
        for (int64_t x = 0; x < d; ++x) dot += s_q[r * d + x] * s_k[c * ld + x];
        s = masked_score(dot, mask, b, h, q0 + r, k0 + c, heads, shape.q_len, shape.k_len);
      }
      s_p[e] = s;
    }
    __syncthreads();
    // Online softmax: fold this tile's scores into the running max and sum. A row per bk / 4
    // lanes, four consecutive keys per lane, so that one or two Philox blocks give their dropout
    // factors. The sum normalises the probabilities before dropout; the output accumulates
    // dropped ones. Tests are "!= 0", never "> 0": a NaN score (a NaN in q or k) makes the row
    // NaN, as in torch, instead of vanishing from it.
    const int row_lanes = bk / 4, rows_per_pass = 32 / row_lanes;
    const int c0 = (lane % row_lanes) * 4;
    for (int first = warp * rows_per_pass; first < bq; first += warps * rows_per_pass) {
      const int r = first + lane / row_lanes;
      const bool in_tile = r < bq;  // lanes past the tile's rows still join the shuffles
      float s[4], p[4], keep[4];
      for (int t = 0; t < 4; ++t) s[t] = in_tile ? s_p[r * bk + c0 + t] : -INFINITY;
      const float old_max = in_tile ? s_max[r] : -INFINITY;
      const float new_max =
          fmaxf(old_max, lane_group_max(fmaxf(fmaxf(s[0], s[1]), fmaxf(s[2], s[3])), row_lanes));
      for (int t = 0; t < 4; ++t) p[t] = new_max == -INFINITY ? 0.0f : expf(s[t] - new_max);
      const float tile_sum = lane_group_sum((p[0] + p[1]) + (p[2] + p[3]), row_lanes);
      attention_keep_factors4(dropout, shape, b, h, q0 + r, k0 + c0, keep);
      if (in_tile)
        for (int t = 0; t < 4; ++t) s_p[r * bk + c0 + t] = p[t] != 0.0f ? p[t] * keep[t] : 0.0f;
      // Every lane has read s_max[r] before its row's first lane overwrites it. The shuffles
      // above already order that; the hardware's warp model is weaker than the emulator's.
      __syncwarp();
      if (in_tile && lane % row_lanes == 0) {
        const float rescale = new_max == -INFINITY ? 1.0f : expf(old_max - new_max);
        s_rescale[r] = rescale;
        s_sum[r] = s_sum[r] * rescale + tile_sum;
        s_max[r] = new_max;
      }
    }
    __syncthreads();
    for (int64_t e = tid; e < bq * d; e += threads) {
      const int64_t r = e / d, x = e % d;
      float acc = s_o[e] * s_rescale[r];
      for (int c = 0; c < cols; ++c) acc += s_p[r * bk + c] * s_v[c * ld + x];
      s_o[e] = acc;
    }
  }
  __syncthreads();
  store_attention_rows(s_o, s_max, s_sum, rows, shape, b, h, q0, out, lse);
}

// ---- backward ----

// delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d] (= rowsum(P * M * dP), since O sums the
// dropped probabilities P * M); a warp per row of the contiguous [B, Tq, H, D] out and d_out.
template <class T>
__global__ void attention_backward_delta_kernel(const T* out, const T* d_out, int64_t batch,
                                                int64_t q_len, int64_t heads, int64_t d,
                                                float* delta) {
  const int lane = thread_index() % 32;
  const int64_t rows = batch * q_len * heads;
  const int64_t warps_total = int64_t(gridDim.x) * (block_threads() / 32);
  for (int64_t row = global_thread_index() / 32; row < rows; row += warps_total) {
    float dot = 0.0f;
    for (int64_t x = lane; x < d; x += 32)
      dot += to_float(d_out[row * d + x]) * to_float(out[row * d + x]);
    dot = warp_sum(dot);
    const int64_t h = row % heads, i = (row / heads) % q_len, b = row / (heads * q_len);
    if (lane == 0) delta[(b * heads + h) * q_len + i] = dot;
  }
}

// The gradient of one score from its raw q.k, dP and dropout factor M: dS = scale P (M dP - delta)
// and the dropped probability P M; both 0 outside the tile, for masked keys and for rows that see
// no key ("!= 0" lets a NaN probability through).
struct ScoreGradient {
  float dropped_p, ds;
};
__device__ __forceinline__ ScoreGradient
attention_score_gradient(float raw, float dp, bool inside, float row_lse, float row_delta,
                         float keep, const AttentionShape& shape, const AttentionMaskArgs& mask,
                         int64_t b, int64_t h, int64_t i, int64_t j) {
  ScoreGradient g{0.0f, 0.0f};
  if (!inside || row_lse == -INFINITY) return g;
  const float s = masked_score(raw, mask, b, h, i, j, shape.heads, shape.q_len, shape.k_len);
  const float p = expf(s - row_lse);
  if (p != 0.0f) {
    g.ds = mask.scale * p * (keep * dp - row_delta);
    g.dropped_p = p * keep;
  }
  return g;
}

// For a tile: s_p = P * M (what the output summed) and s_ds = dS, from P recomputed as
// exp(masked score - lse) and dP = dO . V. A thread takes four consecutive keys of one query
// (block_k is a multiple of 4), whose dropout factors come from one or two Philox blocks.
__device__ __forceinline__ void attention_tile_gradients(
    const float* s_q, const float* s_do, const float* s_k, const float* s_v, const float* s_lse,
    const float* s_delta, const AttentionShape& shape, const AttentionMaskArgs& mask,
    const AttentionDropoutArgs& dropout, int64_t b, int64_t h, int64_t q0, int rows, int64_t k0,
    int cols, int bk, int bq, float* s_p, float* s_ds) {
  const int64_t d = shape.head_dim, ld = attention_kv_ld(d);
  for (int e0 = thread_index() * 4; e0 < bq * bk; e0 += block_threads() * 4) {
    const int r = e0 / bk, c0 = e0 % bk;
    float keep[4];
    attention_keep_factors4(dropout, shape, b, h, q0 + r, k0 + c0, keep);
    for (int t = 0; t < 4; ++t) {
      const int c = c0 + t;
      float qk = 0.0f, dp = 0.0f;
      if (r < rows && c < cols)
        for (int64_t x = 0; x < d; ++x) {
          qk += s_q[r * d + x] * s_k[c * ld + x];
          dp += s_do[r * d + x] * s_v[c * ld + x];
        }
      const ScoreGradient g =
          attention_score_gradient(qk, dp, r < rows && c < cols, s_lse[r], s_delta[r], keep[t],
                                   shape, mask, b, h, q0 + r, k0 + c);
      if (s_p) s_p[e0 + t] = g.dropped_p;
      s_ds[e0 + t] = g.ds;
    }
  }
}

// dQ for a block per (query tile, batch * head): dQ = sum over key tiles of dS K.
template <class T>
__global__ void __launch_bounds__(kAttentionThreads)
    attention_backward_dq_kernel(const T* q, const T* k, const T* v, QkvBias<T> bias,
                                 const T* d_out, const float* lse, const float* delta,
                                 AttentionShape shape, AttentionMaskArgs mask,
                                 AttentionDropoutArgs dropout, AttentionTiles tiles, T* dq) {
  resolve_seed(dropout);
  SP_DYNAMIC_SHARED(float, smem);
  const int64_t d = shape.head_dim, heads = shape.heads;
  const int bq = tiles.block_q, bk = tiles.block_k;
  const int64_t ld = attention_kv_ld(d);
  float* s_q = smem;              // [bq][d]
  float* s_do = s_q + bq * d;     // [bq][d]
  float* s_dq = s_do + bq * d;    // [bq][d]
  float* s_k = s_dq + bq * d;     // [bk][ld]
  float* s_v = s_k + bk * ld;     // [bk][ld]
  float* s_ds = s_v + bk * ld;    // [bq][bk]
  float* s_lse = s_ds + bq * bk;  // [bq]
  float* s_delta = s_lse + bq;    // [bq]

  const int tid = thread_index(), threads = block_threads();
  const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int64_t hk = h / (heads / shape.kv_heads);
  const int64_t q0 = int64_t(blockIdx.x) * bq;
  const int rows = int(shape.q_len - q0 < bq ? shape.q_len - q0 : bq);
  const int64_t contiguous_stride[3] = {shape.q_len * heads * d, heads * d, d};

  load_head_tile(q, shape.q_stride, b, h, q0, rows, bq, d, d, s_q, bias.q);
  load_head_tile(d_out, contiguous_stride, b, h, q0, rows, bq, d, d, s_do);
  for (int64_t e = tid; e < bq * d; e += threads) s_dq[e] = 0.0f;
  load_row_statistics(lse, delta, shape, b, h, q0, rows, bq, s_lse, s_delta);
  const int64_t key_end = attention_key_end(shape, mask, q0, rows);
  for (int64_t k0 = 0; k0 < key_end; k0 += bk) {
    const int cols = int(key_end - k0 < bk ? key_end - k0 : bk);
    __syncthreads();
    load_head_tile(k, shape.k_stride, b, hk, k0, cols, bk, d, ld, s_k, bias.k);
    load_head_tile(v, shape.v_stride, b, hk, k0, cols, bk, d, ld, s_v, bias.v);
    __syncthreads();
    attention_tile_gradients(s_q, s_do, s_k, s_v, s_lse, s_delta, shape, mask, dropout, b, h, q0,
                             rows, k0, cols, bk, bq, nullptr, s_ds);
    __syncthreads();
    for (int64_t e = tid; e < bq * d; e += threads) {
      const int64_t r = e / d, x = e % d;
      float acc = s_dq[e];
      for (int c = 0; c < cols; ++c) acc += s_ds[r * bk + c] * s_k[c * ld + x];
      s_dq[e] = acc;
    }
  }
  store_head_tile(s_dq, rows, d, shape.dq_stride, b, h, q0, dq);
}

// dK and dV for a block per (key tile, batch * key/value head): dV = sum P^T dO, dK = sum dS^T Q
// over the query tiles that can see the keys, of every query head of the group (summed in head
// order: deterministic). Either output may be null.
template <class T>
__global__ void __launch_bounds__(kAttentionThreads)
    attention_backward_dkv_kernel(const T* q, const T* k, const T* v, QkvBias<T> bias,
                                  const T* d_out, const float* lse, const float* delta,
                                  AttentionShape shape, AttentionMaskArgs mask,
                                  AttentionDropoutArgs dropout, AttentionTiles tiles, T* dk,
                                  T* dv) {
  resolve_seed(dropout);
  SP_DYNAMIC_SHARED(float, smem);
  const int64_t d = shape.head_dim, heads = shape.heads;
  const int bq = tiles.block_q, bk = tiles.block_k;
  const int64_t ld = attention_kv_ld(d);
  float* s_k = smem;              // [bk][ld]
  float* s_v = s_k + bk * ld;     // [bk][ld]
  float* s_dk = s_v + bk * ld;    // [bk][d]
  float* s_dv = s_dk + bk * d;    // [bk][d]
  float* s_q = s_dv + bk * d;     // [bq][d]
  float* s_do = s_q + bq * d;     // [bq][d]
  float* s_p = s_do + bq * d;     // [bq][bk]
  float* s_ds = s_p + bq * bk;    // [bq][bk]
  float* s_lse = s_ds + bq * bk;  // [bq]
  float* s_delta = s_lse + bq;    // [bq]

  const int tid = thread_index(), threads = block_threads();
  const int64_t kv_heads = shape.kv_heads, group = heads / kv_heads;
  const int64_t b = blockIdx.y / kv_heads, hk = blockIdx.y % kv_heads;
  const int64_t k0 = int64_t(blockIdx.x) * bk;
  const int cols = int(shape.k_len - k0 < bk ? shape.k_len - k0 : bk);
  const int64_t contiguous_stride[3] = {shape.q_len * heads * d, heads * d, d};

  load_head_tile(k, shape.k_stride, b, hk, k0, cols, bk, d, ld, s_k, bias.k);
  load_head_tile(v, shape.v_stride, b, hk, k0, cols, bk, d, ld, s_v, bias.v);
  for (int64_t e = tid; e < bk * d; e += threads) {
    s_dk[e] = 0.0f;
    s_dv[e] = 0.0f;
  }
  const int64_t first_query = attention_first_query(mask, k0);
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
    for (int64_t q0 = first_query; q0 < shape.q_len; q0 += bq) {
      const int rows = int(shape.q_len - q0 < bq ? shape.q_len - q0 : bq);
      __syncthreads();
      load_head_tile(q, shape.q_stride, b, h, q0, rows, bq, d, d, s_q, bias.q);
      load_head_tile(d_out, contiguous_stride, b, h, q0, rows, bq, d, d, s_do);
      load_row_statistics(lse, delta, shape, b, h, q0, rows, bq, s_lse, s_delta);
      __syncthreads();
      attention_tile_gradients(s_q, s_do, s_k, s_v, s_lse, s_delta, shape, mask, dropout, b, h, q0,
                               rows, k0, cols, bk, bq, s_p, s_ds);
      __syncthreads();
      for (int64_t e = tid; e < bk * d; e += threads) {
        const int64_t c = e / d, x = e % d;
        float acc_v = s_dv[e], acc_k = s_dk[e];
        for (int r = 0; r < rows; ++r) {
          acc_v += s_p[r * bk + c] * s_do[r * d + x];
          acc_k += s_ds[r * bk + c] * s_q[r * d + x];
        }
        s_dv[e] = acc_v;
        s_dk[e] = acc_k;
      }
    }
  if (dk) store_head_tile(s_dk, cols, d, shape.dk_stride, b, hk, k0, dk);
  if (dv) store_head_tile(s_dv, cols, d, shape.dv_stride, b, hk, k0, dv);
}

}  // namespace sp::SP_CUDA_NS
