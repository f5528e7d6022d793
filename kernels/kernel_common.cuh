// kernels/kernel_common.cuh: what every kernel family shares: fp32 <-> storage-type conversions,
// 16-byte packs for vectorised loads, warp/block reductions, grid-stride indexing, strided layouts.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cuda_compat.h"

#if !SP_CUDA_EMU
#include <cuda_fp16.h>
#endif

namespace sp::SP_CUDA_NS {

// ---- element types: every kernel computes in fp32 and stores in the tensor's type ----

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
struct FromFloat;
template <>
struct FromFloat<float> {
  __device__ __forceinline__ static float convert(float v) { return v; }
};
template <>
struct FromFloat<__nv_bfloat16> {
  // Round to nearest even, like torch's .to(bfloat16) and sp::float_to_bf16.
  __device__ __forceinline__ static __nv_bfloat16 convert(float v) {
    return __float2bfloat16_rn(v);
  }
};

template <class T>
__device__ __forceinline__ T from_float(float v) {
  return FromFloat<T>::convert(v);
}

// ---- 16-byte packs: one 128-bit load or store moves 4 floats or 8 bf16 ----

template <int kBytes>
struct RawBits;
template <>
struct RawBits<16> {
  using type = uint4;
};
template <>
struct RawBits<8> {
  using type = uint2;
};
template <>
struct RawBits<4> {
  using type = unsigned int;
};

template <class T, int N = int(16 / sizeof(T))>
struct alignas(sizeof(T) * N) Pack {
  static constexpr int kSize = N;
  T v[N];
};

// The pointer must be aligned to the pack size; the load is a single vector instruction because
// it goes through the matching raw integer vector type.
template <class T, int N>
__device__ __forceinline__ void load_pack(Pack<T, N>& out, const T* p) {
  using Raw = typename RawBits<int(sizeof(T)) * N>::type;
  const Raw raw = *reinterpret_cast<const Raw*>(p);
  memcpy(&out, &raw, sizeof(Raw));
}

template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& in) {
  using Raw = typename RawBits<int(sizeof(T)) * N>::type;
  Raw raw;
  memcpy(&raw, &in, sizeof(Raw));
  *reinterpret_cast<Raw*>(p) = raw;
}

// ---- indexing ----

// The seed a random draw uses: `seed`, plus the shift a CUDA graph replay wrote to device memory
// before it ran (Backend::capture's replay(seed_shift)); seed_shift is null in eager launches.
__device__ __forceinline__ uint64_t replay_seed(uint64_t seed, const uint64_t* seed_shift) {
  return seed_shift ? seed + *seed_shift : seed;
}

__device__ __forceinline__ int64_t global_thread_index() {
  return int64_t(blockIdx.x) * int64_t(blockDim.x) + int64_t(threadIdx.x);
}
__device__ __forceinline__ int64_t global_thread_count() {
  return int64_t(gridDim.x) * int64_t(blockDim.x);
}
__device__ __forceinline__ int thread_index() {
  return int(threadIdx.x);
}
__device__ __forceinline__ int block_threads() {
  return int(blockDim.x);
}

// Runs pack_fn(first_index) over whole packs of kPack elements (when `vectorized`) and
// scalar_fn(index) over everything else, grid-stride. Each index belongs to exactly one thread,
// so in-place updates are safe.
template <int kPack, class PackFn, class ScalarFn>
__device__ __forceinline__ void grid_stride_elements(int64_t n, bool vectorized, PackFn&& pack_fn,
                                                     ScalarFn&& scalar_fn) {
  int64_t first_scalar = 0;
  if (vectorized) {
    const int64_t packs = n / kPack;
    for (int64_t p = global_thread_index(); p < packs; p += global_thread_count())
      pack_fn(p * kPack);
    first_scalar = packs * kPack;
  }
  for (int64_t i = first_scalar + global_thread_index(); i < n; i += global_thread_count())
    scalar_fn(i);
}

// Calls f(index, values) for every column of a row, where values[a] is column `index` of
// rows[a] converted to fp32, distributed over the block's threads. With `vectorized` (every row
// 16-byte aligned) each thread loads whole packs, and the last cols % pack columns one by one.
template <class T, int N, class F>
__device__ __forceinline__ void for_each_column(bool vectorized, int64_t cols,
                                                const T* const (&rows)[N], F&& f) {
  const int tid = thread_index(), threads = block_threads();
  if (vectorized) {
    constexpr int kPack = Pack<T>::kSize;
    for (int64_t p = tid; p < cols / kPack; p += threads) {
      Pack<T> packs[N];
      for (int a = 0; a < N; ++a) load_pack(packs[a], rows[a] + p * kPack);
      for (int e = 0; e < kPack; ++e) {
        float values[N];
        for (int a = 0; a < N; ++a) values[a] = to_float(packs[a].v[e]);
        f(p * kPack + e, values);
      }
    }
  }
  for (int64_t i = (vectorized ? cols / Pack<T>::kSize * Pack<T>::kSize : 0) + tid; i < cols;
       i += threads) {
    float values[N];
    for (int a = 0; a < N; ++a) values[a] = to_float(rows[a][i]);
    f(i, values);
  }
}

// ---- reductions (every lane of a full warp must take part; blocks are whole warps) ----

constexpr unsigned int kFullWarp = 0xffffffffu;

// The xor butterfly leaves the identical value in every lane (a + b == b + a exactly).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

// Sum over the whole block, returned to every thread. `scratch` is >= 32 elements of shared
// memory; the leading barrier lets consecutive reductions reuse it.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = thread_index() % 32, warp = thread_index() / 32;
  const int warps = block_threads() / 32;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < warps ? scratch[lane] : T(0));
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = thread_index() % 32, warp = thread_index() / 32;
  const int warps = block_threads() / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < warps ? scratch[lane] : -INFINITY);
}

// ---- strided layouts: up to kMaxDims axes (after merging), N operands ----

constexpr int kMaxDims = 8;

template <int N>
struct StridedLayout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
};

// Element offsets of each operand for the linear (row-major) index `linear`.
template <int N>
__device__ __forceinline__ void strided_offsets(const StridedLayout<N>& layout, int64_t linear,
                                                int64_t (&offsets)[N]) {
  for (int t = 0; t < N; ++t) offsets[t] = 0;
  for (int axis = layout.ndim - 1; axis >= 0; --axis) {
    const int64_t size = layout.sizes[axis];
    const int64_t i = linear % size;
    linear /= size;
    for (int t = 0; t < N; ++t) offsets[t] += i * layout.strides[t][axis];
  }
}

// Row ids of gathers and loss targets arrive as I32 or I64.
__device__ __forceinline__ int64_t load_index(const void* ids, bool ids_are_64bit, int64_t i) {
  return ids_are_64bit ? static_cast<const int64_t*>(ids)[i]
                       : int64_t(static_cast<const int32_t*>(ids)[i]);
}

}  // namespace sp::SP_CUDA_NS
