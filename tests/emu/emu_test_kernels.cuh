// tests/emu/emu_test_kernels.cuh: the kernels the emulator tests run, in plain CUDA C++ against
// kernels/cuda_compat.h (nvcc compiles them too). Those named *_broken are wrong on purpose.
#pragma once

#include "kernels/cuda_compat.h"

namespace sp::SP_CUDA_NS::emu_test {

constexpr unsigned int kFullMask = 0xffffffffu;

// Every in-range thread of a 3-D grid of 3-D blocks writes which block and thread it is, and
// counts its visit; threads past (nx, ny, nz) (the tails) touch nothing.
template <class T>
__global__ void index3d(T* out, unsigned int* visits, int nx, int ny, int nz) {
  const unsigned int x = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned int y = blockIdx.y * blockDim.y + threadIdx.y;
  const unsigned int z = blockIdx.z * blockDim.z + threadIdx.z;
  if (x >= static_cast<unsigned>(nx) || y >= static_cast<unsigned>(ny) ||
      z >= static_cast<unsigned>(nz)) {
    return;
  }
  const unsigned int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const unsigned int i = (z * ny + y) * nx + x;
  out[i] = static_cast<T>(block * 1024u + thread);
  atomicAdd(&visits[i], 1u);
}

// Kernel parameters are per-thread copies: moving a pointer parameter affects only that thread.
template <class T>
__global__ void param_copies(T* out) {
  out += threadIdx.x;
  *out = static_cast<T>(threadIdx.x + 1);
}

template <class T, int kScale>
__global__ void scale_add(const T* x, T* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += static_cast<T>(kScale) * x[i];
}

template <class T>
__global__ void fill(T* out, T value, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    out[i] = value;
  }
}

// ---- shared-memory block reductions: correct, then with the leading barrier missing ----

template <int kBlock>
__global__ void block_sum(const float* in, float* out, int n) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  const int i = blockIdx.x * kBlock + t;
  s[t] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// BROKEN: no __syncthreads between writing s[t] and reading other threads' entries.
template <int kBlock>
__global__ void block_sum_no_leading_sync_broken(const float* in, float* out, int n) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  const int i = blockIdx.x * kBlock + t;
  s[t] = i < n ? in[i] : 0.0f;
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// ---- two phases over one shared buffer: mean, then variance of each block's kBlock values ----

template <int kBlock, bool kTrailingSync>
__device__ __forceinline__ void mean_var_body(const float* in, float* out) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  const float x = in[blockIdx.x * kBlock + t];
  s[t] = x;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  const float mean = s[0] / kBlock;
  // Everybody must have read s[0] before the buffer is reused for the second phase.
  if (kTrailingSync) __syncthreads();
  s[t] = (x - mean) * (x - mean);
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) {
    out[2 * blockIdx.x] = mean;
    out[2 * blockIdx.x + 1] = s[0] / kBlock;
  }
}

template <int kBlock>
__global__ void mean_var(const float* in, float* out) {
  mean_var_body<kBlock, true>(in, out);
}

// BROKEN: the trailing __syncthreads before the buffer is reused is missing.
template <int kBlock>
__global__ void mean_var_no_trailing_sync_broken(const float* in, float* out) {
  mean_var_body<kBlock, false>(in, out);
}

// ---- a shared accumulator: atomicAdd, then a plain += ----

template <int kBlock>
__global__ void shared_accumulate(const float* in, float* out) {
  __shared__ float acc;
  if (threadIdx.x == 0) acc = 0.0f;
  __syncthreads();
  atomicAdd(&acc, in[blockIdx.x * kBlock + threadIdx.x]);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// BROKEN: a read-modify-write of shared memory from every thread without atomics.
template <int kBlock>
__global__ void shared_accumulate_plain_broken(const float* in, float* out) {
  __shared__ float acc;
  if (threadIdx.x == 0) acc = 0.0f;
  __syncthreads();
  acc += in[blockIdx.x * kBlock + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// ---- the last warp of a reduction: shuffles, then the pre-Volta "warp-synchronous" idiom ----

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <int kBlock>
__global__ void block_sum_warp_tail(const float* in, float* out) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * kBlock + t];
  __syncthreads();
  for (int stride = kBlock / 2; stride >= 32; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t < 32) {
    const float v = warp_sum(s[t]);
    if (t == 0) out[blockIdx.x] = v;
  }
}

// BROKEN: lanes of the last warp update volatile shared memory with no __syncwarp, relying on
// lockstep execution that independent thread scheduling no longer guarantees.
template <int kBlock>
__global__ void block_sum_warp_synchronous_broken(const float* in, float* out) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * kBlock + t];
  __syncthreads();
  for (int stride = kBlock / 2; stride > 32; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t < 32) {
    volatile float* v = s;
    v[t] = v[t] + v[t + 32];
    v[t] = v[t] + v[t + 16];
    v[t] = v[t] + v[t + 8];
    v[t] = v[t] + v[t + 4];
    v[t] = v[t] + v[t + 2];
    v[t] = v[t] + v[t + 1];
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// ---- warp-level primitives ----

template <class T>
__global__ void warp_reduce_xor(const T* in, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = warp_sum(in[i]);
}

template <class T>
__global__ void warp_reduce_down(const T* in, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  T v = in[i];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
  out[i] = v;
}

// Inclusive scan within segments of `width` lanes, and a broadcast from lane `src` of each segment.
template <class T>
__global__ void scan_and_broadcast(const T* in, T* scan, T* bcast, int width, int src) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  T v = in[i];
  for (int d = 1; d < width; d <<= 1) {
    const T up = __shfl_up_sync(kFullMask, v, d, width);
    if (static_cast<int>(threadIdx.x & (width - 1)) >= d) v += up;
  }
  scan[i] = v;
  bcast[i] = __shfl_sync(kFullMask, in[i], src, width);
}

// Ballot/any/all over the full warp, then over the even lanes only (odd lanes stay out).
template <class P>
__global__ void votes(const P* pred, unsigned int* ballot, int* any, int* all,
                      unsigned int* even_ballot) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = pred[i];
  ballot[i] = __ballot_sync(kFullMask, p);
  any[i] = __any_sync(kFullMask, p);
  all[i] = __all_sync(kFullMask, p);
  if ((threadIdx.x & 1) == 0) {
    even_ballot[i] = __ballot_sync(0x55555555u, p);
  } else {
    even_ballot[i] = 0;
  }
}

template <class P>
__global__ void barrier_votes(const P* pred, int* count, int* all, int* any) {
  const int p = pred[blockIdx.x * blockDim.x + threadIdx.x];
  const int c = __syncthreads_count(p);
  const int a = __syncthreads_and(p);
  const int o = __syncthreads_or(p);
  if (threadIdx.x == 0) {
    count[blockIdx.x] = c;
    all[blockIdx.x] = a;
    any[blockIdx.x] = o;
  }
}

// ---- atomics from many blocks ----

template <class T>
__global__ void atomic_total(const T* in, T* total, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(total, in[i]);
}

template <class T>
__global__ void atomic_minmax(const T* in, T* lo, T* hi, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    atomicMin(lo, in[i]);
    atomicMax(hi, in[i]);
  }
}

// ---- dynamic shared memory ----

template <class T>
__global__ void read_dynamic_shared(T* out) {
  SP_DYNAMIC_SHARED(T, buf);
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// Block 0 fills the buffer; later blocks read it before writing: they must see poison again.
template <class T>
__global__ void dynamic_shared_between_blocks(T* out) {
  SP_DYNAMIC_SHARED(T, buf);
  if (blockIdx.x == 0) {
    buf[threadIdx.x] = static_cast<T>(1.0f);
  } else {
    out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
  }
}

template <class T>
__global__ void reverse_in_block(const T* in, T* out) {
  SP_DYNAMIC_SHARED(T, buf);
  const int t = threadIdx.x;
  buf[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = buf[blockDim.x - 1 - t];
}

// ---- bugs the emulator must diagnose ----

// Half of each warp waits at __syncthreads while the other half waits in a warp shuffle that
// needs them: no barrier can complete.
template <class T>
__global__ void divergent_barrier_broken(T* out) {
  T v = static_cast<T>(threadIdx.x);
  if ((threadIdx.x & 31) < 16) {
    __syncthreads();
  } else {
    v = __shfl_sync(kFullMask, v, 0);
  }
  out[threadIdx.x] = v;
}

// Lanes named in one mask call different warp operations.
template <class T>
__global__ void mismatched_warp_ops_broken(T* out) {
  const unsigned int lane = threadIdx.x & 31;
  if (lane < 16) {
    out[threadIdx.x] = __shfl_sync(kFullMask, lane, 0);
  } else {
    out[threadIdx.x] = __ballot_sync(kFullMask, 1);
  }
}

template <class T>
__global__ void trap_in_thread(T* out, int which) {
  if (static_cast<int>(threadIdx.x) == which) __trap();
  out[threadIdx.x] = 1;
}

// ---- a layernorm-shaped block: 256 threads, one row each, exactly four barriers ----

template <int kBlock>
__global__ void layernorm_rows(const float* x, const float* gamma, const float* beta, float* y,
                               int cols, float eps) {
  constexpr int kWarps = kBlock / 32;
  __shared__ float warp_partial[kWarps];
  __shared__ float row_mean;
  __shared__ float row_rstd;
  const int t = threadIdx.x;
  const int lane = t & 31;
  const int warp = t >> 5;
  const float4* row = reinterpret_cast<const float4*>(x + static_cast<size_t>(blockIdx.x) * cols);
  const int vecs = cols / 4;

  float sum = 0.0f;
  for (int i = t; i < vecs; i += kBlock) {
    const float4 v = row[i];
    sum += (v.x + v.y) + (v.z + v.w);
  }
  sum = warp_sum(sum);
  if (lane == 0) warp_partial[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    float total = lane < kWarps ? warp_partial[lane] : 0.0f;
    total = warp_sum(total);
    if (lane == 0) row_mean = total / cols;
  }
  __syncthreads();
  const float mean = row_mean;

  float sq = 0.0f;
  for (int i = t; i < vecs; i += kBlock) {
    const float4 v = row[i];
    sq += (v.x - mean) * (v.x - mean) + (v.y - mean) * (v.y - mean) + (v.z - mean) * (v.z - mean) +
          (v.w - mean) * (v.w - mean);
  }
  sq = warp_sum(sq);
  if (lane == 0) warp_partial[warp] = sq;
  __syncthreads();
  if (warp == 0) {
    float total = lane < kWarps ? warp_partial[lane] : 0.0f;
    total = warp_sum(total);
    if (lane == 0) row_rstd = rsqrtf(total / cols + eps);
  }
  __syncthreads();
  const float rstd = row_rstd;

  float4* out = reinterpret_cast<float4*>(y + static_cast<size_t>(blockIdx.x) * cols);
  const float4* g = reinterpret_cast<const float4*>(gamma);
  const float4* b = reinterpret_cast<const float4*>(beta);
  for (int i = t; i < vecs; i += kBlock) {
    const float4 v = row[i];
    const float4 gv = __ldg(&g[i]);
    const float4 bv = __ldg(&b[i]);
    out[i] = make_float4((v.x - mean) * rstd * gv.x + bv.x, (v.y - mean) * rstd * gv.y + bv.y,
                         (v.z - mean) * rstd * gv.z + bv.z, (v.w - mean) * rstd * gv.w + bv.w);
  }
}

// bf16 in, fp32 math, bf16 out: the usual mixed-precision kernel shape.
template <class Bf16>
__global__ void bf16_axpy(const Bf16* x, Bf16* y, float a, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16(a * __bfloat162float(x[i]) + __bfloat162float(y[i]));
}

// ---- warp matrix products (wmma) ----

using WmmaA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using WmmaBt = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using WmmaAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// d = a b + 2 c for one 16x16x16 tile: a row-major, b given as the rows of b^T (col-major),
// c scaled by a uniform element-wise loop over the fragment.
template <class Unused = void>
__global__ void wmma_tile_product(const __nv_bfloat16* a, const __nv_bfloat16* b_t, const float* c,
                                  float* d) {
  WmmaA fa;
  WmmaBt fb;
  WmmaAcc fc;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b_t, 16);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
  for (int i = 0; i < fc.num_elements; ++i) fc.x[i] *= 2.0f;
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
}

// Broken: the upper half of the warp skips the load and meets the others in the store.
template <class Unused = void>
__global__ void wmma_half_warp_load_broken(const __nv_bfloat16* a, float* d) {
  WmmaA fa;
  WmmaBt fb;
  WmmaAcc fc;
  wmma::fill_fragment(fc, 0.0f);
  if (threadIdx.x < 16) wmma::load_matrix_sync(fa, a, 16);
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
  (void)fb;
}

// Broken: a tile pointer that is not 32-byte aligned.
template <class Unused = void>
__global__ void wmma_misaligned_broken(const __nv_bfloat16* a) {
  WmmaA fa;
  wmma::load_matrix_sync(fa, a + 1, 16);
}

}  // namespace sp::SP_CUDA_NS::emu_test
