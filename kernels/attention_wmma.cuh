// kernels/attention_wmma.cuh: the bf16 fused attention forward on tensor cores (wmma 16x16x16,
// fp32 accumulation): S = Q K^T and O += P V as warp matrix products, the online softmax,
// masks and in-kernel dropout exactly as attention_forward_kernel (kernels/attention.cuh), whose
// outputs (out, lse) it produces, so its backward kernels serve both.
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

// Rows [first, first + count) of one head of a [B, T, H, D] bf16 view into tile[tile_rows][d];
// rows past `count` become zeros.
__device__ __forceinline__ void load_head_tile_bf16(const __nv_bfloat16* base,
                                                    const int64_t (&stride)[3], int64_t b,
                                                    int64_t h, int64_t first, int count,
                                                    int tile_rows, int64_t d, __nv_bfloat16* tile) {
  const __nv_bfloat16* head = base + b * stride[0] + h * stride[2];
  for (int64_t e = thread_index(); e < tile_rows * d; e += block_threads()) {
    const int64_t r = e / d, c = e % d;
    tile[e] = r < count ? head[(first + r) * stride[1] + c] : __float2bfloat16(0.0f);
  }
}

// A block per (64-query tile, batch * head), 128 threads.
template <class Unused = void>
__global__ void __launch_bounds__(kWmmaThreads)
    attention_forward_wmma_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                  const __nv_bfloat16* v, AttentionShape shape,
                                  AttentionMaskArgs mask, AttentionDropoutArgs dropout,
                                  __nv_bfloat16* out, float* lse) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 wmma needs sm_80; the host never launches this kernel below it
#else
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
  using FragKt = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
  using FragV = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
  using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
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

  load_head_tile_bf16(q, shape.q_stride, b, h, q0, rows, bq, d, s_q);
  for (int64_t e = tid; e < bq * d; e += block_threads()) s_o_all[e] = 0.0f;
  for (int r = tid; r < bq; r += block_threads()) {
    s_max[r] = -INFINITY;
    s_sum[r] = 0.0f;
  }
  const int64_t key_end = attention_key_end(shape, mask, q0, rows);
  for (int64_t k0 = 0; k0 < key_end; k0 += bk) {
    const int cols = int(key_end - k0 < bk ? key_end - k0 : bk);
    __syncthreads();  // the previous step's readers of s_k and s_v are done
    load_head_tile_bf16(k, shape.k_stride, b, hk, k0, cols, bk, d, s_k);
    load_head_tile_bf16(v, shape.v_stride, b, hk, k0, cols, bk, d, s_v);
    __syncthreads();
    if (r0 >= rows) continue;  // warp-uniform: this warp's queries are past the end

    // S = Q K^T for the warp's 16 queries and the step's 64 keys; K stored [key][d] is K^T in
    // column-major order.
    for (int n = 0; n < bk / 16; ++n) {
      FragAcc acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int64_t x = 0; x < d; x += 16) {
        FragA a;
        FragKt kt;
        wmma::load_matrix_sync(a, s_q + r0 * d + x, unsigned(d));
        wmma::load_matrix_sync(kt, s_k + n * 16 * d + x, unsigned(d));
        wmma::mma_sync(acc, a, kt, acc);
      }
      wmma::store_matrix_sync(s_s + n * 16, acc, bk, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax, a row at a time, two keys per lane: as attention_forward_kernel (the sum
    // normalises undropped probabilities; "!= 0" lets a NaN score poison its row).
    for (int r = 0; r < wr; ++r) {
      const int64_t i = q0 + r0 + r;
      float s[2], p[2];
      for (int half = 0; half < 2; ++half) {
        const int c = lane + 32 * half;
        s[half] = r0 + r < rows && c < cols ? masked_score(s_s[r * bk + c], mask, b, h, i, k0 + c,
                                                           heads, shape.q_len, shape.k_len)
                                            : -INFINITY;
      }
      const float old_max = s_max[r0 + r];
      const float new_max = fmaxf(old_max, warp_max(fmaxf(s[0], s[1])));
      for (int half = 0; half < 2; ++half)
        p[half] = new_max == -INFINITY ? 0.0f : expf(s[half] - new_max);
      const float tile_sum = warp_sum(p[0] + p[1]);
      for (int half = 0; half < 2; ++half) {
        const int c = lane + 32 * half;
        const float kept = p[half] != 0.0f
                               ? p[half] * attention_keep_factor(dropout, shape, b, h, i, k0 + c)
                               : 0.0f;
        s_p[r * bk + c] = __float2bfloat16(kept);
      }
      __syncwarp();  // every lane has read s_max[r0 + r] before lane 0 overwrites it
      if (lane == 0) {
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
    for (int64_t x = 0; x < d; x += 16) {
      FragAcc acc;
      wmma::load_matrix_sync(acc, s_o + x, unsigned(d), wmma::mem_row_major);
      for (int c = 0; c < bk; c += 16) {
        FragA pa;
        FragV vb;
        wmma::load_matrix_sync(pa, s_p + c, unsigned(bk));
        wmma::load_matrix_sync(vb, s_v + c * d + x, unsigned(d));
        wmma::mma_sync(acc, pa, vb, acc);
      }
      wmma::store_matrix_sync(s_o + x, acc, unsigned(d), wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int64_t e = tid; e < rows * d; e += block_threads()) {
    const int64_t r = e / d, x = e % d;
    const float sum = s_sum[r];
    out[((b * shape.q_len + q0 + r) * heads + h) * d + x] =
        __float2bfloat16(sum != 0.0f ? s_o_all[e] / sum : 0.0f);
  }
  for (int r = tid; r < rows; r += block_threads()) {
    const float sum = s_sum[r];
    lse[(b * heads + h) * shape.q_len + q0 + r] = sum != 0.0f ? s_max[r] + logf(sum) : -INFINITY;
  }
#endif
}

}  // namespace sp::SP_CUDA_NS
