// kernels/copy_cast.cuh: data movement kernels: strided/broadcast copies (by element width),
// dtype casts between every float/int pair, and fills.
#pragma once

#include <type_traits>

#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

// dst[layout operand 0] = src[layout operand 1]; zero source strides broadcast. Unit is an
// unsigned integer of the element width, so one kernel moves every dtype of that width.
template <class Unit>
__global__ void strided_copy_kernel(const Unit* src, Unit* dst, StridedLayout<2> layout,
                                    int64_t n) {
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count()) {
    int64_t offsets[2];
    strided_offsets(layout, i, offsets);
    dst[offsets[0]] = src[offsets[1]];
  }
}

// ---- conversions with the CPU backend's semantics (engine/cpu/copy.cpp): integer <-> integer
// directly, everything else through fp32 (float -> int truncates toward zero) ----

template <class T>
struct CastValue;
template <>
struct CastValue<float> {
  __device__ __forceinline__ static float to_f32(float v) { return v; }
  __device__ __forceinline__ static float from_f32(float v) { return v; }
};
template <>
struct CastValue<__nv_bfloat16> {
  __device__ __forceinline__ static float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from_f32(float v) {
    return __float2bfloat16_rn(v);
  }
};
template <>
struct CastValue<__half> {
  __device__ __forceinline__ static float to_f32(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from_f32(float v) { return __float2half_rn(v); }
};
template <>
struct CastValue<int32_t> {
  __device__ __forceinline__ static float to_f32(int32_t v) { return float(v); }
  __device__ __forceinline__ static int32_t from_f32(float v) { return int32_t(v); }
};
template <>
struct CastValue<int64_t> {
  __device__ __forceinline__ static float to_f32(int64_t v) { return float(v); }
  __device__ __forceinline__ static int64_t from_f32(float v) { return int64_t(v); }
};

template <class T>
constexpr bool kIsIntegerElement = std::is_integral_v<T>;

template <class From, class To>
__device__ __forceinline__ To cast_value(From v) {
  if constexpr (kIsIntegerElement<From> && kIsIntegerElement<To>)
    return To(v);
  else
    return CastValue<To>::from_f32(CastValue<From>::to_f32(v));
}

template <class From, class To>
__global__ void cast_kernel(const From* src, To* dst, int64_t n) {
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count())
    dst[i] = cast_value<From, To>(src[i]);
}

// dst[i] = value converted to T, with 16-byte stores when dst is aligned.
template <class T>
__global__ void fill_kernel(T* dst, float value, int64_t n, bool vectorized) {
  const T converted = CastValue<T>::from_f32(value);
  constexpr int kPack = int(16 / sizeof(T));
  Pack<T, kPack> pack;
  for (int e = 0; e < kPack; ++e) pack.v[e] = converted;
  grid_stride_elements<kPack>(
      n, vectorized, [&](int64_t i) { store_pack(dst + i, pack); },
      [&](int64_t i) { dst[i] = converted; });
}

}  // namespace sp::SP_CUDA_NS
