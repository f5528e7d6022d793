// kernels/attention_wmma.cuh: the bf16 fused attention forward and backward on tensor cores (wmma
// 16x16x16, fp32 accumulation), with the masks, bias and Philox dropout of kernels/attention.cuh.
#pragma once

#include "kernels/attention.cuh"

namespace sp::SP_CUDA_NS {

// A block is four warps; each owns 16 of the tile's 64 queries and runs over 64 keys a step.
constexpr int kWmmaQueries = 64;
constexpr int kWmmaKeys = 64;
constexpr int kWmmaThreads = 128;
constexpr int kWmmaWarpRows = 16;

// Head dimensions the kernel takes: whole 16-wide tiles, and at most 128 (shared memory).
__host__ __device__ inline bool attention_wmma_supports(int64_t head_dim) {
  return head_dim > 0 && head_dim % 16 == 0 && head_dim <= 128;
}

// Dynamic shared memory: bf16 Q, K and V tiles [64][d]; per warp bf16 probabilities [16][64],
// fp32 scores [16][64] and the fp32 output accumulator [16][d]; fp32 row max, sum and rescale.
// Every region starts at a multiple of 32 bytes, as wmma requires.
__host__ __device__ inline int64_t attention_wmma_forward_smem_bytes(int64_t d) {
  return 3 * kWmmaQueries * d * 2 + kWmmaQueries * kWmmaKeys * (2 + 4) + kWmmaQueries * d * 4 +
         3 * kWmmaQueries * 4;
}

// Rows [first, first + count) of one head of a [B, T, H, D] bf16 view, plus the head's row of
// `bias` ([H * D] or null), into tile[tile_rows][d]; rows past `count` become zeros. 16-byte loads
// (8 elements) where the head's rows are 16-byte aligned, as in every contiguous or packed-qkv
// layout; element loads otherwise.
__device__ __forceinline__ void load_head_tile_bf16(const __nv_bfloat16* base,
                                                    const int64_t (&stride)[3], int64_t b,
                                                    int64_t h, int64_t first, int count,
                                                    int tile_rows, int64_t d, __nv_bfloat16* tile,
                                                    const __nv_bfloat16* bias = nullptr) {
  const __nv_bfloat16* head = base + b * stride[0] + h * stride[2];
  constexpr int kPack = 8;
  if (reinterpret_cast<uintptr_t>(head) % 16 == 0 && stride[1] % kPack == 0 && d % kPack == 0) {
    const int64_t packs_per_row = d / kPack;
    for (int64_t e = thread_index(); e < tile_rows * packs_per_row; e += block_threads()) {
      const int64_t r = e / packs_per_row, c = (e % packs_per_row) * kPack;
      Pack<__nv_bfloat16, kPack> pack;
      if (r < count) {
        load_pack(pack, head + (first + r) * stride[1] + c);
        if (bias)
          for (int i = 0; i < kPack; ++i)
            pack.v[i] = add_input_bias(pack.v[i], bias, h * d + c + i);
      } else {
        for (int i = 0; i < kPack; ++i) pack.v[i] = __float2bfloat16(0.0f);
      }
      store_pack(tile + r * d + c, pack);
    }
    return;
  }
  for (int64_t e = thread_index(); e < tile_rows * d; e += block_threads()) {
    const int64_t r = e / d, c = e % d;
    tile[e] = r < count ? add_input_bias(head[(first + r) * stride[1] + c], bias, h * d + c)
                        : __float2bfloat16(0.0f);
  }
}

// out[16][64] (fp32, ld 64) = A B^T for a warp: A is 16 rows of a [.][d] bf16 tile, B the 64
// rows of another, both row-major with leading dimension d (B^T is then column-major).
__device__ __forceinline__ void wmma_rows_times_rows_transposed(const __nv_bfloat16* a,
                                                                const __nv_bfloat16* b, int64_t d,
                                                                float* out) {
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
  using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
  using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  for (int n = 0; n < 64 / 16; ++n) {
    FragAcc acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int64_t x = 0; x < d; x += 16) {
      FragA fa;
      FragBt fb;
      wmma::load_matrix_sync(fa, a + x, unsigned(d));
      wmma::load_matrix_sync(fb, b + n * 16 * d + x, unsigned(d));
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + n * 16, acc, 64, wmma::mem_row_major);
  }
}

// acc[16][d] (fp32 in shared memory, ld d) += A B for a warp: A [16][64] bf16 row-major (ld 64),
// B [64][d] bf16 row-major (ld d).
__device__ __forceinline__ void wmma_accumulate_product(const __nv_bfloat16* a,
                                                        const __nv_bfloat16* b, int64_t d,
                                                        float* acc_rows) {
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
  using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  for (int64_t x = 0; x < d; x += 16) {
    FragAcc acc;
    wmma::load_matrix_sync(acc, acc_rows + x, unsigned(d), wmma::mem_row_major);
    for (int c = 0; c < 64; c += 16) {
      FragA fa;
      FragB fb;
      wmma::load_matrix_sync(fa, a + c, 64);
      wmma::load_matrix_sync(fb, b + c * d + x, unsigned(d));
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(acc_rows + x, acc, unsigned(d), wmma::mem_row_major);
  }
}

// A block per (64-query tile, batch * head), 128 threads.
template <class Unused = void>
__global__ void __launch_bounds__(kWmmaThreads)
    attention_forward_wmma_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                  const __nv_bfloat16* v, QkvBias<__nv_bfloat16> bias,
                                  AttentionShape shape, AttentionMaskArgs mask,
                                  AttentionDropoutArgs dropout, __nv_bfloat16* out, float* lse) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 wmma needs sm_80; the host never launches this kernel below it
#else
  resolve_seed(dropout);
  SP_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t d = shape.head_dim, heads = shape.heads;
  constexpr int bq = kWmmaQueries, bk = kWmmaKeys, wr = kWmmaWarpRows;
  __nv_bfloat16* s_q = reinterpret_cast<__nv_bfloat16*>(smem);   // [bq][d]
  __nv_bfloat16* s_k = s_q + bq * d;                             // [bk][d]
  __nv_bfloat16* s_v = s_k + bk * d;                             // [bk][d]
  __nv_bfloat16* s_p_all = s_v + bk * d;                         // [warps][wr][bk]
  float* s_s_all = reinterpret_cast<float*>(s_p_all + bq * bk);  // [warps][wr][bk]
  float* s_o_all = s_s_all + bq * bk;                            // [warps][wr][d] = [bq][d]
  float* s_max = s_o_all + bq * d;                               // [bq]
  float* s_sum = s_max + bq;                                     // [bq]
  float* s_rescale = s_sum + bq;                                 // [bq]

  const int tid = thread_index(), lane = tid % 32, warp = tid / 32;
  const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int64_t hk = h / (heads / shape.kv_heads);
  const int64_t q0 = int64_t(blockIdx.x) * bq;
  const int rows = int(shape.q_len - q0 < bq ? shape.q_len - q0 : bq);
  const int r0 = warp * wr;  // this warp's first row in the tile
  __nv_bfloat16* s_p = s_p_all + r0 * bk;
  float* s_s = s_s_all + r0 * bk;
  float* s_o = s_o_all + r0 * d;

  load_head_tile_bf16(q, shape.q_stride, b, h, q0, rows, bq, d, s_q, bias.q);
  for (int64_t e = tid; e < bq * d; e += block_threads()) s_o_all[e] = 0.0f;
  for (int r = tid; r < bq; r += block_threads()) {
    s_max[r] = -INFINITY;
    s_sum[r] = 0.0f;
  }
  const int64_t key_end = attention_key_end(shape, mask, q0, rows);
  for (int64_t k0 = 0; k0 < key_end; k0 += bk) {
    const int cols = int(key_end - k0 < bk ? key_end - k0 : bk);
    __syncthreads();  // the previous step's readers of s_k and s_v are done
    load_head_tile_bf16(k, shape.k_stride, b, hk, k0, cols, bk, d, s_k, bias.k);
    load_head_tile_bf16(v, shape.v_stride, b, hk, k0, cols, bk, d, s_v, bias.v);
    __syncthreads();
    if (r0 >= rows) continue;  // warp-uniform: this warp's queries are past the end

    // S = Q K^T for the warp's 16 queries and the step's 64 keys.
    wmma_rows_times_rows_transposed(s_q + r0 * d, s_k, d, s_s);
    __syncwarp();

    // Online softmax, two rows at a time (a half-warp each), four consecutive keys per lane so that
    // one or two Philox blocks give their dropout factors: as attention_forward_kernel (the sum
    // normalises undropped probabilities; "!= 0" lets a NaN score poison its row).
    const int half = lane / 16, c0 = (lane % 16) * 4;
    for (int r = half; r < wr; r += 2) {
      const int64_t i = q0 + r0 + r;
      float s[4], p[4], keep[4];
      for (int t = 0; t < 4; ++t) {
        const int c = c0 + t;
        s[t] = r0 + r < rows && c < cols ? masked_score(s_s[r * bk + c], mask, b, h, i, k0 + c,
                                                        heads, shape.q_len, shape.k_len)
                                         : -INFINITY;
      }
      const float old_max = s_max[r0 + r];
      const float new_max =
          fmaxf(old_max, lane_group_max(fmaxf(fmaxf(s[0], s[1]), fmaxf(s[2], s[3])), 16));
      for (int t = 0; t < 4; ++t) p[t] = new_max == -INFINITY ? 0.0f : expf(s[t] - new_max);
      const float tile_sum = lane_group_sum((p[0] + p[1]) + (p[2] + p[3]), 16);
      attention_keep_factors4(dropout, shape, b, h, i, k0 + c0, keep);
      for (int t = 0; t < 4; ++t)
        s_p[r * bk + c0 + t] = __float2bfloat16(p[t] != 0.0f ? p[t] * keep[t] : 0.0f);
      __syncwarp();  // every lane has read s_max[r0 + r] before its row's first lane overwrites it
      if (lane % 16 == 0) {
        const float rescale = new_max == -INFINITY ? 1.0f : expf(old_max - new_max);
        s_rescale[r0 + r] = rescale;
        s_sum[r0 + r] = s_sum[r0 + r] * rescale + tile_sum;
        s_max[r0 + r] = new_max;
      }
    }
    __syncwarp();

    // O = O * rescale + P V: the accumulator lives in shared memory, since rescaling rows of a
    // fragment would need its (unspecified) element-to-row mapping.
    for (int64_t e = lane; e < wr * d; e += 32) s_o[e] *= s_rescale[r0 + e / d];
    __syncwarp();
    wmma_accumulate_product(s_p, s_v, d, s_o);
  }
  __syncthreads();
  store_attention_rows(s_o_all, s_max, s_sum, rows, shape, b, h, q0, out, lse);
#endif
}

// ---- backward: dQ per query tile, dK/dV per key tile, as the scalar kernels but every product
// (S = Q K^T, dP = dO V^T, dQ += dS K, dV += P^T dO, dK += dS^T Q) a wmma product. dS and the
// dropped P are rounded to bf16 for the products, as FlashAttention-2 does; delta comes from
// attention_backward_delta_kernel.

// dQ kernel: bf16 Q, dO, K, V tiles [64][d]; per warp fp32 scores and dP [2][16][64], bf16 dS
// [16][64]; fp32 dQ accumulator [64][d]; fp32 lse and delta [64].
__host__ __device__ inline int64_t attention_wmma_backward_dq_smem_bytes(int64_t d) {
  return 4 * kWmmaQueries * d * 2 + 2 * kWmmaQueries * kWmmaKeys * 4 +
         kWmmaQueries * kWmmaKeys * 2 + kWmmaQueries * d * 4 + 2 * kWmmaQueries * 4;
}

// dK/dV kernel: bf16 K, V, Q, dO tiles [64][d]; per warp fp32 S^T and dP^T [2][16][64], bf16 P^T
// and dS^T [2][16][64]; fp32 dK and dV accumulators [64][d]; fp32 lse and delta [64].
__host__ __device__ inline int64_t attention_wmma_backward_dkv_smem_bytes(int64_t d) {
  return 4 * kWmmaKeys * d * 2 + 2 * kWmmaKeys * kWmmaQueries * 4 +
         2 * kWmmaKeys * kWmmaQueries * 2 + 2 * kWmmaKeys * d * 4 + 2 * kWmmaQueries * 4;
}

template <class Unused = void>
__global__ void __launch_bounds__(kWmmaThreads)
    attention_backward_dq_wmma_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                      const __nv_bfloat16* v, QkvBias<__nv_bfloat16> bias,
                                      const __nv_bfloat16* d_out, const float* lse,
                                      const float* delta, AttentionShape shape,
                                      AttentionMaskArgs mask, AttentionDropoutArgs dropout,
                                      __nv_bfloat16* dq) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  resolve_seed(dropout);
  SP_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t d = shape.head_dim, heads = shape.heads;
  constexpr int bq = kWmmaQueries, bk = kWmmaKeys, wr = kWmmaWarpRows;
  __nv_bfloat16* s_q = reinterpret_cast<__nv_bfloat16*>(smem);      // [bq][d]
  __nv_bfloat16* s_do = s_q + bq * d;                               // [bq][d]
  __nv_bfloat16* s_k = s_do + bq * d;                               // [bk][d]
  __nv_bfloat16* s_v = s_k + bk * d;                                // [bk][d]
  __nv_bfloat16* s_ds_all = s_v + bk * d;                           // [warps][wr][bk]
  float* s_scratch = reinterpret_cast<float*>(s_ds_all + bq * bk);  // [warps][2][wr][bk]
  float* s_dq = s_scratch + 2 * bq * bk;                            // [bq][d]
  float* s_lse = s_dq + bq * d;                                     // [bq]
  float* s_delta = s_lse + bq;                                      // [bq]

  const int tid = thread_index(), lane = tid % 32, warp = tid / 32;
  const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int64_t hk = h / (heads / shape.kv_heads);
  const int64_t q0 = int64_t(blockIdx.x) * bq;
  const int rows = int(shape.q_len - q0 < bq ? shape.q_len - q0 : bq);
  const int64_t contiguous_stride[3] = {shape.q_len * heads * d, heads * d, d};
  const int r0 = warp * wr;
  float* s_s = s_scratch + r0 * 2 * bk;  // [wr][bk] raw scores
  float* s_dp = s_s + wr * bk;           // [wr][bk] dP
  __nv_bfloat16* s_ds = s_ds_all + r0 * bk;

  load_head_tile_bf16(q, shape.q_stride, b, h, q0, rows, bq, d, s_q, bias.q);
  load_head_tile_bf16(d_out, contiguous_stride, b, h, q0, rows, bq, d, s_do);
  load_row_statistics(lse, delta, shape, b, h, q0, rows, bq, s_lse, s_delta);
  for (int64_t e = tid; e < bq * d; e += block_threads()) s_dq[e] = 0.0f;
  const int64_t key_end = attention_key_end(shape, mask, q0, rows);
  for (int64_t k0 = 0; k0 < key_end; k0 += bk) {
    const int cols = int(key_end - k0 < bk ? key_end - k0 : bk);
    __syncthreads();
    load_head_tile_bf16(k, shape.k_stride, b, hk, k0, cols, bk, d, s_k, bias.k);
    load_head_tile_bf16(v, shape.v_stride, b, hk, k0, cols, bk, d, s_v, bias.v);
    __syncthreads();
    if (r0 >= rows) continue;  // warp-uniform
    wmma_rows_times_rows_transposed(s_q + r0 * d, s_k, d, s_s);
    wmma_rows_times_rows_transposed(s_do + r0 * d, s_v, d, s_dp);
    __syncwarp();
    // Four consecutive keys of one query per lane: one or two Philox blocks for their dropout.
    for (int e = lane * 4; e < wr * bk; e += 32 * 4) {
      const int r = e / bk, c = e % bk;
      float keep[4];
      attention_keep_factors4(dropout, shape, b, h, q0 + r0 + r, k0 + c, keep);
      for (int t = 0; t < 4; ++t) {
        const ScoreGradient g = attention_score_gradient(
            s_s[e + t], s_dp[e + t], r0 + r < rows && c + t < cols, s_lse[r0 + r], s_delta[r0 + r],
            keep[t], shape, mask, b, h, q0 + r0 + r, k0 + c + t);
        s_ds[e + t] = __float2bfloat16(g.ds);
      }
    }
    __syncwarp();
    wmma_accumulate_product(s_ds, s_k, d, s_dq + r0 * d);
  }
  __syncthreads();
  store_head_tile(s_dq, rows, d, shape.dq_stride, b, h, q0, dq);
#endif
}

// A block per (64-key tile, batch * key/value head); the query heads of a group are summed in
// head order (deterministic). Either output may be null.
template <class Unused = void>
__global__ void __launch_bounds__(kWmmaThreads)
    attention_backward_dkv_wmma_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                       const __nv_bfloat16* v, QkvBias<__nv_bfloat16> bias,
                                       const __nv_bfloat16* d_out, const float* lse,
                                       const float* delta, AttentionShape shape,
                                       AttentionMaskArgs mask, AttentionDropoutArgs dropout,
                                       __nv_bfloat16* dk, __nv_bfloat16* dv) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  resolve_seed(dropout);
  SP_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t d = shape.head_dim, heads = shape.heads;
  constexpr int bq = kWmmaQueries, bk = kWmmaKeys, wr = kWmmaWarpRows;
  __nv_bfloat16* s_k = reinterpret_cast<__nv_bfloat16*>(smem);  // [bk][d]
  __nv_bfloat16* s_v = s_k + bk * d;                            // [bk][d]
  __nv_bfloat16* s_q = s_v + bk * d;                            // [bq][d]
  __nv_bfloat16* s_do = s_q + bq * d;                           // [bq][d]
  __nv_bfloat16* s_half_all = s_do + bq * d;  // [warps][2][wr][bq]: dropped P^T, dS^T
  float* s_scratch = reinterpret_cast<float*>(s_half_all + 2 * bk * bq);  // [warps][2][wr][bq]
  float* s_dk = s_scratch + 2 * bk * bq;                                  // [bk][d]
  float* s_dv = s_dk + bk * d;                                            // [bk][d]
  float* s_lse = s_dv + bk * d;                                           // [bq]
  float* s_delta = s_lse + bq;                                            // [bq]

  const int tid = thread_index(), lane = tid % 32, warp = tid / 32;
  const int64_t kv_heads = shape.kv_heads, group = heads / kv_heads;
  const int64_t b = blockIdx.y / kv_heads, hk = blockIdx.y % kv_heads;
  const int64_t k0 = int64_t(blockIdx.x) * bk;
  const int cols = int(shape.k_len - k0 < bk ? shape.k_len - k0 : bk);
  const int64_t contiguous_stride[3] = {shape.q_len * heads * d, heads * d, d};
  const int c0 = warp * wr;               // this warp's first key in the tile
  float* s_st = s_scratch + c0 * 2 * bq;  // [wr][bq] raw scores, transposed
  float* s_dpt = s_st + wr * bq;          // [wr][bq] dP^T
  __nv_bfloat16* s_pt = s_half_all + c0 * 2 * bq;
  __nv_bfloat16* s_dst = s_pt + wr * bq;

  load_head_tile_bf16(k, shape.k_stride, b, hk, k0, cols, bk, d, s_k, bias.k);
  load_head_tile_bf16(v, shape.v_stride, b, hk, k0, cols, bk, d, s_v, bias.v);
  for (int64_t e = tid; e < bk * d; e += block_threads()) {
    s_dk[e] = 0.0f;
    s_dv[e] = 0.0f;
  }
  const int64_t first_query = attention_first_query(mask, k0);
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
    for (int64_t q0 = first_query; q0 < shape.q_len; q0 += bq) {
      const int rows = int(shape.q_len - q0 < bq ? shape.q_len - q0 : bq);
      __syncthreads();
      load_head_tile_bf16(q, shape.q_stride, b, h, q0, rows, bq, d, s_q, bias.q);
      load_head_tile_bf16(d_out, contiguous_stride, b, h, q0, rows, bq, d, s_do);
      load_row_statistics(lse, delta, shape, b, h, q0, rows, bq, s_lse, s_delta);
      __syncthreads();
      if (c0 >= cols) continue;  // warp-uniform: this warp's keys are past the end
      wmma_rows_times_rows_transposed(s_k + c0 * d, s_q, d, s_st);
      wmma_rows_times_rows_transposed(s_v + c0 * d, s_do, d, s_dpt);
      __syncwarp();
      // Four consecutive keys of one query per lane (entries bq apart in the transposed tiles):
      // one or two Philox blocks for their dropout.
      for (int g4 = lane; g4 < (wr / 4) * bq; g4 += 32) {
        const int c = (g4 / bq) * 4, r = g4 % bq;
        float keep[4];
        attention_keep_factors4(dropout, shape, b, h, q0 + r, k0 + c0 + c, keep);
        for (int t = 0; t < 4; ++t) {
          const int e = (c + t) * bq + r;
          const ScoreGradient g = attention_score_gradient(
              s_st[e], s_dpt[e], c0 + c + t < cols && r < rows, s_lse[r], s_delta[r], keep[t],
              shape, mask, b, h, q0 + r, k0 + c0 + c + t);
          s_pt[e] = __float2bfloat16(g.dropped_p);
          s_dst[e] = __float2bfloat16(g.ds);
        }
      }
      __syncwarp();
      wmma_accumulate_product(s_pt, s_do, d, s_dv + c0 * d);
      wmma_accumulate_product(s_dst, s_q, d, s_dk + c0 * d);
    }
  __syncthreads();
  if (dk) store_head_tile(s_dk, cols, d, shape.dk_stride, b, hk, k0, dk);
  if (dv) store_head_tile(s_dv, cols, d, shape.dv_stride, b, hk, k0, dv);
#endif
}

}  // namespace sp::SP_CUDA_NS
